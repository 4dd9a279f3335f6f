//! docs/PLUGINS.md, run as written: its shell blocks, in order, against a
//! node of its own, in a fresh folder, with the Rust code it shows as the
//! plugin's source. A changed command in the guide is a changed test.

use std::path::Path;
use std::process::Command;

/// The guide's blocks: (section heading, language, text).
fn blocks(markdown: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut open: Option<(String, String)> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if let Some((lang, text)) = &mut open {
            if trimmed.starts_with("```") {
                out.push((section.clone(), lang.clone(), std::mem::take(text)));
                open = None;
            } else {
                text.push_str(trimmed);
                text.push('\n');
            }
        } else if let Some(lang) = trimmed.strip_prefix("```") {
            open = Some((lang.to_owned(), String::new()));
        } else if let Some(h) = line.strip_prefix("## ") {
            section = h.to_owned();
        }
    }
    out
}

#[test]
fn the_plugin_guide_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let guide = std::fs::read_to_string(root.join("docs/PLUGINS.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = concord_tests::free_port();
    let bin = concord_tests::concord_bin();
    let mut script = format!(
        "set -euo pipefail\nexport PATH={}:$PATH\nexport CONCORD_ENDPOINT=127.0.0.1:{port}\nexport CARGO_NET_OFFLINE=true\n\
         trap 'if [ -f {dir}/node.pid ]; then kill $(cat {dir}/node.pid); fi' EXIT\ncd {dir}\n",
        bin.parent().unwrap().display(),
        dir = dir.path().display()
    );
    let mut ran = Vec::new();
    for (section, lang, text) in blocks(&guide) {
        match (lang.as_str(), section.as_str()) {
            ("sh", s) if s.starts_with("Python and JavaScript") => {
                // Run by tests/tests/examples.rs, with toolchains it installs.
                continue;
            }
            ("sh", _) => {
                for line in text.lines() {
                    let line = if line.starts_with("cargo build --release -p concord") {
                        // This test runs the binary it was built with.
                        continue;
                    } else if let Some(rest) = line.strip_prefix("concord serve ") {
                        let args = rest.split('#').next().unwrap().trim().trim_end_matches('&').trim();
                        format!(
                            "concord serve {args} --listen $CONCORD_ENDPOINT > node.log 2>&1 &\necho $! > {}/node.pid\n\
                             for i in $(seq 600); do concord cluster status > /dev/null 2>&1 && break; sleep 0.1; done",
                            dir.path().display()
                        )
                    } else {
                        line.to_owned()
                    };
                    script.push_str(&line);
                    script.push('\n');
                }
                ran.push(section.clone());
            }
            ("rust", s) if s.starts_with("2. ") && !script.contains("# the guide's resolver") => {
                // The guide's resolver replaces the one `plugin new` wrote.
                script.push_str(&format!("# the guide's resolver\ncat > src/lib.rs <<'RUST'\n{text}RUST\n"));
            }
            ("rust", s) if s.starts_with("3. ") => {
                script.push_str(&format!("cat >> src/lib.rs <<'RUST'\n{text}RUST\ncargo test\n"));
            }
            _ => {}
        }
    }
    for wanted in ["0. ", "1. ", "4. ", "5. ", "6. ", "7. "] {
        assert!(ran.iter().any(|s| s.starts_with(wanted)), "no shell block ran in section {wanted}: {ran:?}");
    }
    let out = Command::new("bash").arg("-c").arg(&script).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "the guide failed:\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- node log\n{log}"
    );
    // What the guide says the commands print.
    assert!(stdout.contains("resolved: new"), "{stdout}");
    assert!(stdout.contains("ok: 500 sibling sets"), "{stdout}");
    assert!(stdout.contains("deployed lww@1.0.0"), "{stdout}");
}

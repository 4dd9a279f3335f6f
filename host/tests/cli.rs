//! The `concord` binary's own error handling (no server needed).

use std::process::Command;

fn concord(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(args)
        .env_remove("CONCORD_ENDPOINT")
        .output()
        .expect("running concord");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn version_and_help() {
    let (ok, out, _) = concord(&["--version"]);
    assert!(ok && out.starts_with("concord "), "{out}");
    let (ok, out, _) = concord(&["--help"]);
    assert!(ok && out.contains("serve") && out.contains("bench"), "{out}");
}

#[test]
fn unreachable_endpoint_is_one_clear_line() {
    let (ok, out, err) = concord(&["get", "b", "k", "--endpoint", "127.0.0.1:1"]);
    assert!(!ok);
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: cannot connect to 127.0.0.1:1"), "{err}");
}

#[test]
fn bad_serve_settings_are_named() {
    let (ok, _, err) = concord(&["serve", "--durability", "sometimes"]);
    assert!(!ok);
    assert!(err.contains("sometimes"), "{err}");
    let (ok, _, err) = concord(&["serve", "--config", "/nonexistent/concord.toml"]);
    assert!(!ok);
    assert!(err.contains("cannot read config file /nonexistent/concord.toml"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "partitions = 3\n").unwrap();
    let (ok, _, err) = concord(&["serve", "--config", cfg.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("power of two"), "{err}");
}

#[test]
fn usage_mistakes_are_reported() {
    let (ok, _, err) = concord(&["put", "b", "k"]);
    assert!(!ok);
    assert!(err.contains("<VALUE>"), "{err}");
    let (ok, _, err) = concord(&["put", "b", "k", "v", "--context", "not base64!"]);
    assert!(!ok);
    assert!(err.contains("context is not valid base64"), "{err}");
    let (ok, _, err) = concord(&["bench", "--keys", "0"]);
    assert!(!ok);
    assert!(err.contains("--keys must be at least 1"), "{err}");
}

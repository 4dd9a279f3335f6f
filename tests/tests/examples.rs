//! The examples in examples/, run against a fresh node.

use std::path::{Path, PathBuf};
use std::process::Command;

use concord_tests::{Server, plugins};

#[tokio::test]
async fn shopping_cart_sessions_merge_without_losing_an_item() {
    let server = Server::start().await.unwrap();
    let endpoint = server.addr.to_string();
    let wasm = std::fs::read(plugins::CART).unwrap();
    shopping_cart_example::reset(&endpoint, "alice").await.unwrap();
    let out = shopping_cart_example::run(&endpoint, &wasm, "alice").await.unwrap();
    assert_eq!(out.siblings_before, 2, "the concurrent sessions made two siblings");
    assert_eq!(out.resolved_by.as_deref(), Some("cart@example"));
    let items: Vec<&str> = out.items.keys().map(String::as_str).collect();
    assert_eq!(items, ["book", "charger", "headphones"]);
    // Running it again is fine (the plugin deploy is idempotent).
    shopping_cart_example::reset(&endpoint, "alice").await.unwrap();
    shopping_cart_example::run(&endpoint, &wasm, "alice").await.unwrap();
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A virtualenv with the Python example's requirements, made on first use.
fn python_env() -> Option<PathBuf> {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 is not installed; skipping the Python example");
        return None;
    }
    let venv = repo_root().join("target/python-venv");
    let python = venv.join("bin/python");
    let marker = venv.join("requirements.installed");
    let requirements = repo_root().join("examples/python/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
        let status = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().unwrap();
        assert!(status.success(), "python3 -m venv {} failed", venv.display());
        let status = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements)
            .status()
            .unwrap();
        assert!(status.success(), "pip install -r {} failed (PyPI must be reachable)", requirements.display());
        std::fs::write(&marker, wanted).unwrap();
    }
    Some(python)
}

#[tokio::test]
async fn python_client_through_grpcio() {
    let Some(python) = tokio::task::spawn_blocking(python_env).await.unwrap() else { return };
    let server = Server::start().await.unwrap();
    let out = tokio::process::Command::new(python)
        .arg(repo_root().join("examples/python/client.py"))
        .args(["--endpoint", &server.addr.to_string(), "--check"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("siblings after two concurrent puts: ['bonjour', 'hello']"), "{stdout}");
    assert!(stdout.contains("bad bucket name: INVALID_ARGUMENT"), "{stdout}");
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
}

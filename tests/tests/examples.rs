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

/// Deploys a resolver built outside Rust (its deploy-time checks run on
/// `samples`), binds it to a bucket, makes two siblings and reads them
/// back: returns the deploy's reply and the resolved value.
async fn deploy_and_resolve(
    wasm: Vec<u8>,
    name: &str,
    samples: &[&str],
    siblings: [&[u8]; 2],
) -> (concord_proto::v1::DeployPluginResponse, Vec<u8>) {
    let server = Server::start().await.unwrap();
    let c = server.client().await;
    let req = concord_proto::v1::DeployPluginRequest {
        name: name.into(),
        version: "1".into(),
        wasm: wasm.into(),
        samples: samples.iter().map(|s| s.as_bytes().to_vec().into()).collect(),
        ..Default::default()
    };
    let deployed = c.admin().deploy_plugin(req).await.unwrap_or_else(|e| panic!("deploying {name}: {e}")).into_inner();
    assert!(deployed.warnings.is_empty(), "{:?}", deployed.warnings);
    let plugin = format!("{name}@1");
    c.set_bucket(concord_client::SetBucketRequest {
        name: name.into(),
        resolver: Some(plugin.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    for v in siblings {
        c.put(name, b"k", v, &concord_client::Context::none()).await.unwrap();
    }
    let r = c.get(name, b"k").await.unwrap();
    assert_eq!(r.resolved_by.as_deref(), Some(plugin.as_str()), "{r:?}");
    assert_eq!(r.siblings.len(), 1, "{r:?}");
    (deployed, r.siblings[0].value.clone())
}

/// Runs a build command; `None` (with the reason printed) when the tool
/// cannot be installed or run here.
fn build_step(what: &str, cmd: &mut Command) -> Option<()> {
    match cmd.output() {
        Ok(out) if out.status.success() => Some(()),
        Ok(out) => {
            panic!("{what} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        }
        Err(e) => {
            eprintln!("cannot run {what} ({e}); skipping");
            None
        }
    }
}

/// Builds a Python resolver (`module` in `dir`, relative to the
/// repository) with componentize-py, installed from PyPI into a virtualenv
/// under target/ on first use.
fn build_python(dir: &str, module: &str) -> Option<PathBuf> {
    let root = repo_root();
    let venv = root.join("target/componentize-py-venv");
    let requirements = root.join("examples/python-resolver/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    let marker = venv.join("requirements.installed");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
        build_step("python3 -m venv", Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        let pip = venv.join("bin/pip");
        let installed = Command::new(&pip)
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements)
            .status();
        if !installed.is_ok_and(|s| s.success()) {
            eprintln!("pip could not install componentize-py (is PyPI reachable?); skipping the Python resolver");
            return None;
        }
        std::fs::write(&marker, wanted).unwrap();
    }
    let out = root.join(format!("target/examples/{module}-py.wasm"));
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    // The command docs/PLUGINS.md gives, from the repository root.
    build_step(
        "componentize-py",
        Command::new(venv.join("bin/componentize-py"))
            .current_dir(&root)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .args(["-d", "guest-sdk/wit/since_v0.1.0", "-w", "resolver", "componentize"])
            .args(["-p", dir, module, "-o"])
            .arg(&out),
    )?;
    Some(out)
}

/// Builds examples/js-resolver with componentize-js, installed from npm
/// (the example's package-lock.json) into target/ on first use.
fn build_js_resolver() -> Option<PathBuf> {
    let root = repo_root();
    let example = root.join("examples/js-resolver");
    let tools = root.join("target/js-resolver-tools");
    std::fs::create_dir_all(&tools).unwrap();
    let lock = std::fs::read_to_string(example.join("package-lock.json")).unwrap();
    let marker = tools.join("installed.lock");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(lock.as_str()) {
        for f in ["package.json", "package-lock.json"] {
            std::fs::copy(example.join(f), tools.join(f)).unwrap();
        }
        let installed = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&tools)
            .status();
        if !installed.is_ok_and(|s| s.success()) {
            eprintln!(
                "npm could not install componentize-js (is npm, or its registry, there?); skipping the JS resolver"
            );
            return None;
        }
        std::fs::write(&marker, lock).unwrap();
    }
    let out = root.join("target/examples/max-js.wasm");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    // What `npm run build` in the example runs, with the output in target/.
    build_step(
        "componentize-js",
        Command::new(tools.join("node_modules/.bin/componentize-js"))
            .current_dir(&example)
            .args(["max.js", "--wit", "../../guest-sdk/wit/since_v0.1.0", "--world-name", "resolver"])
            .args(["--disable", "stdio", "random", "clocks", "http", "fetch-event", "--out"])
            .arg(&out),
    )?;
    Some(out)
}

#[tokio::test]
async fn a_python_resolver_builds_deploys_and_resolves() {
    let build = || build_python("examples/python-resolver", "cart");
    let Some(wasm) = tokio::task::spawn_blocking(build).await.unwrap() else { return };
    let samples = std::fs::read_to_string(repo_root().join("examples/python-resolver/samples.json")).unwrap();
    let samples: Vec<String> = serde_json::from_str(&samples).unwrap();
    let samples: Vec<&str> = samples.iter().map(String::as_str).collect();
    let wasm = std::fs::read(wasm).unwrap();
    let (deployed, value) =
        deploy_and_resolve(wasm, "cart-py", &samples, [br#"["pear","apple"]"#, br#"["fig"]"#]).await;
    assert_eq!(value, br#"["apple","fig","pear"]"#);
    // It imports WASI, served without capabilities: what it prints is its
    // log, which the deploy checks return.
    assert!(deployed.check_log.iter().any(|l| l.contains("INFO: cart: merged")), "{:?}", deployed.check_log);
}

#[tokio::test]
async fn a_javascript_resolver_builds_deploys_and_resolves() {
    let Some(wasm) = tokio::task::spawn_blocking(build_js_resolver).await.unwrap() else { return };
    let samples = std::fs::read_to_string(repo_root().join("examples/js-resolver/samples.json")).unwrap();
    let samples: Vec<String> = serde_json::from_str(&samples).unwrap();
    let samples: Vec<&str> = samples.iter().map(String::as_str).collect();
    let wasm = std::fs::read(wasm).unwrap();
    let (_, value) = deploy_and_resolve(wasm, "max-js", &samples, [b"40", b"-7"]).await;
    assert_eq!(value, b"40");
}

#[tokio::test]
async fn wasi_is_served_with_nothing_behind_it() {
    let build = || build_python("tests/python-probe", "probe");
    let Some(wasm) = tokio::task::spawn_blocking(build).await.unwrap() else { return };
    let wasm = std::fs::read(wasm).unwrap();
    // The deploy checks call it on fresh instances and compare: it deploys
    // without --force only if every call reports the same.
    let (deployed, value) = deploy_and_resolve(wasm, "probe", &[], [b"one", b"two"]).await;
    let report = String::from_utf8(value).unwrap();
    for expected in ["time=0.0 ", "monotonic=0.0 ", "env=0 ", "files=none"] {
        assert!(report.contains(expected), "{report}");
    }
    // What it printed is its log.
    assert!(deployed.check_log.iter().any(|l| l.contains("INFO: time=0.0")), "{:?}", deployed.check_log);
}

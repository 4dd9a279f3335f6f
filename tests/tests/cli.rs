//! The `concord` command line against real nodes: the README's tour, and
//! `concord dev`, its command to run Concord.

use std::io::Write;
use std::process::{Command, Stdio};

use concord_tests::{Server, concord_bin, free_ports, signal};
use serde_json::Value;

fn run(server: &Server, args: &[&str], stdin: Option<&[u8]>) -> (bool, String, String) {
    let mut child = Command::new(concord_bin())
        .args(args)
        .env("CONCORD_ENDPOINT", server.addr.to_string())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn ok(server: &Server, args: &[&str]) -> String {
    let (success, out, err) = run(server, args, None);
    assert!(success, "concord {args:?} failed: {err}");
    out
}

fn json(server: &Server, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&ok(server, &args)).unwrap()
}

#[tokio::test]
async fn the_tour() {
    let server = Server::start().await.unwrap();
    ok(&server, &["put", "cart", "alice", "apples"]);
    ok(&server, &["put", "cart", "alice", "pears"]);
    let out = ok(&server, &["get", "cart", "alice"]);
    assert!(out.contains("found 2 siblings"), "{out}");
    assert!(out.contains("apples") && out.contains("pears"), "{out}");
    let ctx = out.lines().find_map(|l| l.strip_prefix("context: ")).unwrap().to_owned();

    ok(&server, &["put", "cart", "alice", "apples,pears", "--context", &ctx]);
    let got = json(&server, &["get", "cart", "alice"]);
    assert_eq!(got["found"], true);
    assert_eq!(got["siblings"].as_array().unwrap().len(), 1);
    assert_eq!(got["siblings"][0]["value"], "apples,pears");

    // Values from standard input and from a file, byte for byte.
    let (success, _, err) = run(&server, &["put", "bin", "k", "-"], Some(&[0, 159, 146, 150]));
    assert!(success, "{err}");
    assert_eq!(json(&server, &["get", "bin", "k"])["siblings"][0]["value_base64"], "AJ+Slg==");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v");
    std::fs::write(&file, b"from a file").unwrap();
    ok(&server, &["put", "bin", "f", "--file", file.to_str().unwrap()]);
    assert_eq!(json(&server, &["get", "bin", "f"])["siblings"][0]["value"], "from a file");
    // Values that start with a hyphen.
    ok(&server, &["put", "num", "n", "-4000"]);
    assert_eq!(json(&server, &["get", "num", "n"])["siblings"][0]["value"], "-4000");
    ok(&server, &["put", "num", "h", "--", "-x"]);
    assert_eq!(json(&server, &["get", "num", "h"])["siblings"][0]["value"], "-x");

    // Delete with the context; the key reads as not found.
    let ctx = json(&server, &["get", "cart", "alice"])["context"].as_str().unwrap().to_owned();
    ok(&server, &["delete", "cart", "alice", "--context", &ctx]);
    assert!(ok(&server, &["get", "cart", "alice"]).starts_with("not found"));
    assert_eq!(json(&server, &["get", "cart", "alice"])["found"], false);

    // Buckets.
    let props = json(&server, &["bucket", "set", "cart", "--max-siblings", "5", "--n", "1"]);
    assert_eq!(props["max_siblings"], 5);
    assert_eq!(props["r"], 1);
    assert_eq!(json(&server, &["bucket", "get", "cart"])["configured"], true);
    let list = json(&server, &["bucket", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (success, _, err) = run(&server, &["bucket", "set", "cart", "--n", "0"], None);
    assert!(!success);
    assert!(err.starts_with("error: invalid argument: n must be between 1 and 16"), "{err}");

    // Cluster status, for people and for scripts.
    let status = json(&server, &["cluster", "status"]);
    assert_eq!(status["nodes"][0]["status"], "up");
    assert!(ok(&server, &["cluster", "status"]).contains(" up "));
}

#[tokio::test]
async fn bench_reports_what_it_measured() {
    let server = Server::start().await.unwrap();
    let endpoint = server.addr.to_string();
    // Workload a on 100 keys at concurrency 4, `ops` operations, no warm-up.
    let bench = |ops: &str, extra: &[&str]| {
        let mut args = vec!["bench", "--endpoint", &endpoint, "--workload", "a", "--keys", "100"];
        args.extend(["--ops", ops, "--warmup", "0", "--concurrency", "4"]);
        args.extend(extra);
        json(&server, &args)
    };
    let report = bench("300", &[]);
    assert_eq!(report["ops"], 300);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["workload"], "a");
    let reads = report["read"]["count"].as_u64().unwrap();
    let updates = report["update"]["count"].as_u64().unwrap();
    assert_eq!(reads + updates, 300);
    assert!(reads > 0 && updates > 0, "workload a mixes reads and updates");
    assert!(report["all"]["p99_ms"].as_f64().unwrap() >= report["all"]["p50_ms"].as_f64().unwrap());

    // With the floor: the echo server's run first, the same operations,
    // and the ratios of Concord's figures to it.
    let report = bench("200", &["--floor"]);
    let floor = &report["floor"];
    assert_eq!(floor["ops"], 200);
    assert_eq!(floor["errors"], 0);
    assert_eq!(floor["connections"], report["connections"]);
    assert!(floor["read"]["count"].as_u64().unwrap() > 0 && floor["update"]["count"].as_u64().unwrap() > 0);
    assert_eq!(report["ops"], 200);
    let ratio = report["to_floor"]["ops_per_sec"].as_f64().unwrap();
    let expected = report["ops_per_sec"].as_f64().unwrap() / floor["ops_per_sec"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9, "{ratio} vs {expected}");
    assert!(report["to_floor"]["p99"].as_f64().unwrap() > 0.0);
}

/// `concord dev`, the README's command to run Concord, while it runs: its
/// nodes are stopped (SIGTERM to `dev`, which stops them) even if the test
/// fails.
struct Dev(std::process::Child);

impl Drop for Dev {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = signal(self.0.id(), "TERM");
            for _ in 0..300 {
                if !matches!(self.0.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn dev_runs_a_three_node_cluster_and_stops_it_on_ctrl_c() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports(3);
    let mut dev = Dev(Command::new(concord_bin())
        .args(["dev", "--nodes", "3", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path().join("dev"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = dev.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut printed = Vec::new();
    while !printed.iter().any(|l: &String| l.contains("Ctrl-C stops every node")) {
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(line) => printed.push(line),
            Err(e) => panic!("concord dev did not come up ({e}); it printed: {printed:?}"),
        }
    }
    let endpoints: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect();
    for e in &endpoints {
        assert!(printed.iter().any(|l| l.trim() == e), "{e} is listed: {printed:?}");
    }

    // Every node serves, and they form one ring.
    let cli = |args: &[&str], endpoint: &str| {
        let out = Command::new(concord_bin()).args(args).args(["--endpoint", endpoint]).output().unwrap();
        assert!(out.status.success(), "concord {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli(&["put", "hello", "world", "hi"], &endpoints[0]);
    assert!(cli(&["get", "hello", "world"], &endpoints[2]).contains("hi"));
    // Each node learns the others' status through gossip, a round or two
    // after `dev` saw the ring formed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let status: Value = serde_json::from_str(&cli(&["cluster", "status", "--json"], &endpoints[1])).unwrap();
        let up = status["nodes"].as_array().unwrap().iter().filter(|n| n["status"] == "up").count();
        if up == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not every node is up: {status}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Ctrl-C stops every node and dev itself, cleanly.
    signal(dev.0.id(), "INT").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = dev.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "concord dev did not stop on Ctrl-C");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(exit.success(), "concord dev exited with {exit}");
    for e in &endpoints {
        assert!(std::net::TcpStream::connect(e).is_err(), "{e} still serves after Ctrl-C");
    }
}

//! `concord dev`: a local cluster to try things out.
//!
//! Starts `--nodes` copies of this binary as `concord serve` on consecutive
//! ports of 127.0.0.1, each seeded with the others, with data under one
//! folder and logs beside it. It waits until the ring holds every node,
//! prints the endpoints, and on Ctrl-C (or SIGTERM) stops every node it
//! started, by PID, and waits for each to flush.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

#[derive(clap::Args)]
pub struct DevArgs {
    /// Nodes to start.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Port of the first node; the others follow.
    #[arg(long, default_value_t = 7379)]
    base_port: u16,
    /// Folder for the nodes' data directories and logs.
    #[arg(long, default_value = "concord-dev")]
    data_dir: PathBuf,
    /// Durability mode of every node.
    #[arg(long, default_value = "periodic")]
    durability: String,
    /// Serve TLS to clients and between nodes, with a throwaway CA made in
    /// the data folder (clients pass --tls-ca DATA_DIR/tls/ca.pem).
    #[arg(long)]
    tls: bool,
}

struct Nodes(Vec<(u16, Child)>);

impl Nodes {
    /// Sends SIGTERM to every node still running and waits for them.
    fn stop(&mut self) {
        for (_, child) in &self.0 {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (port, child) in &mut self.0 {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        eprintln!("node on port {port} did not stop in time; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.0.clear();
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 16 {
        bail!("--nodes must be between 1 and 16");
    }
    let last = args.base_port.checked_add(args.nodes - 1).context("--base-port is too high for that many nodes")?;
    let exe = std::env::current_exe().context("cannot find the concord binary")?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let ports: Vec<u16> = (args.base_port..=last).collect();
    let endpoints: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let certs =
        if args.tls { Some(concord::security::tls::write_dev_certificates(&args.data_dir.join("tls"))?) } else { None };
    let client_options = concord_client::ConnectOptions {
        tls_ca_pem: certs.as_ref().map(|c| std::fs::read(&c.ca)).transpose()?,
        ..Default::default()
    };
    let mut nodes = Nodes(Vec::new());
    for (i, port) in ports.iter().enumerate() {
        let dir = args.data_dir.join(format!("node{}", i + 1));
        let log_path = args.data_dir.join(format!("node{}.log", i + 1));
        let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
        let seeds: Vec<&str> =
            endpoints.iter().filter(|e| !e.ends_with(&format!(":{port}"))).map(String::as_str).collect();
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&dir)
            .arg("--node-id")
            .arg(format!("node{}", i + 1))
            .arg("--durability")
            .arg(&args.durability)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if !seeds.is_empty() {
            cmd.arg("--seeds").arg(seeds.join(","));
        }
        if let Some(c) = &certs {
            cmd.arg("--tls-cert").arg(&c.cert).arg("--tls-key").arg(&c.key).arg("--tls-ca").arg(&c.ca);
        }
        let child = cmd.spawn().context("cannot start a node")?;
        nodes.0.push((*port, child));
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        // Wait until the first node's ring holds every node.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for (port, child) in &mut nodes.0 {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "the node on port {port} exited ({status}); see {}",
                        args.data_dir.join(format!("node{}.log", *port - args.base_port + 1)).display()
                    );
                }
            }
            if let Ok(c) = concord_client::Client::connect_with(&endpoints[0], &client_options).await
                && let Ok(s) = c.cluster_status().await
                && s.nodes.iter().filter(|n| n.status == "up" && n.partitions > 0).count() == args.nodes as usize
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("the cluster did not form within 60 s; see the logs in {}", args.data_dir.display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("a {}-node Concord cluster is up (data and logs in {}):", args.nodes, args.data_dir.display());
        for e in &endpoints {
            println!("  {e}");
        }
        let tls_flag = certs.as_ref().map(|c| format!(" --tls-ca {}", c.ca.display())).unwrap_or_default();
        println!(
            "try: concord put hello world 'hi' --endpoint {0}{1}; concord cluster status --endpoint {0}{1}",
            endpoints[0], tls_flag
        );
        println!("Ctrl-C stops every node.");
        tokio::select! {
            _ = super::serve::shutdown_signal() => println!("stopping..."),
            exited = watch_children(&mut nodes) => eprintln!("{exited}; stopping the others"),
        }
        anyhow::Ok(())
    })?;
    nodes.stop();
    println!("all nodes stopped");
    Ok(())
}

/// Resolves when any node exits on its own.
async fn watch_children(nodes: &mut Nodes) -> String {
    loop {
        for (port, child) in &mut nodes.0 {
            if let Ok(Some(status)) = child.try_wait() {
                return format!("the node on port {port} exited ({status})");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

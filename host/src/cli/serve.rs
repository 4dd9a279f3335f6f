//! `concord serve`: run a node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use concord::Config;
use concord::storage::DurabilityMode;

/// Flags override `CONCORD_*` variables, which override the config file.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// TOML config file (see docs/OPERATIONS.md for every key).
    #[arg(long, env = "CONCORD_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: ./concord-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7379].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address others reach this node at, if not the listen address.
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Prometheus metrics address (GET /metrics).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Other nodes' listen addresses, comma separated.
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<String>>,
    /// Failure domain of this node (rack, data center).
    #[arg(long)]
    zone: Option<String>,
    /// When writes are durable: periodic or fsync.
    #[arg(long)]
    durability: Option<DurabilityMode>,
    /// Node id (defaults to the first advertised address).
    #[arg(long)]
    node_id: Option<String>,
    /// Tokio worker threads (0: one per core).
    #[arg(long)]
    worker_threads: Option<usize>,
    /// Threads for requests' storage calls (0: inline on the request
    /// threads; default one per core, at least four).
    #[arg(long)]
    storage_threads: Option<usize>,
    /// This node's TLS certificate (PEM); with --tls-key and --tls-ca,
    /// clients and peers connect over TLS.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that signed every node's certificate.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

impl ServeArgs {
    fn config(self) -> anyhow::Result<Config> {
        let mut c = Config::load(self.config.as_deref(), std::env::vars())?;
        if let Some(v) = self.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.advertise {
            c.advertise = Some(v);
        }
        if let Some(v) = self.metrics_listen {
            c.metrics_listen = Some(v);
        }
        if let Some(v) = self.seeds {
            c.seeds = v.into_iter().filter(|s| !s.is_empty()).collect();
        }
        if let Some(v) = self.zone {
            c.zone = v;
        }
        if let Some(v) = self.durability {
            c.durability = v;
        }
        if let Some(v) = self.node_id {
            c.node_id = Some(v);
        }
        if let Some(v) = self.worker_threads {
            c.worker_threads = v;
        }
        if let Some(v) = self.storage_threads {
            c.storage_threads = v;
        }
        if let Some(v) = self.tls_cert {
            c.security.tls_cert = Some(v);
        }
        if let Some(v) = self.tls_key {
            c.security.tls_key = Some(v);
        }
        if let Some(v) = self.tls_ca {
            c.security.tls_ca = Some(v);
        }
        c.validate()?;
        Ok(c)
    }
}

/// Builds the runtime the config asks for and runs the node until Ctrl-C or
/// SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    concord::telemetry::init_logging(&config.log);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        rt.worker_threads(config.worker_threads);
    }
    let rt = rt.thread_name("concord-worker").enable_all().build().context("starting the runtime")?;
    rt.block_on(async move {
        let node = concord::Node::start(config).await?;
        node.run_until(shutdown_signal()).await?;
        anyhow::Ok(())
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

//! A running node: builds every part from a [`Config`], serves gRPC, runs
//! the background workers, and shuts down cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::v1 as pb;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::api::{AdminService, InternalService, KvService};
use crate::cluster::{Buckets, Cluster, Membership, MembershipConfig, load_ring, load_seeds};
use crate::config::Config;
use crate::coordinator::Coordinator;
use crate::net::{Faults, Net};
use crate::plugins::Plugins;
use crate::ring::Ring;
use crate::storage::{DataDir, Durability, ObjectStore, SledStore, Store};
use crate::{Error, Result};

/// How long a shutdown waits for open connections to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A started node. Dropping it does not stop it; call [`Node::shutdown`].
pub struct Node {
    addr: SocketAddr,
    node_id: String,
    stop: watch::Sender<bool>,
    server: JoinHandle<Result<()>>,
    workers: Vec<JoinHandle<()>>,
    cluster: Arc<Cluster>,
    faults: Arc<Faults>,
    /// Flushed and closed after the server stops.
    engine: Arc<dyn Store>,
    objects: Arc<ObjectStore>,
    /// Holds the directory lock until the very end of shutdown.
    dir: DataDir,
}

impl Node {
    /// Opens the data directory, starts the workers and begins serving on
    /// `config.listen` (port 0 picks a free port; see [`Node::local_addr`]).
    /// Gossip uses UDP on the same port number.
    pub async fn start(config: Config) -> Result<Node> {
        config.validate()?;
        // Metric handles made before the recorder is installed are no-ops, so
        // this comes first.
        if let Some(addr) = config.metrics_listen {
            crate::telemetry::install_prometheus(addr)?;
            tracing::info!(%addr, "serving metrics at /metrics");
        }
        let incoming = TcpIncoming::bind(config.listen)
            .map_err(|e| Error::Internal(format!("cannot listen on {}: {e}", config.listen)))?
            .with_nodelay(Some(true));
        let bound = incoming.local_addr().map_err(Error::internal)?;
        let advertised = config.advertise.unwrap_or(bound);
        if advertised.ip().is_unspecified() {
            return Err(Error::invalid(format!(
                "the node listens on {bound}; set --advertise to the address other nodes and clients can reach"
            )));
        }
        let dir = DataDir::open(&config.data_dir, config.node_id.as_deref(), &advertised.to_string())?;
        let node_id = dir.node_id().to_owned();
        let engine: Arc<dyn Store> = Arc::new(SledStore::open(&dir.db_path(), config.cache_mb << 20)?);
        let durability = Durability::start(
            Arc::clone(&engine),
            config.durability,
            Duration::from_millis(config.flush_interval_ms),
            Duration::from_micros(config.group_commit_max_delay_us),
        );
        let objects = Arc::new(ObjectStore::new(Arc::clone(&engine), durability, dir.incarnation(), node_id.clone()));
        let buckets = Arc::new(Buckets::load(Arc::clone(&engine), config.bucket_defaults()?, &node_id)?);
        let plugins = Plugins::open(
            Arc::clone(&engine),
            Some(crate::plugins::engine::cache_dir(dir.path())),
            config.plugins.clone(),
        )?;
        let mut seeds = config.seeds.clone();
        for s in load_seeds(&*engine)? {
            if !seeds.contains(&s) {
                seeds.push(s);
            }
        }
        let ring = match load_ring(&*engine)? {
            Some(r) => r,
            // The first node of a cluster starts it; a node given seeds joins one.
            None if seeds.is_empty() => Ring::single(&node_id, &config.zone, config.partitions),
            None => Ring::joining(&node_id, &config.zone, config.partitions),
        };
        if ring.partitions() != config.partitions && ring.members().len() > 1 {
            tracing::warn!(
                configured = config.partitions,
                ring = ring.partitions(),
                "the cluster's ring has a different partition count than configured; the ring's count is used"
            );
        }

        let (stop, stopped) = watch::channel(false);
        let faults = Arc::new(Faults::default());
        let net = Net::new(Arc::clone(&faults));
        let gossip_interval = Duration::from_millis(config.gossip_interval_ms);
        let membership = Membership::start(
            MembershipConfig {
                node_id: node_id.clone(),
                listen: bound,
                advertise: advertised,
                zone: config.zone.clone(),
                seeds,
                gossip_interval,
                cluster_name: config.cluster_name.clone(),
                initial: vec![("status".into(), "joining".into()), ("meta:ring".into(), ring.digest())],
            },
            Arc::clone(&faults),
            stopped.clone(),
        )
        .await?;
        let cluster = Cluster::new(
            node_id.clone(),
            config.zone.clone(),
            advertised,
            ring,
            Arc::clone(&engine),
            membership,
            Arc::clone(&buckets),
            Arc::clone(&plugins),
            net,
            gossip_interval,
        );
        let coordinator = Coordinator::new(
            node_id.clone(),
            Arc::clone(&objects),
            Arc::clone(&buckets),
            Arc::clone(&cluster),
            Arc::clone(&plugins),
            Duration::from_millis(config.request_timeout_ms),
        );
        let mut workers =
            vec![spawn_storage_gauge(Arc::clone(&engine), stopped.clone()), cluster.spawn_worker(stopped.clone())];
        if config.plugins.unload_idle_secs > 0 {
            let every = Duration::from_secs(config.plugins.unload_idle_secs);
            workers.push(spawn_plugin_unloader(Arc::clone(&plugins), every, stopped.clone()));
        }

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<pb::kv_server::KvServer<KvService>>().await;
        health.set_serving::<pb::admin_server::AdminServer<AdminService>>().await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(concord_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(Error::internal)?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(concord_proto::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(Error::internal)?;

        let internal = InternalService::new(
            Arc::clone(&coordinator),
            Arc::clone(&objects),
            Arc::clone(&cluster),
            Arc::clone(&plugins),
        );
        let router = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(pb::kv_server::KvServer::new(KvService::new(coordinator)))
            // Plugin components arrive through Admin and may exceed tonic's
            // default 4 MiB.
            .add_service(
                pb::admin_server::AdminServer::new(AdminService::new(buckets, plugins, Arc::clone(&cluster)))
                    .max_decoding_message_size(64 << 20),
            )
            .add_service(
                pb::internal_server::InternalServer::new(internal)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20),
            )
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let mut shutdown = stopped;
        let server = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                })
                .await
                .map_err(|e| Error::Internal(format!("gRPC server failed: {e}")))
        });
        tracing::info!(
            node_id = %node_id,
            addr = %bound,
            advertise = %advertised,
            zone = %config.zone,
            durability = ?config.durability,
            data_dir = %config.data_dir.display(),
            "concord node serving"
        );
        Ok(Node { addr: bound, node_id, stop, server, workers, cluster, faults, engine, objects, dir })
    }

    /// The address the gRPC server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The cluster state (ring, membership) as this node sees it.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The fault rules this node's outgoing traffic obeys (for tests:
    /// dropping, delaying or partitioning links).
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// Stops serving, lets in-flight requests finish (for up to
    /// [`DRAIN_TIMEOUT`]) and flushes storage.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        for w in self.workers {
            let _ = w.await;
        }
        self.cluster.shutdown();
        let mut server = self.server;
        let served = match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
            Ok(joined) => joined.map_err(Error::internal).and_then(|r| r),
            Err(_) => {
                tracing::warn!("clients kept connections open for {DRAIN_TIMEOUT:?}; closing them");
                server.abort();
                let _ = server.await;
                Ok(())
            }
        };
        // The services are gone. Background tasks (read repair, write-back)
        // may still hold the store for a moment; the engine flush below
        // covers everything written so far, then the lock goes.
        drop(self.cluster);
        // If a background task still holds the store it could write after
        // the final flush; then the run does not count as clean.
        let sole = Arc::try_unwrap(self.objects).map(drop).is_ok();
        let flushed = self.engine.flush();
        drop(self.engine);
        // Only a run that ended with everything flushed keeps its actor id.
        if flushed.is_ok() && sole {
            self.dir.mark_clean()?;
        }
        drop(self.dir);
        served?;
        flushed.map_err(Error::from)
    }

    /// Runs until `signal` resolves, then shuts down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<()> {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await
    }
}

/// Unloads compiled plugins that went unused for a period, so a node that
/// has seen many plugin versions keeps only the ones in use in memory.
fn spawn_plugin_unloader(plugins: Arc<Plugins>, every: Duration, mut stopped: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stopped.wait_for(|s| *s) => break,
            }
            for r in plugins.registry().unload_idle() {
                tracing::info!(plugin = %r, "unloaded a plugin unused for {every:?} or more");
            }
        }
    })
}

/// Publishes the engine's size on disk every few seconds.
fn spawn_storage_gauge(engine: Arc<dyn Store>, mut stopped: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let gauge = metrics::gauge!("concord_storage_bytes");
        loop {
            let e = Arc::clone(&engine);
            if let Ok(Ok(bytes)) = tokio::task::spawn_blocking(move || e.size_on_disk()).await {
                gauge.set(bytes as f64);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = stopped.wait_for(|s| *s) => break,
            }
        }
    })
}

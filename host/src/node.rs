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

use crate::antientropy::AntiEntropy;
use crate::api::{AdminService, InternalService, KvService, Workers};
use crate::buckets::Buckets;
use crate::cluster::{Cluster, LocalData, Membership, MembershipConfig, load_ring, load_seeds};
use crate::config::Config;
use crate::coordinator::{Coordinator, CoordinatorConfig};
use crate::env::Environment;
use crate::handoff::{Handoff, HintStore, Transfers};
use crate::net::{Faults, Net};
use crate::plugins::Plugins;
use crate::ring::Ring;
use crate::security::{Guard, GuardLayer, KeySet, Keyring};
use crate::storage::{DataDir, Durability, ObjectStore, Pool, SledStore, Store};
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
    handoff: Arc<Handoff>,
    antientropy: Arc<AntiEntropy>,
    /// Runs the background workers; stopped after them.
    background: Background,
    /// Runs requests' storage calls; closed once the server has stopped.
    pool: Arc<Pool>,
    /// Holds the directory lock until the very end of shutdown.
    dir: Arc<DataDir>,
}

impl Node {
    /// Opens the data directory, starts the workers and begins serving on
    /// `config.listen` (port 0 picks a free port; see [`Node::local_addr`]).
    /// Gossip uses UDP on the same port number.
    pub async fn start(config: Config) -> Result<Node> {
        Self::start_in(config, Environment::machine()).await
    }

    /// [`Node::start`] in the given surroundings (the simulation's network,
    /// engine and single thread; see [`crate::env`]).
    pub async fn start_in(config: Config, env: Environment) -> Result<Node> {
        config.validate()?;
        // Metric handles made before the recorder is installed are no-ops, so
        // this comes first.
        if let Some(addr) = config.metrics_listen {
            crate::telemetry::install_prometheus(addr)?;
            tracing::info!(%addr, "serving metrics at /metrics");
        }
        let incoming = match env.incoming {
            Some((addr, conns)) => Incoming::Given(addr, conns),
            None => Incoming::Tcp(
                TcpIncoming::bind(config.listen)
                    .map_err(|e| Error::Internal(format!("cannot listen on {}: {e}", config.listen)))?
                    .with_nodelay(Some(true)),
            ),
        };
        let bound = match &incoming {
            Incoming::Given(addr, _) => *addr,
            Incoming::Tcp(tcp) => tcp.local_addr().map_err(Error::internal)?,
        };
        let advertised = config.advertise.unwrap_or(bound);
        if advertised.ip().is_unspecified() {
            return Err(Error::invalid(format!(
                "the node listens on {bound}; set --advertise to the address other nodes and clients can reach"
            )));
        }
        let dir = Arc::new(DataDir::open(&config.data_dir, config.node_id.as_deref(), &advertised.to_string())?);
        let node_id = dir.node_id().to_owned();
        let engine: Arc<dyn Store> = match env.store {
            Some(store) => store,
            None => Arc::new(SledStore::open(&dir.db_path(), config.cache_mb << 20)?),
        };
        let durability = Arc::new(if env.one_thread {
            Durability::inline(Arc::clone(&engine), config.durability, Duration::from_millis(config.flush_interval_ms))
        } else {
            Durability::start(
                Arc::clone(&engine),
                config.durability,
                Duration::from_millis(config.flush_interval_ms),
                Duration::from_micros(config.group_commit_max_delay_us),
            )
        });
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
        let replicas_of: crate::storage::ReplicasOf = {
            let buckets = Arc::clone(&buckets);
            Arc::new(move |bucket: &str| buckets.get(bucket).n as u8)
        };
        let objects = Arc::new(ObjectStore::open(
            Arc::clone(&engine),
            Arc::clone(&durability),
            dir.incarnation(),
            node_id.clone(),
            replicas_of,
            ring.partitions(),
            dir.clean_start(),
        )?);
        let hints = Arc::new(HintStore::open(Arc::clone(&engine), durability)?);
        if ring.partitions() != config.partitions && ring.members().len() > 1 {
            tracing::warn!(
                configured = config.partitions,
                ring = ring.partitions(),
                "the cluster's ring has a different partition count than configured; the ring's count is used"
            );
        }

        let keys = Arc::new(Keyring::open(dir.path())?);
        if keys.is_empty() {
            if let Some(secret) = &config.security.cluster_secret {
                keys.replace(
                    KeySet::import(secret).map_err(|e| Error::invalid(format!("security.cluster_secret: {e}")))?,
                )?;
                tracing::info!("took the cluster secret from the configuration");
            } else if seeds.is_empty() && ring.members().len() <= 1 {
                keys.create_if_empty()?;
                tracing::info!("created the cluster secret of a new cluster");
            }
        }
        let tls = config.security.tls()?;
        let client_tls = tls.as_ref().map(|t| {
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&t.ca))
                .identity(tonic::transport::Identity::from_pem(&t.cert, &t.key))
        });
        let guard = Arc::new(Guard::new(Arc::clone(&keys), &config.security.tokens)?);

        let (stop, stopped) = watch::channel(false);
        let faults = Arc::new(Faults::default());
        let net = Net::new_in(Arc::clone(&faults), Arc::clone(&keys), client_tls, env.dialer);
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
                initial: vec![
                    ("status".into(), "joining".into()),
                    ("meta:ring".into(), ring.digest()),
                    ("partitions".into(), ring.partitions().to_string()),
                ],
            },
            Arc::clone(&faults),
            env.gossip,
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
            Arc::clone(&keys),
            config.seeds.clone(),
        );
        let live_hints = config.handoff.enabled.then(|| Arc::clone(&hints));
        let pool = match config.storage_threads {
            _ if env.one_thread => Pool::inline(),
            0 => Pool::inline(),
            threads => Pool::start(threads)?,
        };
        let coordinator = Coordinator::new(
            node_id.clone(),
            Arc::clone(&objects),
            Arc::clone(&buckets),
            Arc::clone(&cluster),
            Arc::clone(&plugins),
            live_hints.clone(),
            Arc::clone(&pool),
            CoordinatorConfig {
                default_timeout: Duration::from_millis(config.request_timeout_ms),
                read_repair: config.read_repair,
            },
        );
        let handoff = Handoff::new(
            Arc::clone(&hints),
            Arc::clone(&objects),
            Arc::clone(&cluster),
            Arc::clone(&buckets),
            config.handoff.clone(),
        );
        let antientropy = AntiEntropy::new(
            Arc::clone(&objects),
            Arc::clone(&cluster),
            Arc::clone(&buckets),
            Arc::clone(&hints),
            config.antientropy.clone(),
            !dir.clean_start(),
        );
        let transfers =
            Transfers::new(Arc::clone(&objects), Arc::clone(&cluster), config.handoff.transfer_rate_bytes_per_sec);
        let background = if env.one_thread { Background::current() } else { Background::start()? };
        let mut workers = vec![
            background.enter(|| transfers.spawn(stopped.clone())),
            spawn_storage_gauge(Arc::clone(&engine), stopped.clone()),
            cluster.spawn_worker(stopped.clone()),
            background.enter(|| handoff.spawn(stopped.clone())),
            background.enter(|| antientropy.spawn(stopped.clone())),
        ];
        if config.plugins.unload_idle_secs > 0 {
            let every = Duration::from_secs(config.plugins.unload_idle_secs);
            workers.push(spawn_plugin_unloader(Arc::clone(&plugins), every, stopped.clone()));
        }

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<pb::admin_server::AdminServer<AdminService>>().await;
        workers.push(spawn_health(health, cluster.ready_watch(), stopped.clone()));
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
            Arc::clone(&hints),
            config.handoff.enabled,
            Arc::clone(&cluster),
            Arc::clone(&plugins),
            background.runtime.clone(),
            Arc::clone(&pool),
        );
        let local: Arc<dyn LocalData> = Arc::new(NodeData {
            objects: Arc::clone(&objects),
            hints,
            dir: Arc::clone(&dir),
            partitions: cluster.ring().partitions(),
        });
        let mut server = Server::builder();
        if let Some(t) = &tls {
            server = server
                .tls_config(
                    tonic::transport::ServerTlsConfig::new()
                        .identity(tonic::transport::Identity::from_pem(&t.cert, &t.key))
                        .client_ca_root(tonic::transport::Certificate::from_pem(&t.ca))
                        // Clients connect without certificates; a node's
                        // certificate, when presented, must be the CA's.
                        .client_auth_optional(true),
                )
                .map_err(|e| Error::invalid(format!("the TLS certificate or key cannot be used: {e}")))?;
        }
        if keys.is_empty() {
            workers.push(spawn_key_fetch(Arc::clone(&cluster), config.seeds.clone(), stopped.clone()));
        }
        let router = server
            .layer(GuardLayer(Arc::clone(&guard)))
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(pb::kv_server::KvServer::new(KvService::new(coordinator)))
            // Plugin components arrive through Admin and may exceed tonic's
            // default 4 MiB.
            .add_service(
                pb::admin_server::AdminServer::new(AdminService::new(
                    buckets,
                    plugins,
                    Arc::clone(&cluster),
                    Workers { handoff: Arc::clone(&handoff), transfers, antientropy: Arc::clone(&antientropy) },
                    local,
                ))
                .max_decoding_message_size(64 << 20),
            )
            .add_service(
                pb::internal_server::InternalServer::new(internal)
                    .max_decoding_message_size(crate::net::MAX_PEER_MESSAGE_BYTES)
                    .max_encoding_message_size(crate::net::MAX_PEER_MESSAGE_BYTES),
            )
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let mut shutdown = stopped;
        let server = tokio::spawn(async move {
            let stopping = async move {
                let _ = shutdown.wait_for(|s| *s).await;
            };
            match incoming {
                Incoming::Tcp(tcp) => router.serve_with_incoming_shutdown(tcp, stopping).await,
                Incoming::Given(_, conns) => router.serve_with_incoming_shutdown(conns, stopping).await,
            }
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
        Ok(Node {
            addr: bound,
            node_id,
            stop,
            server,
            workers,
            cluster,
            faults,
            engine,
            objects,
            handoff,
            antientropy,
            background,
            pool,
            dir,
        })
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

    /// This node's objects (for tests that look at one replica's copy).
    pub fn objects(&self) -> &Arc<ObjectStore> {
        &self.objects
    }

    /// The hinted-handoff worker and the hints this node holds.
    pub fn handoff(&self) -> &Arc<Handoff> {
        &self.handoff
    }

    /// The anti-entropy worker.
    pub fn antientropy(&self) -> &Arc<AntiEntropy> {
        &self.antientropy
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
        drop(self.handoff);
        drop(self.antientropy);
        self.background.stop().await;
        // Storage calls still queued (replica batches of requests cut off at
        // the drain timeout, read repair) finish before the trees are saved.
        self.pool.close().await;
        // If a background task still holds the store it could write after
        // the final flush; then the run does not count as clean.
        let saved = self.objects.save_trees();
        if let Err(e) = &saved {
            tracing::warn!(error = %e, "saving the hash trees failed; they are rebuilt at the next start");
        }
        let sole = Arc::try_unwrap(self.objects).map(drop).is_ok() && saved.is_ok();
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

/// Where the server's connections come from.
enum Incoming {
    Tcp(TcpIncoming),
    Given(SocketAddr, crate::env::Incoming),
}

/// A thread of its own, at a lower CPU priority (nice 10), running a
/// single-threaded runtime for the node's background workers (hint
/// delivery, and other work that is not a request). On a busy machine the
/// scheduler gives request threads the CPU first, so background work slows
/// down instead of slowing requests; each worker also throttles itself.
struct Background {
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start() -> Result<Self> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("concord-background".into())
            .spawn(move || {
                lower_priority();
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Dropping the runtime cancels whatever is left on it.
            })
            .map_err(|e| Error::Internal(format!("cannot start the background thread: {e}")))?;
        let runtime = handle_rx
            .recv()
            .map_err(|_| Error::internal("the background thread stopped at start"))?
            .map_err(|e| Error::Internal(format!("cannot start the background runtime: {e}")))?;
        Ok(Self { runtime, stop: Some(stop), thread: Some(thread) })
    }

    /// No thread: background workers share the caller's runtime (the
    /// simulation runs a whole node on one).
    fn current() -> Self {
        Self { runtime: tokio::runtime::Handle::current(), stop: None, thread: None }
    }

    /// Runs `f` (which spawns a worker) with the background runtime as the
    /// current one.
    fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        let _guard = self.runtime.enter();
        f()
    }

    /// Stops the runtime and waits for its thread.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Lowers the calling thread's CPU priority. On Linux the nice value is a
/// per-thread attribute, so only this thread is affected; elsewhere (or
/// when not permitted) the thread just keeps the normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take no pointers and only affect
        // the calling thread's scheduling.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 10)
        };
        if rc != 0 {
            tracing::debug!("could not lower the background thread's priority");
        }
    }
}

/// What `cluster join` sees of, and does to, this node's data.
struct NodeData {
    objects: Arc<ObjectStore>,
    hints: Arc<HintStore>,
    dir: Arc<DataDir>,
    partitions: u32,
}

impl LocalData for NodeData {
    fn holds_data(&self) -> Result<bool> {
        Ok(self.hints.total() > 0 || self.objects.holds_data(self.partitions)?)
    }

    fn discard(&self) -> Result<()> {
        // The new incarnation is recorded first: if the process dies
        // half-way, the old actor is retired anyway.
        let actor = self.dir.renew_incarnation()?;
        self.hints.discard_all()?;
        self.objects.discard_all(self.partitions, actor)?;
        self.objects.engine().flush()?;
        Ok(())
    }
}

/// Keeps the gRPC health of the data service (and of the server as a
/// whole) in step with [`Cluster::is_ready`]: `NOT_SERVING` while the node
/// has not received the cluster's ring, so load balancers and scripts do
/// not send it requests it would refuse. Admin stays `SERVING`.
fn spawn_health(
    health: tonic_health::server::HealthReporter,
    mut ready: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let status = if *ready.borrow_and_update() {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            let kv = <pb::kv_server::KvServer<KvService> as tonic::server::NamedService>::NAME;
            health.set_service_status(kv, status).await;
            health.set_service_status("", status).await;
            tokio::select! {
                changed = ready.changed() => if changed.is_err() { break },
                _ = stopped.wait_for(|s| *s) => break,
            }
        }
    })
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

/// Fetches the cluster's keys from a seed, for a node started with seeds
/// and no keys: retried until one hands them out, or until this node makes
/// them itself (the smallest id of a new cluster whose nodes all started
/// with seeds; see `Cluster::bootstrap_keys`).
fn spawn_key_fetch(cluster: Arc<Cluster>, seeds: Vec<String>, mut stopped: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut warned = false;
        let mut pause = Duration::from_millis(50);
        loop {
            for seed in &seeds {
                if !cluster.keys().is_empty() {
                    return;
                }
                let Ok(Some(addr)) = tokio::net::lookup_host(seed.as_str()).await.map(|mut a| a.next()) else {
                    continue;
                };
                match cluster.fetch_keys(addr, None).await {
                    Ok(keys) if cluster.keys().is_empty() => match cluster.keys().replace(keys) {
                        Ok(()) => {
                            tracing::info!(seed, "received the cluster secret from a seed");
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "storing the cluster secret failed"),
                    },
                    Ok(_) => return,
                    // Seeds of a cluster that is starting have no keys for
                    // a moment; only a lasting failure is worth a warning.
                    Err(e) if !warned && started.elapsed() > Duration::from_secs(15) => {
                        warned = true;
                        tracing::warn!(seed, error = %e, "cannot get the cluster secret yet; retrying");
                    }
                    Err(e) => tracing::debug!(seed, error = %e, "cannot get the cluster secret yet"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    })
}

/// Publishes the engine's size on disk every few seconds.
fn spawn_storage_gauge(engine: Arc<dyn Store>, mut stopped: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let gauge = metrics::gauge!("concord_storage_bytes");
        loop {
            let e = Arc::clone(&engine);
            if let Ok(Ok(bytes)) = crate::env::blocking(move || e.size_on_disk()).await {
                gauge.set(bytes as f64);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = stopped.wait_for(|s| *s) => break,
            }
        }
    })
}

//! The echo floor of `concord bench --floor`: a gRPC server with Concord's
//! `Kv` service that does no work. A get answers one sibling of the
//! benchmark's value size with a context of a three-replica key; a put
//! answers a context and one ack. The same client, workload and
//! concurrency driven against it measure what the machine, the load
//! generator, HTTP/2 and protobuf cost on their own, so a Concord figure
//! can be read as a share of it: the machine's speed cancels out.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use anyhow::Context as _;
use bytes::Bytes;
use concord_proto::v1 as pb;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use concord::causal::{VersionVector, encode_context};

/// The answers, built once.
struct Echo {
    value: Bytes,
    context: Bytes,
}

#[tonic::async_trait]
impl pb::kv_server::Kv for Echo {
    async fn get(&self, _: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        Ok(Response::new(pb::GetResponse {
            found: true,
            siblings: vec![pb::Sibling {
                value: self.value.clone(),
                deleted: false,
                written_at_ms: 1,
                writer: "echo".into(),
            }],
            context: self.context.clone(),
            resolved_by: String::new(),
            unresolved: None,
            replicas: vec!["echo".into()],
        }))
    }

    async fn put(&self, _: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        Ok(Response::new(pb::PutResponse {
            context: self.context.clone(),
            sibling_count: 1,
            acked_by: vec!["echo".into()],
            ..Default::default()
        }))
    }

    /// An echo server has no ring: a token-aware client sends it everything.
    async fn route(&self, _: Request<pb::RouteRequest>) -> Result<Response<pb::RouteResponse>, Status> {
        Err(Status::unimplemented("the floor's echo server does not route"))
    }

    async fn delete(&self, _: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        Ok(Response::new(pb::DeleteResponse {
            context: self.context.clone(),
            acked_by: vec!["echo".into()],
            ..Default::default()
        }))
    }
}

/// An echo server on its own runtime (as `concord serve` has), on a free
/// port of 127.0.0.1. Stopped on drop.
pub struct EchoServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Starts a server with `threads` worker threads (0: one per core)
    /// whose gets answer values of `value_size` bytes.
    pub fn start(threads: usize, value_size: usize) -> anyhow::Result<Self> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-floor".into())
            .spawn(move || {
                let mut rt = tokio::runtime::Builder::new_multi_thread();
                if threads > 0 {
                    rt.worker_threads(threads);
                }
                let rt = match rt.thread_name("bench-floor").enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = addr_tx.send(Err(format!("starting the echo server's runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let incoming = match TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0))) {
                        Ok(i) => i.with_nodelay(Some(true)),
                        Err(e) => {
                            let _ = addr_tx.send(Err(format!("the echo server cannot listen: {e}")));
                            return;
                        }
                    };
                    match incoming.local_addr() {
                        Ok(a) => {
                            let _ = addr_tx.send(Ok(a));
                        }
                        Err(e) => {
                            let _ = addr_tx.send(Err(e.to_string()));
                            return;
                        }
                    }
                    // A signed context of the size a three-replica key carries.
                    let keys = concord::security::KeySet::generate();
                    let vv = VersionVector::from_entries([(1, 7), (2, 3), (3, 5)]);
                    let context = encode_context(&keys, &vv, "bench", b"k").expect("a fresh key set signs");
                    let echo = Echo { value: Bytes::from(vec![7u8; value_size]), context: Bytes::from(context) };
                    let served = Server::builder()
                        .add_service(pb::kv_server::KvServer::new(echo))
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = stopped.await;
                        })
                        .await;
                    if let Err(e) = served {
                        eprintln!("the echo server failed: {e}");
                    }
                });
            })
            .context("starting the echo server's thread")?;
        let addr = addr_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the echo server stopped before it listened"))?
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(Self { addr, stop: Some(stop), thread: Some(thread) })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

//! The `Kv` service.

use std::sync::Arc;
use tokio::time::Instant;

use concord_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::convert::{read_options, sibling_to_proto, write_options};
use super::{check_object, check_size, to_status};
use crate::causal::{Content, VersionVector, decode_context, encode_context};
use crate::coordinator::wire::fallbacks_to_proto;
use crate::coordinator::{Coordinator, ReadRequest, WriteRequest};
use crate::security::{KeySet, now_ms};
use crate::telemetry::{OpMetrics, RequestMetrics};
use crate::{Error, Result};

/// Serves `concord.v1.Kv`.
pub struct KvService {
    coordinator: Arc<Coordinator>,
    metrics: RequestMetrics,
}

impl KvService {
    /// Wraps a coordinator.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator, metrics: RequestMetrics::new() }
    }

    /// Checks a put or delete and turns it into a [`WriteRequest`].
    fn write_request(
        &self,
        bucket: String,
        key: &[u8],
        content: Content,
        context: &[u8],
        options: Option<&pb::WriteOptions>,
    ) -> Result<WriteRequest> {
        check_object(&bucket, key)?;
        if let Content::Value(value) = &content {
            check_size(&self.coordinator.buckets().get(&bucket), key, value)?;
        }
        let keys = self.coordinator.cluster().keys().current();
        let context =
            decode_context(&keys, now_ms(), context, &bucket, key).map_err(|e| Error::invalid(e.to_string()))?;
        let (quorum, timeout) = write_options(options).map_err(Error::invalid)?;
        let sloppy = options.and_then(|o| o.sloppy);
        Ok(WriteRequest { bucket, key: key.to_vec(), content, context, quorum, timeout, zone: None, sloppy })
    }
}

/// The context token of `vv` for a reply.
fn token(keys: &KeySet, vv: &VersionVector, bucket: &str, key: &[u8]) -> Result<bytes::Bytes, Status> {
    if vv.is_empty() {
        return Ok(bytes::Bytes::new());
    }
    encode_context(keys, vv, bucket, key).map(Into::into).map_err(|e| Status::unavailable(e.to_string()))
}

/// Records the latency and outcome of one request.
fn observe<T>(m: &OpMetrics, started: Instant, r: Result<T, Status>) -> Result<T, Status> {
    m.record(started.elapsed(), r.as_ref().err().map(|s| s.code()));
    r
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let result = async {
            check_object(&req.bucket, &req.key)?;
            let (quorum, timeout) = read_options(req.options.as_ref()).map_err(Error::invalid)?;
            let sloppy = req.options.as_ref().and_then(|o| o.sloppy);
            self.coordinator
                .get(ReadRequest { bucket: req.bucket.clone(), key: req.key.to_vec(), quorum, timeout, sloppy })
                .await
        }
        .await;
        let keys = self.coordinator.cluster().keys().current();
        let reply = result.map_err(|e| to_status(e, &keys, &req.bucket, &req.key)).and_then(|out| {
            if out.object.is_found() {
                self.metrics.siblings_per_read.record(out.object.siblings().len() as f64);
            }
            let context = token(&keys, out.object.context(), &req.bucket, &req.key)?;
            let (found, siblings, resolved_by) = match out.resolved {
                // One merged sibling stands for all of them; the context
                // still covers every one.
                Some((content, by)) => {
                    let latest = out.object.siblings().iter().max_by_key(|s| (s.written_at_ms, s.dot));
                    let merged = pb::Sibling {
                        deleted: content.is_tombstone(),
                        value: content.value().map(bytes::Bytes::copy_from_slice).unwrap_or_default(),
                        written_at_ms: latest.map_or(0, |s| s.written_at_ms),
                        writer: latest.map(|s| s.writer.clone()).unwrap_or_default(),
                    };
                    (!content.is_tombstone(), vec![merged], by.to_string())
                }
                None => {
                    (out.object.is_found(), out.object.siblings().iter().map(sibling_to_proto).collect(), String::new())
                }
            };
            let unresolved = out.unresolved.map(|u| pb::Unresolved {
                plugin: u.plugin,
                reason: u.reason,
                message: u.message,
                breaker_open: u.breaker_open,
            });
            Ok(Response::new(pb::GetResponse {
                found,
                siblings,
                context,
                resolved_by,
                replicas: out.replicas,
                unresolved,
            }))
        });
        observe(&self.metrics.get, started, reply)
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let return_body = req.options.as_ref().is_some_and(|o| o.return_body);
        let result = async {
            let mut w = self.write_request(
                req.bucket.clone(),
                &req.key,
                Content::Value(req.value.to_vec()),
                &req.context,
                req.options.as_ref(),
            )?;
            let Content::Value(value) = std::mem::replace(&mut w.content, Content::Tombstone) else {
                unreachable!("a put carries a value")
            };
            let (value, validated_by) = self.coordinator.validate(&w.bucket, &w.key, value).await?;
            if !validated_by.is_empty() {
                // A validator may have replaced the value.
                check_size(&self.coordinator.buckets().get(&w.bucket), &w.key, &value)?;
            }
            w.content = Content::Value(value);
            self.coordinator.put(w).await.map(|out| (out, validated_by))
        }
        .await;
        let keys = self.coordinator.cluster().keys().current();
        let reply = result.map_err(|e| to_status(e, &keys, &req.bucket, &req.key)).and_then(|(out, validated_by)| {
            Ok(Response::new(pb::PutResponse {
                context: token(&keys, out.object.context(), &req.bucket, &req.key)?,
                // The context covers every stored sibling, so a writer is
                // always shown them when there is more than its own.
                siblings: if return_body || out.object.siblings().len() > 1 {
                    out.object.siblings().iter().map(sibling_to_proto).collect()
                } else {
                    Vec::new()
                },
                sibling_count: out.object.siblings().len() as u32,
                sloppy: out.sloppy(),
                acked_by: out.acked_by,
                fallbacks: fallbacks_to_proto(out.fallbacks),
                resolved_by: out.resolved_by.map(|b| b.to_string()).unwrap_or_default(),
                validated_by,
            }))
        });
        observe(&self.metrics.put, started, reply)
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let result = async {
            let w = self.write_request(
                req.bucket.clone(),
                &req.key,
                Content::Tombstone,
                &req.context,
                req.options.as_ref(),
            )?;
            self.coordinator.put(w).await
        }
        .await;
        let keys = self.coordinator.cluster().keys().current();
        let reply = result.map_err(|e| to_status(e, &keys, &req.bucket, &req.key)).and_then(|out| {
            let siblings = if out.object.siblings().len() > 1 {
                out.object.siblings().iter().map(sibling_to_proto).collect()
            } else {
                Vec::new()
            };
            Ok(Response::new(pb::DeleteResponse {
                context: token(&keys, out.object.context(), &req.bucket, &req.key)?,
                sloppy: out.sloppy(),
                acked_by: out.acked_by,
                fallbacks: fallbacks_to_proto(out.fallbacks),
                siblings,
            }))
        });
        observe(&self.metrics.delete, started, reply)
    }

    async fn route(&self, _: Request<pb::RouteRequest>) -> Result<Response<pb::RouteResponse>, Status> {
        Ok(Response::new(route(self.coordinator.cluster(), self.coordinator.buckets())))
    }
}

/// The ring as clients see it: every member with its address, and each
/// partition's preference list as deep as the largest bucket's n.
fn route(cluster: &crate::cluster::Cluster, buckets: &crate::buckets::Buckets) -> pb::RouteResponse {
    let ring = cluster.ring();
    let members = cluster.members();
    let ids: Vec<&String> = ring.members().keys().collect();
    let nodes = ids
        .iter()
        .map(|id| pb::RouteNode {
            node_id: (*id).clone(),
            address: cluster.addr_of(id).map(|a| a.to_string()).unwrap_or_default(),
            up: members.is_live(id),
        })
        .collect();
    let default_n = buckets.defaults().n;
    let bucket_n: std::collections::HashMap<String, u32> =
        buckets.list().into_iter().filter(|(_, p)| p.n != default_n).map(|(name, p)| (name, p.n)).collect();
    let largest = bucket_n.values().copied().chain([default_n]).max().unwrap_or(default_n);
    let depth = (largest as usize).min(ids.len());
    let mut replicas = Vec::with_capacity(ring.partitions() as usize * depth);
    for p in 0..ring.partitions() {
        let list = ring.preference_list(p, depth);
        replicas.extend(list.iter().map(|id| ids.binary_search(&id).expect("a preference list names members") as u32));
    }
    pb::RouteResponse {
        ring_epoch: ring.epoch(),
        partitions: ring.partitions(),
        nodes,
        depth: depth as u32,
        replicas,
        default_n,
        bucket_n,
    }
}

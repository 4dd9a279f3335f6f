//! The `Kv` service.

use std::sync::Arc;
use std::time::Instant;

use concord_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::convert::{read_options, sibling_to_proto, write_options};
use super::{check_object, check_size, to_status};
use crate::causal::{Content, decode_context, encode_context};
use crate::coordinator::{Coordinator, ReadRequest, WriteRequest};
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
        let context = decode_context(context, &bucket, key).map_err(|e| Error::invalid(e.to_string()))?;
        let (quorum, timeout) = write_options(options).map_err(Error::invalid)?;
        Ok(WriteRequest { bucket, key: key.to_vec(), content, context, quorum, timeout })
    }
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
            self.coordinator
                .get(ReadRequest { bucket: req.bucket.clone(), key: req.key.to_vec(), quorum, timeout })
                .await
        }
        .await;
        let reply = result.map_err(|e| to_status(e, &req.bucket, &req.key)).map(|out| {
            let found = out.object.is_found();
            if found {
                self.metrics.siblings_per_read.record(out.object.siblings().len() as f64);
            }
            let context = if out.object.context().is_empty() {
                Default::default()
            } else {
                encode_context(out.object.context(), &req.bucket, &req.key).into()
            };
            Response::new(pb::GetResponse {
                found,
                siblings: out.object.siblings().iter().map(sibling_to_proto).collect(),
                context,
                resolved_by: String::new(),
                replicas: out.replicas,
            })
        });
        observe(&self.metrics.get, started, reply)
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let return_body = req.options.as_ref().is_some_and(|o| o.return_body);
        let result = async {
            let w = self.write_request(
                req.bucket.clone(),
                &req.key,
                Content::Value(req.value.to_vec()),
                &req.context,
                req.options.as_ref(),
            )?;
            self.coordinator.put(w).await
        }
        .await;
        let reply = result.map_err(|e| to_status(e, &req.bucket, &req.key)).map(|out| {
            Response::new(pb::PutResponse {
                context: encode_context(out.object.context(), &req.bucket, &req.key).into(),
                siblings: if return_body {
                    out.object.siblings().iter().map(sibling_to_proto).collect()
                } else {
                    Vec::new()
                },
                sibling_count: out.object.siblings().len() as u32,
                acked_by: out.acked_by,
                sloppy: out.sloppy,
                resolved_by: String::new(),
                validated_by: Vec::new(),
            })
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
        let reply = result.map_err(|e| to_status(e, &req.bucket, &req.key)).map(|out| {
            Response::new(pb::DeleteResponse {
                context: encode_context(out.object.context(), &req.bucket, &req.key).into(),
                acked_by: out.acked_by,
                sloppy: out.sloppy,
            })
        });
        observe(&self.metrics.delete, started, reply)
    }
}

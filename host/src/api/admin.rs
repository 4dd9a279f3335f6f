//! The `Admin` service.

use std::sync::Arc;

use concord_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::admin_status;
use crate::antientropy::AntiEntropy;
use crate::buckets::{
    BucketChange, BucketProps, Buckets, PluginRef, ResolveOn, ValidatorFailure, validate_bucket_name,
};
use crate::cluster::{Cluster, LocalData};
use crate::handoff::{Handoff, Transfers};
use crate::plugins::{DeployRequest, PluginInfo, PluginKind, Plugins, SizeLimit};
use crate::{Error, Result};

/// The bearer token a request carries, to pass on to a seed.
fn request_credentials(
    md: &tonic::metadata::MetadataMap,
) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    md.get("authorization").cloned()
}

/// Serves `concord.v1.Admin`.
pub struct AdminService {
    buckets: Arc<Buckets>,
    plugins: Arc<Plugins>,
    cluster: Arc<Cluster>,
    handoff: Arc<Handoff>,
    transfers: Arc<Transfers>,
    antientropy: Arc<AntiEntropy>,
    local: Arc<dyn LocalData>,
}

/// The background workers whose state `ClusterStatus` reports.
pub struct Workers {
    /// Hint delivery.
    pub handoff: Arc<Handoff>,
    /// Partition transfers.
    pub transfers: Arc<Transfers>,
    /// Anti-entropy.
    pub antientropy: Arc<AntiEntropy>,
}

impl AdminService {
    /// Wires the service.
    pub fn new(
        buckets: Arc<Buckets>,
        plugins: Arc<Plugins>,
        cluster: Arc<Cluster>,
        workers: Workers,
        local: Arc<dyn LocalData>,
    ) -> Self {
        let Workers { handoff, transfers, antientropy } = workers;
        Self { buckets, plugins, cluster, handoff, transfers, antientropy, local }
    }

    /// Refuses a change that binds a plugin that is not deployed, one of
    /// the wrong kind, or a resolver whose answers do not fit the bucket's
    /// `max_object_bytes` (checked whenever either changes).
    async fn check_bindings(&self, bucket: &str, change: &BucketChange) -> Result<()> {
        for r in [&change.resolver, &change.shadow_resolver].into_iter().flatten().flatten() {
            self.plugins.check_binding(r, PluginKind::Resolver)?;
        }
        for r in change.validators.iter().flatten() {
            self.plugins.check_binding(r, PluginKind::Validator)?;
        }
        let resizes = change.max_object_bytes.is_some();
        if resizes || change.resolver.is_some() || change.shadow_resolver.is_some() {
            let next = change.applied_to(&self.buckets.get(bucket));
            // Bad properties get their own error, not a failed check.
            next.validate()?;
            let bound = [
                (&next.resolver, change.resolver.is_some()),
                (&next.shadow_resolver, change.shadow_resolver.is_some()),
            ];
            for (r, changed) in bound {
                if let Some(r) = r
                    && (changed || resizes)
                {
                    self.plugins.check_fits(r, bucket, next.max_object_bytes).await?;
                }
            }
        }
        Ok(())
    }
}

/// A manifest entry as the API shows it.
pub fn plugin_to_proto(p: &PluginInfo) -> pb::PluginInfo {
    pb::PluginInfo {
        name: p.name.clone(),
        version: p.version.clone(),
        sha256: p.sha256.clone(),
        kind: match p.kind {
            PluginKind::Resolver => pb::PluginKind::Resolver,
            PluginKind::Validator => pb::PluginKind::Validator,
        } as i32,
        size_bytes: p.size_bytes,
        interface_version: p.interface_version.clone(),
        deployed_at_ms: p.deployed_at_ms,
        memory_mb: p.memory_mb,
    }
}

/// Bucket properties as the API shows them.
pub fn props_to_proto(name: &str, p: &BucketProps) -> pb::BucketProps {
    pb::BucketProps {
        name: name.to_owned(),
        n: p.n,
        r: p.r(),
        w: p.w(),
        max_object_bytes: p.max_object_bytes,
        max_siblings: p.max_siblings,
        resolver: p.resolver.as_ref().map(ToString::to_string).unwrap_or_default(),
        shadow_resolver: p.shadow_resolver.as_ref().map(ToString::to_string).unwrap_or_default(),
        validators: p.validators.iter().map(ToString::to_string).collect(),
        resolve_on: match p.resolve_on {
            ResolveOn::Read => pb::ResolveOn::Read,
            ResolveOn::Write => pb::ResolveOn::Write,
        } as i32,
        validator_failure: match p.validator_failure {
            ValidatorFailure::Reject => pb::ValidatorFailure::Reject,
            ValidatorFailure::Accept => pb::ValidatorFailure::Accept,
        } as i32,
        sloppy: p.sloppy,
        configured: p.version > 0,
        version: p.version,
    }
}

fn optional_plugin(s: &str) -> Result<Option<PluginRef>> {
    if s.is_empty() { Ok(None) } else { s.parse().map(Some) }
}

/// A `SetBucketRequest` as a change to apply.
fn change_from_proto(req: &pb::SetBucketRequest) -> Result<BucketChange> {
    Ok(BucketChange {
        n: req.n,
        r: req.r,
        w: req.w,
        max_object_bytes: req.max_object_bytes,
        max_siblings: req.max_siblings,
        resolver: req.resolver.as_deref().map(optional_plugin).transpose()?,
        shadow_resolver: req.shadow_resolver.as_deref().map(optional_plugin).transpose()?,
        validators: req
            .validators
            .as_ref()
            .map(|l| l.validators.iter().map(|v| v.parse()).collect::<Result<Vec<_>>>())
            .transpose()?,
        resolve_on: req
            .resolve_on
            .map(|v| match pb::ResolveOn::try_from(v) {
                Ok(pb::ResolveOn::Read) => Ok(ResolveOn::Read),
                Ok(pb::ResolveOn::Write) => Ok(ResolveOn::Write),
                Err(_) => Err(Error::invalid(format!("unknown resolve_on value {v}"))),
            })
            .transpose()?,
        validator_failure: req
            .validator_failure
            .map(|v| match pb::ValidatorFailure::try_from(v) {
                Ok(pb::ValidatorFailure::Reject) => Ok(ValidatorFailure::Reject),
                Ok(pb::ValidatorFailure::Accept) => Ok(ValidatorFailure::Accept),
                Err(_) => Err(Error::invalid(format!("unknown validator_failure value {v}"))),
            })
            .transpose()?,
        sloppy: req.sloppy,
    })
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn cluster_status(
        &self,
        _: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let mut status = self.cluster.status();
        let now = crate::now_ms();
        status.hints = self
            .handoff
            .status()
            .into_iter()
            .map(|q| pb::HintQueue {
                target: q.target,
                count: q.stats.count,
                bytes: q.stats.bytes,
                oldest_age_ms: q.stats.oldest_ms.map_or(0, |o| now.saturating_sub(o)),
                last_error: q.last_error.unwrap_or_default(),
            })
            .collect();
        let transfers = self.transfers.status();
        // This node's own row shows what it holds now, not what it last
        // gossiped.
        let held = self.handoff.hints().total();
        let partitions: std::collections::BTreeSet<u32> = transfers.iter().map(|((p, _), _)| *p).collect();
        for n in status.nodes.iter_mut().filter(|n| n.is_self) {
            n.hints = held;
            n.transferring = partitions.len() as u32;
        }
        status.transfers = transfers
            .into_iter()
            .map(|((partition, n), t)| pb::TransferStatus {
                partition,
                n: n.into(),
                targets: t.targets,
                done: t.done.into_iter().collect(),
                segments_done: t.segments.0 as u64,
                segments_total: t.segments.1 as u64,
                keys_sent: t.keys_sent,
                bytes_sent: t.bytes_sent,
                last_error: t.last_error.unwrap_or_default(),
            })
            .collect();
        let ae = self.antientropy.status();
        status.anti_entropy = Some(pb::AntiEntropyStatus {
            trees: ae.trees as u32,
            never_exchanged: ae.never_exchanged as u32,
            oldest_full_exchange_ms: ae.oldest_full_exchange.map_or(0, |d| d.as_millis() as u64),
            tombstones: ae.tombstones,
            exchanges: ae.totals.exchanges,
            keys_repaired: ae.totals.keys_repaired,
            bytes: ae.totals.bytes,
            reaped: ae.totals.reaped,
            verify_done: ae.verifying.map_or(0, |v| v.0),
            verify_total: ae.verifying.map_or(0, |v| v.1),
            rebuilding: ae.rebuilding as u32,
        });
        Ok(Response::new(status))
    }

    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let req = request.get_ref().clone();
        let seed = req.seed.trim();
        if seed.is_empty() {
            return Err(Status::invalid_argument("give the address of a node of the cluster to join"));
        }
        // The caller's own credentials fetch the cluster secret from the
        // seed: joining takes an admin of both nodes.
        let credentials = request_credentials(request.metadata());
        let members =
            self.cluster.join(seed, req.discard_data, &*self.local, credentials).await.map_err(admin_status)?;
        Ok(Response::new(pb::JoinResponse { members: members as u32 }))
    }

    async fn leave(&self, request: Request<pb::LeaveRequest>) -> Result<Response<pb::LeaveResponse>, Status> {
        let node = request.into_inner().node_id;
        self.cluster.leave(Some(&node)).await.map_err(admin_status)?;
        Ok(Response::new(pb::LeaveResponse {}))
    }

    async fn set_bucket(&self, request: Request<pb::SetBucketRequest>) -> Result<Response<pb::BucketProps>, Status> {
        let req = request.into_inner();
        let change = change_from_proto(&req).map_err(admin_status)?;
        validate_bucket_name(&req.name).map_err(admin_status)?;
        self.check_bindings(&req.name, &change).await.map_err(admin_status)?;
        let props = self.buckets.set_blocking(&req.name, change).await.map_err(admin_status)?;
        Ok(Response::new(props_to_proto(&req.name, &props)))
    }

    async fn get_bucket(&self, request: Request<pb::GetBucketRequest>) -> Result<Response<pb::BucketProps>, Status> {
        let req = request.into_inner();
        validate_bucket_name(&req.name).map_err(admin_status)?;
        Ok(Response::new(props_to_proto(&req.name, &self.buckets.get(&req.name))))
    }

    async fn list_buckets(
        &self,
        _: Request<pb::ListBucketsRequest>,
    ) -> Result<Response<pb::ListBucketsResponse>, Status> {
        let buckets = self.buckets.list().iter().map(|(name, p)| props_to_proto(name, p)).collect();
        Ok(Response::new(pb::ListBucketsResponse { buckets }))
    }

    async fn deploy_plugin(
        &self,
        request: Request<pb::DeployPluginRequest>,
    ) -> Result<Response<pb::DeployPluginResponse>, Status> {
        let req = request.into_inner();
        let limit = if req.bucket.is_empty() {
            SizeLimit::default()
        } else {
            validate_bucket_name(&req.bucket).map_err(admin_status)?;
            SizeLimit::bucket(&req.bucket, self.buckets.get(&req.bucket).max_object_bytes)
        };
        let request = DeployRequest {
            name: req.name,
            version: (!req.version.is_empty()).then_some(req.version),
            bytes: req.wasm.to_vec(),
            force: req.force,
            samples: req.samples.iter().map(|s| s.to_vec()).collect(),
            limit,
            memory_mb: (req.memory_mb != 0).then_some(req.memory_mb),
        };
        let deployed = self.plugins.deploy(request).await.map_err(admin_status)?;
        Ok(Response::new(pb::DeployPluginResponse {
            plugin: Some(plugin_to_proto(&deployed.info)),
            warnings: deployed.warnings,
            check_log: deployed.check_log,
            unchanged: deployed.unchanged,
        }))
    }

    async fn shadow_report(
        &self,
        request: Request<pb::ShadowReportRequest>,
    ) -> Result<Response<pb::ShadowReportResponse>, Status> {
        let bucket = request.into_inner().bucket;
        if !bucket.is_empty() {
            validate_bucket_name(&bucket).map_err(admin_status)?;
        }
        let shadows = self
            .plugins
            .shadow_report((!bucket.is_empty()).then_some(bucket.as_str()))
            .into_iter()
            .map(|(bucket, plugin, s)| pb::ShadowStats {
                bucket,
                plugin,
                agree: s.agree,
                disagree: s.disagree,
                failed: s.failed,
                samples: s
                    .samples
                    .into_iter()
                    .map(|x| pb::ShadowSample { key: x.key, active: x.active, shadow: x.shadow, at_ms: x.at_ms })
                    .collect(),
                last_failure: s.last_failure.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::ShadowReportResponse { node_id: self.cluster.node_id().to_string(), shadows }))
    }

    async fn promote_shadow(
        &self,
        request: Request<pb::PromoteShadowRequest>,
    ) -> Result<Response<pb::BucketProps>, Status> {
        let bucket = request.into_inner().bucket;
        validate_bucket_name(&bucket).map_err(admin_status)?;
        let Some(shadow) = self.buckets.get(&bucket).shadow_resolver.clone() else {
            return Err(admin_status(Error::FailedPrecondition(format!(
                "bucket {bucket} has no shadow resolver to promote; bind one with `concord bucket set {bucket} \
                 --shadow-resolver NAME@VERSION`"
            ))));
        };
        let change = BucketChange { resolver: Some(Some(shadow)), shadow_resolver: Some(None), ..Default::default() };
        self.check_bindings(&bucket, &change).await.map_err(admin_status)?;
        let props = self.buckets.set_blocking(&bucket, change).await.map_err(admin_status)?;
        Ok(Response::new(props_to_proto(&bucket, &props)))
    }

    async fn cluster_secret(
        &self,
        _: Request<pb::ClusterSecretRequest>,
    ) -> Result<Response<pb::ClusterSecretResponse>, Status> {
        let keys = self.cluster.keys().current();
        if keys.is_empty() {
            return Err(Status::failed_precondition("this node holds no cluster secret yet; ask a member"));
        }
        tracing::info!("the cluster secret was handed out");
        Ok(Response::new(pb::ClusterSecretResponse { secret: keys.export() }))
    }

    async fn rotate_secret(
        &self,
        request: Request<pb::RotateSecretRequest>,
    ) -> Result<Response<pb::RotateSecretResponse>, Status> {
        let grace_secs = match request.into_inner().grace_secs {
            0 => 86_400,
            s if s > 365 * 86_400 => {
                return Err(Status::invalid_argument("grace_secs is at most a year (31536000)"));
            }
            s => s,
        };
        let now = crate::security::now_ms();
        let key_id = self.cluster.keys().rotate(now, grace_secs * 1000).map_err(admin_status)?;
        tracing::info!(key_id, grace_secs, "rotated the cluster secret");
        Ok(Response::new(pb::RotateSecretResponse { key_id, old_keys_expire_ms: now + grace_secs * 1000 }))
    }

    async fn list_plugins(
        &self,
        _: Request<pb::ListPluginsRequest>,
    ) -> Result<Response<pb::ListPluginsResponse>, Status> {
        let plugins = self.plugins.registry().list().iter().map(plugin_to_proto).collect();
        Ok(Response::new(pb::ListPluginsResponse { plugins }))
    }
}

//! What a read leaves behind: read repair, and resolved values written
//! back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::mpsc;

use super::tally::{Answer, Plan};
use super::{Coordinator, ReadRequest, content_of};
use crate::buckets::BucketProps;
use crate::causal::{Content, Object};
use crate::plugins::{ResolveFor, Unresolved};
use crate::ring::NodeId;
use crate::storage::codec::encode_object;

/// How long a read repair may take to reach a replica.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(5);

/// A replica's copy as the read saw it, or `None` for "has nothing".
pub(super) type Copy = (NodeId, NodeId, Option<Object>);

impl Coordinator {
    /// Makes every replica that answered hold everything any answer held.
    ///
    /// Runs after the reply: it keeps listening for the answers the reply
    /// did not wait for (until the request's deadline ends their calls),
    /// merges each into what it has, and sends the merged object to every
    /// replica whose last known copy is less, including replicas that
    /// answered "nothing" and replicas that answered after the reply.
    /// Fallbacks' answers are merged too (they hold writes a replica
    /// missed), but fallbacks are not repaired: their copies are hints.
    pub(super) fn repair_in_background(
        self: &Arc<Self>,
        plan: &Plan,
        req: &ReadRequest,
        answers: Vec<Copy>,
        mut late: mpsc::UnboundedReceiver<Answer<Option<Object>>>,
    ) {
        if !self.read_repair {
            return;
        }
        if answers.iter().all(|(_, _, o)| o.is_none()) && late.is_closed() {
            return;
        }
        let this = Arc::clone(self);
        let (bucket, key, partition, epoch) = (req.bucket.clone(), req.key.clone(), plan.partition, plan.epoch);
        let n = plan.replicas.len();
        tokio::spawn(async move {
            // What each replica is known to hold: its answer, then what it
            // was sent.
            let mut known: BTreeMap<NodeId, Option<Object>> = BTreeMap::new();
            let mut merged = Object::new();
            for (node, replica, copy) in answers {
                if let Some(o) = &copy {
                    merged.merge(o);
                }
                if node == replica {
                    known.insert(node, copy);
                }
            }
            let mut encoded: Option<(Object, bytes::Bytes)> = None;
            loop {
                if !merged.context().is_empty() {
                    let stale: Vec<NodeId> =
                        known.iter().filter(|(_, c)| c.as_ref() != Some(&merged)).map(|(n, _)| n.clone()).collect();
                    for node in stale {
                        this.metrics.read_repairs.increment(1);
                        let repaired = if node == this.node_id {
                            // The ring may have moved the partition away
                            // since (and its copy been handed over and
                            // dropped): then it is not this node's to repair.
                            let ring = this.cluster.ring();
                            if ring.epoch() == epoch || ring.preference_list(partition, n).contains(&this.node_id) {
                                let (objects, bucket, key, merged) =
                                    (Arc::clone(&this.objects), bucket.clone(), key.clone(), merged.clone());
                                this.pool.run(move || objects.merge(partition, &bucket, &key, &merged).map(drop)).await
                            } else {
                                Err(crate::Error::internal("this node no longer replicates the key"))
                            }
                        } else {
                            // Encoded once per merged state, like a write.
                            if encoded.as_ref().is_none_or(|(o, _)| *o != merged) {
                                encoded = Some((merged.clone(), encode_object(&merged).into()));
                            }
                            let bytes = encoded.as_ref().expect("set above").1.clone();
                            let deadline = Instant::now() + REPAIR_TIMEOUT;
                            this.send_encoded(&node, &bucket, &key, bytes, epoch, deadline, None).await
                        };
                        match repaired {
                            Ok(()) => {
                                known.insert(node, Some(merged.clone()));
                            }
                            Err(e) => {
                                // Not lost: the next read, or anti-entropy,
                                // repairs it again.
                                this.metrics.read_repair_failures.increment(1);
                                known.remove(&node);
                                tracing::debug!(replica = %node, error = %e, "read repair failed");
                            }
                        }
                    }
                }
                let Some(a) = late.recv().await else { return };
                if let Ok(copy) = a.result {
                    if let Some(o) = &copy {
                        merged.merge(o);
                    }
                    if a.node == a.replica {
                        known.insert(a.node, copy);
                    }
                }
            }
        });
    }

    /// Runs the bucket's resolver on a read's siblings (and its shadow, in
    /// the background).
    pub(super) async fn resolve_siblings(
        self: &Arc<Self>,
        req: &ReadRequest,
        props: &BucketProps,
        object: &Object,
    ) -> Option<Result<(Content, Arc<str>), Unresolved>> {
        let has_resolver = props.resolver.is_some() || props.shadow_resolver.is_some();
        if !has_resolver || object.live_siblings().nth(1).is_none() {
            return None;
        }
        let resolved = self.plugins.resolve(&req.bucket, props, &req.key, object.siblings(), ResolveFor::Read).await?;
        Some(resolved.and_then(|r| match content_of(r.resolution) {
            Some(content) => Ok((content, r.by)),
            None => Err(Unresolved::kept(&r.by)),
        }))
    }

    /// Stores a resolved value over the siblings it merged, so later reads
    /// find one sibling, and spreads it to the other replicas in the
    /// background. Only a replica writes back, and only if its copy is
    /// still what was read: concurrent readers of one conflict write it back
    /// once. The resolution is deterministic, so a write-back that does not
    /// happen only means a later read resolves again.
    pub(super) async fn write_back(
        self: &Arc<Self>,
        plan: &Plan,
        req: &ReadRequest,
        read: &Object,
        content: Content,
        deadline: Instant,
    ) -> Option<Object> {
        if !plan.replicas.contains(&self.node_id) {
            return None;
        }
        let (objects, bucket, key, read) =
            (Arc::clone(&self.objects), req.bucket.clone(), req.key.clone(), read.clone());
        let partition = plan.partition;
        let written = self
            .pool
            .run(move || objects.replace_if_unchanged(partition, &bucket, &key, &read, content, crate::now_ms()))
            .await
            .map_err(|e| tracing::debug!(error = %e, "writing back a resolved value failed"))
            .ok()??;
        let encoded: bytes::Bytes = encode_object(&written).into();
        for r in plan.replicas.iter().filter(|r| **r != self.node_id) {
            let (this, r, bucket, key, encoded) =
                (Arc::clone(self), r.clone(), req.bucket.clone(), req.key.clone(), encoded.clone());
            let epoch = plan.epoch;
            tokio::spawn(async move { this.send_encoded(&r, &bucket, &key, encoded, epoch, deadline, None).await });
        }
        Some(written)
    }
}

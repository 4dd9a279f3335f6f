//! Forwarding: a write that reaches a node which is not one of its key's
//! replicas goes to a replica, which coordinates it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Coordinator, WriteOutcome, WriteRequest, remaining, wire};
use crate::net::{NetError, never_delivered};
use crate::ring::NodeId;
use crate::{Error, Result};

/// Time a forwarded write leaves for the forwarder to hear the answer.
const FORWARD_MARGIN: Duration = Duration::from_millis(50);

impl Coordinator {
    /// Hands a write to the first replica that takes it. Another replica
    /// is tried only when the call provably never reached the previous one
    /// (the connection failed): after a timeout the write may have been
    /// applied, and applying it again elsewhere would duplicate it.
    pub(super) async fn forward(
        self: &Arc<Self>,
        req: WriteRequest,
        replicas: &[NodeId],
        deadline: Instant,
    ) -> Result<WriteOutcome> {
        self.metrics.forwarded.increment(1);
        let members = self.cluster.members();
        let mut failures = Vec::new();
        // Live replicas first, in preference order; then the rest, in case
        // gossip is behind.
        let mut order: Vec<&NodeId> = replicas.iter().filter(|r| members.is_live(r)).collect();
        order.extend(replicas.iter().filter(|r| !members.is_live(r)));
        let unavailable =
            |detail: String| Error::Unavailable { op: "write", needed: 1, got: 0, total: replicas.len(), detail };
        for r in order {
            let Some(addr) = self.cluster.addr_of(r) else {
                failures.push(format!("{r}: address unknown"));
                continue;
            };
            // The replica gets less time than this call, so its own answer
            // (a quorum failure, say) arrives before this call gives up.
            let zone = req.zone.as_deref().unwrap_or(self.cluster.zone());
            let keys = self.cluster.keys().current();
            let fwd = wire::forward_request(&keys, &req, zone, remaining(deadline).saturating_sub(FORWARD_MARGIN))?;
            let answer = self
                .cluster
                .net()
                .call(addr, remaining(deadline), |mut c| async move { c.forward_write(fwd).await })
                .await;
            match answer {
                Ok(r) => return wire::outcome_from_reply(r),
                Err(NetError::Status { status, .. }) if never_delivered(&status) => {
                    failures.push(format!("{r}: {}", status.message()));
                }
                // A transport failure after connecting: the request may
                // have arrived.
                Err(NetError::Status { status, .. }) if std::error::Error::source(&status).is_some() => {
                    return Err(unavailable(format!(
                        "; the connection to {r}, which the write was handed to, failed during the call ({}); it may \
                         have applied the write",
                        status.message()
                    )));
                }
                // The replica's own answer (its quorum failure, say).
                Err(NetError::Status { status, .. }) => return Err(Error::Remote(status)),
                Err(e @ NetError::Timeout(_)) => {
                    return Err(unavailable(format!(
                        "; {r}, which the write was handed to, did not answer in time ({e}); it may have applied it"
                    )));
                }
            }
        }
        Err(unavailable(format!(
            "; no replica of this key could be reached to coordinate the write (a write is coordinated by one of \
             its key's replicas): {}",
            failures.join("; ")
        )))
    }
}

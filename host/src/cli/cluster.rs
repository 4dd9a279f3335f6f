//! `concord cluster status | join | leave`.

use serde_json::json;

use super::{Target, connect};

#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// One row per node: status, zone, partitions, metadata versions.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Make the node at --endpoint join the cluster SEED_ADDR belongs to.
    Join {
        /// Address of any node of the cluster to join.
        seed: String,
        /// Delete the node's own data (and the hints it holds) first; a node
        /// that holds data is refused otherwise.
        #[arg(long)]
        discard_data: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a node from the ring (the node at --endpoint when NODE is not given).
    Leave {
        /// Id of the node to remove; a down node is removed by the claimant.
        node: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

pub async fn run(cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Join { seed, discard_data, target } => {
            let mut admin = connect(&target).await?.admin();
            let r = admin
                .join(concord_proto::v1::JoinRequest { seed: seed.clone(), discard_data })
                .await
                .map_err(concord_client::ClientError::from)?
                .into_inner();
            if target.json {
                println!("{}", json!({"joined": seed, "members": r.members}));
            } else {
                println!(
                    "joined the cluster of {seed}; {} members known; the claimant will add this node to the ring",
                    r.members
                );
            }
        }
        ClusterCommand::Leave { node, target } => {
            let mut admin = connect(&target).await?.admin();
            let node_id = node.clone().unwrap_or_default();
            admin
                .leave(concord_proto::v1::LeaveRequest { node_id })
                .await
                .map_err(concord_client::ClientError::from)?;
            let who = node.unwrap_or_else(|| format!("the node at {}", target.endpoint));
            if target.json {
                println!("{}", json!({"leaving": who}));
            } else {
                println!("{who} is leaving the ring; `concord cluster status` shows when it is out");
            }
        }
        ClusterCommand::Status { target } => {
            let s = connect(&target).await?.cluster_status().await?;
            if target.json {
                let nodes: Vec<_> = s
                    .nodes
                    .iter()
                    .map(|n| {
                        json!({
                            "node_id": n.node_id, "address": n.address, "zone": n.zone,
                            "status": n.status, "phi": n.phi, "partitions": n.partitions,
                            "ring_epoch": n.ring_epoch, "buckets_version": n.buckets_version,
                            "plugins_version": n.plugins_version, "self": n.is_self,
                            "hints": n.hints,
                        })
                    })
                    .collect();
                let tripped: Vec<_> = s
                    .tripped_plugins
                    .iter()
                    .map(|t| json!({"bucket": t.bucket, "plugin": t.plugin, "reason": t.reason, "tripped_at_ms": t.tripped_at_ms}))
                    .collect();
                let hints: Vec<_> = s
                    .hints
                    .iter()
                    .map(|h| json!({"target": h.target, "count": h.count, "bytes": h.bytes, "oldest_age_ms": h.oldest_age_ms, "last_error": h.last_error}))
                    .collect();
                println!(
                    "{}",
                    json!({
                        "nodes": nodes, "partitions": s.partitions, "ring_epoch": s.ring_epoch,
                        "ready": s.ready, "tripped_plugins": tripped, "hints": hints,
                    })
                );
                return Ok(());
            }
            println!("ring: {} partitions, epoch {}", s.partitions, s.ring_epoch);
            if !s.ready {
                println!(
                    "this node has not received the cluster's ring yet: it refuses reads and writes until it does"
                );
            }
            println!(
                "{:<24} {:<22} {:<10} {:<8} {:>6} {:>10} {:>6} {:>8} {:>8} {:>7}",
                "NODE", "ADDRESS", "ZONE", "STATUS", "PHI", "PARTITIONS", "RING", "BUCKETS", "PLUGINS", "HINTS"
            );
            for n in &s.nodes {
                let phi = n.phi.map_or("-".to_owned(), |p| format!("{p:.1}"));
                let me = if n.is_self { " *" } else { "" };
                println!(
                    "{:<24} {:<22} {:<10} {:<8} {:>6} {:>10} {:>6} {:>8} {:>8} {:>7}",
                    format!("{}{me}", n.node_id),
                    n.address,
                    n.zone,
                    n.status,
                    phi,
                    n.partitions,
                    n.ring_epoch,
                    n.buckets_version,
                    n.plugins_version,
                    n.hints
                );
            }
            for h in &s.hints {
                let error = if h.last_error.is_empty() {
                    String::new()
                } else {
                    format!("; last delivery failed: {}", h.last_error)
                };
                println!(
                    "hints held here for {}: {} ({} bytes), oldest {:.1} s old{error}",
                    h.target,
                    h.count,
                    h.bytes,
                    h.oldest_age_ms as f64 / 1000.0
                );
            }
            for t in &s.tripped_plugins {
                println!("plugin {} switched off for bucket {}: {}", t.plugin, t.bucket, t.reason);
            }
        }
    }
    Ok(())
}

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
    /// Print the cluster secret, to give a node that joins without asking a
    /// seed (as security.cluster_secret). Anyone who holds it can act as a
    /// member: keep it as you would a private key.
    Secret {
        #[command(flatten)]
        target: Target,
    },
    /// Add a new cluster key; every older key stops being accepted after
    /// the grace period (context tokens clients hold included).
    RotateSecret {
        /// How long older keys stay accepted, in seconds.
        #[arg(long, default_value_t = 86_400)]
        grace_secs: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a node from the ring (the node at --endpoint when NODE is not
    /// given). Waits, showing progress, until the node has handed all its
    /// data and hints to the others.
    Leave {
        /// Id of the node to remove; a down node is removed by the claimant.
        node: Option<String>,
        /// Return once the node is asked to leave, without waiting.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds (the node goes on).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
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
        ClusterCommand::Secret { target } => {
            let r = connect(&target)
                .await?
                .admin()
                .cluster_secret(concord_proto::v1::ClusterSecretRequest {})
                .await
                .map_err(concord_client::ClientError::from)?
                .into_inner();
            if target.json {
                println!("{}", json!({"secret": r.secret}));
            } else {
                println!("{}", r.secret);
            }
        }
        ClusterCommand::RotateSecret { grace_secs, target } => {
            if grace_secs == 0 {
                anyhow::bail!("--grace-secs must be at least 1");
            }
            let r = connect(&target)
                .await?
                .admin()
                .rotate_secret(concord_proto::v1::RotateSecretRequest { grace_secs })
                .await
                .map_err(concord_client::ClientError::from)?
                .into_inner();
            if target.json {
                println!("{}", json!({"key_id": r.key_id, "old_keys_expire_ms": r.old_keys_expire_ms}));
            } else {
                println!(
                    "cluster key {} added; it signs once every live node has it, and older keys are accepted for {} \
                     more seconds",
                    r.key_id, grace_secs
                );
            }
        }
        ClusterCommand::Leave { node, no_wait, timeout, target } => {
            let client = connect(&target).await?;
            let node_id = node.clone().unwrap_or_default();
            client
                .admin()
                .leave(concord_proto::v1::LeaveRequest { node_id })
                .await
                .map_err(concord_client::ClientError::from)?;
            let who = node.clone().unwrap_or_else(|| format!("the node at {}", target.endpoint));
            if no_wait {
                if target.json {
                    println!("{}", json!({"leaving": who}));
                } else {
                    println!("{who} is leaving the ring; `concord cluster status` shows when it is out");
                }
                return Ok(());
            }
            wait_until_left(&client, node.as_deref(), &who, timeout, target.json).await?;
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
                            "hints": n.hints, "transferring": n.transferring,
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
                let transfers: Vec<_> = s
                    .transfers
                    .iter()
                    .map(|t| {
                        json!({
                            "partition": t.partition, "n": t.n, "targets": t.targets, "done": t.done,
                            "segments_done": t.segments_done, "segments_total": t.segments_total,
                            "keys_sent": t.keys_sent, "bytes_sent": t.bytes_sent, "last_error": t.last_error,
                        })
                    })
                    .collect();
                let anti_entropy = s.anti_entropy.as_ref().map(|a| {
                    json!({
                        "trees": a.trees, "never_exchanged": a.never_exchanged,
                        "oldest_full_exchange_ms": a.oldest_full_exchange_ms, "tombstones": a.tombstones,
                        "exchanges": a.exchanges, "keys_repaired": a.keys_repaired, "bytes": a.bytes,
                        "reaped": a.reaped, "verify_done": a.verify_done, "verify_total": a.verify_total,
                        "rebuilding": a.rebuilding,
                    })
                });
                println!(
                    "{}",
                    json!({
                        "nodes": nodes, "partitions": s.partitions, "ring_epoch": s.ring_epoch,
                        "ready": s.ready, "tripped_plugins": tripped, "hints": hints,
                        "transfers": transfers, "anti_entropy": anti_entropy,
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
            if let Some(ae) = &s.anti_entropy {
                let oldest = if ae.trees == 0 {
                    "no trees".to_owned()
                } else if ae.never_exchanged > 0 {
                    format!("{} of {} trees not yet exchanged with every replica", ae.never_exchanged, ae.trees)
                } else {
                    format!("oldest full exchange {:.1} s ago", ae.oldest_full_exchange_ms as f64 / 1000.0)
                };
                println!(
                    "anti-entropy here: {oldest}; {} exchanges repaired {} keys ({} bytes); {} tombstones, {} reaped",
                    ae.exchanges, ae.keys_repaired, ae.bytes, ae.tombstones, ae.reaped
                );
                if ae.rebuilding > 0 {
                    println!("rebuilding the hash trees of {} partitions after an unclean stop", ae.rebuilding);
                }
                if ae.verify_total > 0 {
                    println!(
                        "checking hash trees against the data: {} of {} segments",
                        ae.verify_done, ae.verify_total
                    );
                }
            }
            for t in &s.transfers {
                let error =
                    if t.last_error.is_empty() { String::new() } else { format!("; last error: {}", t.last_error) };
                println!(
                    "handing partition {} (n={}) to {}: {} of {} done, {} keys ({} bytes) sent, segment {}/{}{error}",
                    t.partition,
                    t.n,
                    t.targets.join(", "),
                    t.done.len(),
                    t.targets.len(),
                    t.keys_sent,
                    t.bytes_sent,
                    t.segments_done,
                    t.segments_total
                );
            }
            for t in &s.tripped_plugins {
                println!("plugin {} switched off for bucket {}: {}", t.plugin, t.bucket, t.reason);
            }
        }
    }
    Ok(())
}

/// Follows a leaving node until it is out of the ring and holds nothing
/// for anyone: no partition it no longer owns, no hint.
async fn wait_until_left(
    client: &concord_client::Client,
    node: Option<&str>,
    who: &str,
    timeout_secs: u64,
    json_out: bool,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_secs);
    // Progress comes from the leaving node itself.
    let status = client.cluster_status().await?;
    let leaving = match node {
        None => client.clone(),
        Some(id) => {
            let row = status.nodes.iter().find(|n| n.node_id == id);
            match row.filter(|n| n.status != "down" && !n.address.is_empty()) {
                Some(n) if n.is_self => client.clone(),
                Some(n) => concord_client::Client::connect(&n.address).await?,
                None => {
                    // A down node is dropped by the claimant; it has nothing
                    // to hand over that it can still send.
                    println!("{who} is down: the claimant removes it from the ring");
                    return Ok(());
                }
            }
        }
    };
    let mut last = String::new();
    loop {
        let s = leaving.cluster_status().await?;
        let me = s.nodes.iter().find(|n| n.is_self);
        let owned = me.map_or(0, |n| n.partitions);
        let hints: u64 = s.hints.iter().map(|h| h.count).sum();
        let transfers = s.transfers.len();
        // After an unclean restart a node cannot tell what it holds for
        // others until its hash trees are rebuilt.
        let rebuilding = s.anti_entropy.as_ref().map_or(0, |a| a.rebuilding);
        if owned == 0 && transfers == 0 && hints == 0 && rebuilding == 0 {
            if json_out {
                println!("{}", json!({"left": who}));
            } else {
                println!("{who} has left the ring and handed everything over; it can be stopped");
            }
            return Ok(());
        }
        let mut line = format!(
            "{who}: {owned} partitions still owned, {transfers} partition transfers under way, {hints} hints held"
        );
        if rebuilding > 0 {
            line.push_str(&format!(", hash trees of {rebuilding} partitions being rebuilt"));
        }
        if line != last && !json_out {
            eprintln!("{line}");
            last = line;
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "{who} has not finished leaving after {timeout_secs} s ({last}); it goes on in the background"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

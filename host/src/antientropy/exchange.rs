//! One exchange: two nodes that hold a tree find the keys that differ and
//! swap them. Anti-entropy runs it both ways between replicas; a partition
//! transfer runs it one way, from a former owner to each new replica.
//!
//! ```text
//! A                                      B
//! CompareTrees(digests of A's trees) ──►  equal, or B's 1024 segment hashes
//! A compares segment hashes: the differing segments
//! SegmentKeys(tree, segments)        ──►  B's (key, hash) in them
//! A lists its own, compares: keys only A has, only B has, or different
//! ExchangeObjects(A's objects, want) ──►  B merges A's; answers its copies
//! A merges B's copies
//! ```
//!
//! Every object travels as stored and is merged (a DVV merge: nothing is
//! overwritten), so an exchange interrupted anywhere leaves both sides
//! correct, and running it again finishes it.

use std::net::SocketAddr;
use std::time::Duration;

use concord_proto::v1 as pb;

use super::tree::{Segments, diff_keys};
use crate::net::{Net, Throttle};
use crate::ring::partition_of;
use crate::storage::codec::decode_object;
use crate::storage::{ObjectStore, StoreKey};
use crate::{Error, Result};

/// Deadline of one exchange call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Segments listed per `SegmentKeys` call.
pub const SEGMENTS_PER_CALL: usize = 128;
/// Objects sent or asked for per `ExchangeObjects` call.
pub const OBJECTS_PER_CALL: usize = 256;
/// Object bytes sent per `ExchangeObjects` call (a larger object goes
/// alone).
pub const BYTES_PER_CALL: usize = 4 << 20;

/// Which way objects go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Both ways: replicas converging.
    Both,
    /// Only from this node to the peer: a former owner handing a tree over.
    Push,
}

/// What an exchange of one tree did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Segments that differed.
    pub segments: usize,
    /// Objects this node sent.
    pub sent: u64,
    /// Objects this node received and merged.
    pub received: u64,
    /// Bytes of objects and key lists that crossed the network.
    pub bytes: u64,
    /// Keys one side could not merge: the result would hold more than a
    /// node keeps for one key. They stay as they were on that side.
    pub refused: u64,
}

impl Outcome {
    /// Adds another tree's outcome.
    pub fn add(&mut self, o: Outcome) {
        self.segments += o.segments;
        self.sent += o.sent;
        self.received += o.received;
        self.bytes += o.bytes;
        self.refused += o.refused;
    }
}

/// How a peer's tree compares with this node's.
#[derive(Clone, Debug)]
pub enum Comparison {
    /// The same keys and objects.
    Equal,
    /// Different: the peer's segment hashes.
    Differs(Segments),
    /// The peer does not hold the tree (or cannot say now), and why.
    Refused(String),
}

/// A tree on the wire.
pub fn tree_id(partition: u32, n: u8) -> pb::TreeId {
    pb::TreeId { partition, n: n.into() }
}

/// A tree from the wire, checked against the ring's partition count.
pub fn tree_from(id: Option<&pb::TreeId>, partitions: u32) -> Result<(u32, u8)> {
    let id = id.ok_or_else(|| Error::invalid("no tree named"))?;
    if id.partition >= partitions {
        return Err(Error::invalid(format!("partition {} of a ring of {partitions}", id.partition)));
    }
    let n = u8::try_from(id.n).ok().filter(|n| (1..=crate::buckets::MAX_N as u8).contains(n));
    let n = n.ok_or_else(|| Error::invalid(format!("a tree of n={}", id.n)))?;
    Ok((id.partition, n))
}

/// Compares this node's trees with `addr`'s in one call.
pub async fn compare(
    objects: &ObjectStore,
    net: &Net,
    addr: SocketAddr,
    ring_epoch: u64,
    trees: &[(u32, u8)],
) -> Result<Vec<Comparison>> {
    let mine: Vec<Segments> = trees.iter().map(|(p, n)| objects.segments(*p, *n)).collect();
    let req = pb::CompareTreesRequest {
        ring_epoch,
        trees: trees
            .iter()
            .zip(&mine)
            .map(|((p, n), s)| pb::TreeDigest { tree: Some(tree_id(*p, *n)), digest: s.digest() })
            .collect(),
    };
    let resp = net
        .call(addr, CALL_TIMEOUT, |mut c| async move { c.compare_trees(req).await })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    if resp.trees.len() != trees.len() {
        return Err(Error::Internal(format!("the peer compared {} trees of {}", resp.trees.len(), trees.len())));
    }
    Ok(resp
        .trees
        .into_iter()
        .map(|t| {
            if !t.error.is_empty() {
                Comparison::Refused(t.error)
            } else if t.equal {
                Comparison::Equal
            } else {
                match Segments::decode(&t.segments) {
                    Ok(s) => Comparison::Differs(s),
                    Err(e) => Comparison::Refused(format!("its tree does not decode: {e}")),
                }
            }
        })
        .collect())
}

/// What one exchange works with.
pub struct Peer<'a> {
    /// This node's objects.
    pub objects: &'a ObjectStore,
    /// The calls.
    pub net: &'a Net,
    /// Paces what is sent and received.
    pub throttle: &'a Throttle,
    /// The peer.
    pub addr: SocketAddr,
    /// This node's ring epoch.
    pub ring_epoch: u64,
    /// The ring's partition count, to check received keys.
    pub partitions: u32,
}

impl Peer<'_> {
    /// Brings tree `(partition, n)` in step with the peer, whose segment
    /// hashes are `theirs`. `progress` hears, after every call to the
    /// peer, how many differing segments are done and the outcome so far
    /// (whose `segments` is how many differ).
    pub async fn sync(
        &self,
        partition: u32,
        n: u8,
        theirs: &Segments,
        direction: Direction,
        progress: &mut (dyn FnMut(usize, &Outcome) + Send),
    ) -> Result<Outcome> {
        let differing = self.objects.segments(partition, n).differing(theirs);
        let mut out = Outcome { segments: differing.len(), ..Outcome::default() };
        progress(0, &out);
        for (i, chunk) in differing.chunks(SEGMENTS_PER_CALL).enumerate() {
            let (diff, listed) = self.diff(partition, n, chunk).await?;
            out.bytes += listed;
            let mut send: Vec<StoreKey> = diff.only_ours.into_iter().chain(diff.different.iter().cloned()).collect();
            let mut want: Vec<Vec<u8>> = match direction {
                Direction::Both => diff.only_theirs.into_iter().chain(diff.different).map(|k| k.into_bytes()).collect(),
                Direction::Push => Vec::new(),
            };
            while !send.is_empty() || !want.is_empty() {
                let mut objects = Vec::new();
                let mut bytes = 0;
                // Up to a byte budget; a key past it goes in the next call,
                // or alone if it is larger than the budget.
                while objects.len() < OBJECTS_PER_CALL {
                    let Some(k) = send.pop() else { break };
                    // Gone meanwhile (reaped, dropped): nothing to send.
                    let Some(object) = self.objects.read_raw(partition, &k)? else { continue };
                    let size = object.len() + k.as_bytes().len();
                    if !objects.is_empty() && bytes + size > BYTES_PER_CALL {
                        send.push(k);
                        break;
                    }
                    bytes += size;
                    objects.push(pb::StoredObject { key: k.into_bytes().into(), object: object.into() });
                }
                let asked: Vec<bytes::Bytes> =
                    want.drain(want.len().saturating_sub(OBJECTS_PER_CALL)..).map(Into::into).collect();
                let asked_back = asked.clone();
                self.throttle.take(bytes).await;
                out.sent += objects.len() as u64;
                let req = pb::ExchangeObjectsRequest {
                    tree: Some(tree_id(partition, n)),
                    objects,
                    want: asked,
                    transfer: direction == Direction::Push,
                    ring_epoch: self.ring_epoch,
                };
                let resp = self
                    .net
                    .call(self.addr, CALL_TIMEOUT, |mut c| async move { c.exchange_objects(req).await })
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?;
                // The peer stops at its reply budget: ask again for the rest.
                let answered = (resp.answered as usize).min(asked_back.len());
                if answered == 0 && !asked_back.is_empty() {
                    return Err(Error::Internal("the peer answered none of the keys asked for".into()));
                }
                want.extend(asked_back[answered..].iter().map(|k| k.to_vec()));
                out.refused += resp.refused.len() as u64;
                let received: usize = resp.objects.iter().map(|o| o.key.len() + o.object.len()).sum();
                self.throttle.take(received).await;
                out.bytes += (bytes + received) as u64;
                for o in resp.objects {
                    let key = self.checked_key(partition, o.key.to_vec())?;
                    let object = decode_object(&o.object)?;
                    match self.objects.merge_raw(partition, &key, &object) {
                        Ok(_) => out.received += 1,
                        // One key too large to merge leaves the rest of the
                        // tree to be repaired.
                        Err(e @ Error::TooLarge(_)) => {
                            tracing::warn!(error = %e, "anti-entropy could not merge a key");
                            out.refused += 1;
                        }
                        Err(e) => return Err(e),
                    }
                }
                progress(i * SEGMENTS_PER_CALL, &out);
            }
            progress((i * SEGMENTS_PER_CALL + chunk.len()).min(differing.len()), &out);
        }
        // A push (a partition handed to a new owner) is done only when the
        // target holds everything: the sender keeps the partition, and
        // tries again later, while any key was refused.
        if direction == Direction::Push && out.refused > 0 {
            return Err(Error::TooLarge(format!(
                "{} keys were too large for the target to merge (over {} MiB); the rest were sent",
                out.refused,
                crate::storage::MAX_MERGED_KEY_BYTES >> 20
            )));
        }
        Ok(out)
    }

    /// The keys of some segments that differ between this node and the
    /// peer, and the bytes the peer's listing took.
    async fn diff(&self, partition: u32, n: u8, segments: &[u16]) -> Result<(KeyDiffed, u64)> {
        let req = pb::SegmentKeysRequest {
            tree: Some(tree_id(partition, n)),
            segments: segments.iter().map(|s| u32::from(*s)).collect(),
        };
        let resp = self
            .net
            .call(self.addr, CALL_TIMEOUT, |mut c| async move { c.segment_keys(req).await })
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        let listed: u64 = resp.keys.iter().map(|k| k.key.len() as u64 + 8).sum();
        self.throttle.take(listed as usize).await;
        let theirs: Vec<(Vec<u8>, u64)> = resp.keys.into_iter().map(|k| (k.key.to_vec(), k.hash)).collect();
        let mut ours = Vec::new();
        for s in segments {
            for (k, h) in self.objects.segment_keys(partition, n, *s)? {
                ours.push((k.into_bytes(), h));
            }
        }
        let diff = diff_keys(&ours, &theirs);
        let key = |k: Vec<u8>| self.checked_key(partition, k);
        Ok((
            KeyDiffed {
                only_ours: diff.only_ours.into_iter().map(key).collect::<Result<_>>()?,
                only_theirs: diff.only_theirs.into_iter().map(key).collect::<Result<_>>()?,
                different: diff.different.into_iter().map(key).collect::<Result<_>>()?,
            },
            listed,
        ))
    }

    /// A storage key a peer sent, checked: it splits into a valid bucket
    /// and key, and belongs to `partition`.
    fn checked_key(&self, partition: u32, bytes: Vec<u8>) -> Result<StoreKey> {
        checked_key(bytes, partition, self.partitions)
    }
}

/// A storage key from the wire, checked: it splits into a valid bucket and
/// key, and the key belongs to `partition` of a ring of `partitions`.
pub fn checked_key(bytes: Vec<u8>, partition: u32, partitions: u32) -> Result<StoreKey> {
    let key = StoreKey::from_bytes(bytes).ok_or_else(|| Error::invalid("a storage key that does not split"))?;
    crate::api::check_object(key.bucket(), key.key())?;
    if partition_of(key.bucket(), key.key(), partitions) != partition {
        return Err(Error::invalid(format!("a key of another partition than {partition}")));
    }
    Ok(key)
}

/// A [`super::tree::KeyDiff`] with checked keys.
struct KeyDiffed {
    only_ours: Vec<StoreKey>,
    only_theirs: Vec<StoreKey>,
    different: Vec<StoreKey>,
}

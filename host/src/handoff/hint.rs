//! Hints as data: their keys, their records and the rules for combining and
//! expiring them. Pure: no storage, no clock (time comes in as arguments).
//!
//! A hint's engine key groups hints by the node they are for, so a
//! delivery pass reads one target's hints as one range:
//!
//! ```text
//! key:    [target length: u8] [target] [partition: u32 big-endian] [bucket length: u8] [bucket] [key]
//! record: [format: u8 = 1] [postcard (ring_epoch, created_at_ms, updated_at_ms)] [object, storage codec]
//! ```
//!
//! The object inside is in the storage module's own versioned encoding, so
//! a hint and a stored object never disagree about what an object is.

use serde::{Deserialize, Serialize};

use crate::causal::Object;
use crate::ring::NodeId;
use crate::storage::StorageError;
use crate::storage::StoreKey;
use crate::storage::codec::{decode_object, encode_object};

/// Format of a hint record; its first byte.
const HINT_FORMAT_V1: u8 = 1;

/// Where a hint belongs: the node it is for and the object it carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HintKey {
    /// The replica that missed the write.
    pub target: NodeId,
    /// The object's partition.
    pub partition: u32,
    /// The object's bucket.
    pub bucket: String,
    /// The object's key.
    pub key: Vec<u8>,
}

impl HintKey {
    /// The engine key. Node ids are at most 128 bytes (see
    /// [`crate::Config::validate`]) and bucket names at most 255, so each
    /// length fits its one byte; longer ones are refused.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out = target_prefix(&self.target)?;
        out.extend_from_slice(&self.partition.to_be_bytes());
        if self.bucket.len() > 255 {
            return Err(format!("bucket name of {} bytes", self.bucket.len()));
        }
        out.extend_from_slice(StoreKey::new(&self.bucket, &self.key).as_bytes());
        Ok(out)
    }

    /// Reads an engine key back; `None` for bytes no [`HintKey::encode`]
    /// made.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&len, rest) = bytes.split_first()?;
        let (target, rest) = rest.split_at_checked(len as usize)?;
        let (partition, rest) = rest.split_at_checked(4)?;
        let (bucket, key) = StoreKey::split(rest)?;
        if key.is_empty() || bucket.is_empty() {
            return None;
        }
        Some(Self {
            target: std::str::from_utf8(target).ok()?.to_owned(),
            partition: u32::from_be_bytes(partition.try_into().ok()?),
            bucket: bucket.to_owned(),
            key: key.to_vec(),
        })
    }
}

/// The first bytes of every hint key for `target`: the range a delivery
/// pass scans.
pub fn target_prefix(target: &str) -> Result<Vec<u8>, String> {
    let len = u8::try_from(target.len()).map_err(|_| format!("node id of {} bytes", target.len()))?;
    if len == 0 {
        return Err("empty node id".into());
    }
    let mut out = Vec::with_capacity(1 + target.len() + 4 + 32);
    out.push(len);
    out.extend_from_slice(target.as_bytes());
    Ok(out)
}

/// What a hint holds: the merged object of every write its target missed,
/// with when it started and last grew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    /// Epoch of the newest ring a write in it was planned on.
    pub ring_epoch: u64,
    /// When the first write in it was hinted; the hint window counts from
    /// here, so a target that stays away cannot keep hints alive by being
    /// written to.
    pub created_at_ms: u64,
    /// When a write was last merged in.
    pub updated_at_ms: u64,
    /// Every write the target missed, merged.
    pub object: Object,
}

#[derive(Serialize, Deserialize)]
struct Header {
    ring_epoch: u64,
    created_at_ms: u64,
    updated_at_ms: u64,
}

impl Hint {
    /// A new hint for one write.
    pub fn new(object: Object, ring_epoch: u64, now_ms: u64) -> Self {
        Self { ring_epoch, created_at_ms: now_ms, updated_at_ms: now_ms, object }
    }

    /// Adds another missed write. Objects merge (a DVV merge keeps every
    /// write neither side has seen superseded), so hints coalesce without
    /// ever overwriting one another.
    pub fn coalesce(&mut self, object: &Object, ring_epoch: u64, now_ms: u64) {
        self.object.merge(object);
        self.ring_epoch = self.ring_epoch.max(ring_epoch);
        self.updated_at_ms = self.updated_at_ms.max(now_ms);
    }

    /// Whether the hint has outlived `window_ms`: anti-entropy, not
    /// handoff, repairs its target from here on.
    pub fn expired(&self, now_ms: u64, window_ms: u64) -> bool {
        now_ms.saturating_sub(self.created_at_ms) > window_ms
    }

    /// The stored record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.object.value_bytes());
        out.push(HINT_FORMAT_V1);
        let header = Header {
            ring_epoch: self.ring_epoch,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        };
        postcard::to_io(&header, &mut out).expect("writing to a Vec cannot fail");
        out.extend_from_slice(&encode_object(&self.object));
        out
    }

    /// Reads a stored record, refusing bytes [`Hint::encode`] did not make.
    pub fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        let (&format, rest) =
            bytes.split_first().ok_or_else(|| StorageError::Corruption("empty hint record".into()))?;
        if format != HINT_FORMAT_V1 {
            return Err(StorageError::Corruption(format!("unknown hint format {format}")));
        }
        let (h, object): (Header, &[u8]) = postcard::take_from_bytes(rest)
            .map_err(|e| StorageError::Corruption(format!("hint header does not decode: {e}")))?;
        Ok(Self {
            ring_epoch: h.ring_epoch,
            created_at_ms: h.created_at_ms,
            updated_at_ms: h.updated_at_ms,
            object: decode_object(object)?,
        })
    }
}

/// How long to wait before the next delivery attempt to a target after
/// `failures` failed ones in a row: doubling from `base_ms` up to `max_ms`,
/// with up to a quarter of jitter (`jitter` in `0.0..1.0`) so nodes that
/// hold hints for the same target do not retry in step.
pub fn retry_delay_ms(failures: u32, base_ms: u64, max_ms: u64, jitter: f64) -> u64 {
    if failures == 0 {
        return 0;
    }
    let exp = base_ms.saturating_mul(1u64 << (failures - 1).min(20)).min(max_ms);
    let spread = (exp as f64 * 0.25 * jitter.clamp(0.0, 1.0)) as u64;
    exp - spread
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::causal::{Content, VersionVector};

    fn object(writes: &[(u64, u8)]) -> Object {
        let mut o = Object::new();
        for &(actor, v) in writes {
            o.update(actor, &VersionVector::new(), Content::Value(vec![v]), 5, "n1").unwrap();
        }
        o
    }

    #[test]
    fn keys_round_trip_and_group_by_target() {
        let k =
            HintKey { target: "10.0.0.2:7379".into(), partition: 7, bucket: "cart".into(), key: b"\x00a\xff".to_vec() };
        let bytes = k.encode().unwrap();
        assert_eq!(HintKey::decode(&bytes), Some(k.clone()));
        assert!(bytes.starts_with(&target_prefix("10.0.0.2:7379").unwrap()));
        // One target's prefix never covers another target's keys.
        let other = HintKey { target: "10.0.0.2:73790".into(), ..k };
        assert!(!other.encode().unwrap().starts_with(&target_prefix("10.0.0.2:7379").unwrap()));
        assert!(target_prefix(&"x".repeat(300)).is_err());
        assert!(target_prefix("").is_err());
    }

    #[test]
    fn coalescing_merges_and_keeps_the_first_creation_time() {
        let mut h = Hint::new(object(&[(1, 1)]), 3, 1_000);
        h.coalesce(&object(&[(2, 2)]), 4, 2_000);
        assert_eq!(h.object.siblings().len(), 2, "both missed writes are kept");
        assert_eq!((h.ring_epoch, h.created_at_ms, h.updated_at_ms), (4, 1_000, 2_000));
        assert!(!h.expired(1_000 + 60_000, 60_000));
        assert!(h.expired(1_000 + 60_001, 60_000));
    }

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        assert_eq!(retry_delay_ms(0, 500, 30_000, 0.0), 0);
        assert_eq!(retry_delay_ms(1, 500, 30_000, 0.0), 500);
        assert_eq!(retry_delay_ms(3, 500, 30_000, 0.0), 2_000);
        assert_eq!(retry_delay_ms(40, 500, 30_000, 0.0), 30_000);
        assert_eq!(retry_delay_ms(40, 500, 30_000, 1.0), 22_500);
    }

    proptest! {
        #[test]
        fn records_round_trip(writes in proptest::collection::vec((1u64..4, any::<u8>()), 0..6), e in any::<u64>(), t in any::<u64>()) {
            let h = Hint { ring_epoch: e, created_at_ms: t, updated_at_ms: t, object: object(&writes) };
            prop_assert_eq!(Hint::decode(&h.encode()).unwrap(), h);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = Hint::decode(&bytes);
            let _ = HintKey::decode(&bytes);
        }

        /// Coalescing hints in any order gives the same object as merging
        /// the writes directly: nothing a hint carries is lost or invented.
        #[test]
        fn coalescing_is_order_insensitive(a in proptest::collection::vec((1u64..4, any::<u8>()), 1..4),
                                           b in proptest::collection::vec((4u64..8, any::<u8>()), 1..4)) {
            let (oa, ob) = (object(&a), object(&b));
            let mut ab = Hint::new(oa.clone(), 1, 1);
            ab.coalesce(&ob, 1, 2);
            let mut ba = Hint::new(ob.clone(), 1, 1);
            ba.coalesce(&oa, 1, 2);
            prop_assert_eq!(&ab.object, &ba.object);
            prop_assert_eq!(ab.object, oa.merged(&ob));
        }
    }
}

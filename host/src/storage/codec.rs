//! The on-disk (and replica-to-replica) encoding of an object.
//!
//! ```text
//! [format version: u8 = 1] [postcard-encoded Object]
//! ```
//!
//! The first byte names the format so a later release can read old data
//! directories and migrate them; bytes with an unknown version, that fail to
//! decode, or that decode to an object breaking the DVV invariants are
//! refused as corruption rather than guessed at.

use crate::causal::Object;

use super::StorageError;

/// Current object format.
pub const OBJECT_FORMAT_V1: u8 = 1;

/// Encodes an object in the current format.
pub fn encode_object(object: &Object) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + object.value_bytes());
    out.push(OBJECT_FORMAT_V1);
    postcard::to_io(object, &mut out).expect("writing to a Vec cannot fail");
    out
}

/// Decodes an object written by [`encode_object`].
pub fn decode_object(bytes: &[u8]) -> Result<Object, StorageError> {
    let (&version, body) = bytes.split_first().ok_or_else(|| StorageError::Corruption("empty object record".into()))?;
    if version != OBJECT_FORMAT_V1 {
        return Err(StorageError::Corruption(format!("unknown object format version {version}")));
    }
    let object: Object = postcard::from_bytes(body)
        .map_err(|e| StorageError::Corruption(format!("object record does not decode: {e}")))?;
    if !object.is_well_formed() {
        return Err(StorageError::Corruption("object record breaks the version vector invariants".into()));
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::causal::{Content, VersionVector};

    fn object() -> impl Strategy<Value = Object> {
        proptest::collection::vec(
            (0u64..4, proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)), any::<bool>()),
            0..8,
        )
        .prop_map(|writes| {
            let mut o = Object::new();
            for (actor, value, with_ctx) in writes {
                let ctx = if with_ctx { o.context().clone() } else { VersionVector::new() };
                let content = value.map_or(Content::Tombstone, Content::Value);
                o.update(actor, &ctx, content, 7, "node-a").unwrap();
            }
            o
        })
    }

    proptest! {
        #[test]
        fn objects_round_trip(o in object()) {
            prop_assert_eq!(decode_object(&encode_object(&o)).unwrap(), o);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode_object(&bytes);
        }

        #[test]
        fn truncated_records_are_refused(o in object(), cut in 1usize..16) {
            let bytes = encode_object(&o);
            if cut < bytes.len() {
                prop_assert!(decode_object(&bytes[..bytes.len() - cut]).is_err());
            }
        }
    }

    #[test]
    fn unknown_versions_are_refused() {
        let mut bytes = encode_object(&Object::new());
        bytes[0] = 9;
        let err = decode_object(&bytes).unwrap_err().to_string();
        assert!(err.contains("unknown object format version 9"), "{err}");
        assert!(decode_object(&[]).is_err());
    }
}

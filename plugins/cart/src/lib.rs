//! The Dynamo paper's shopping cart: concurrent carts merge so that no
//! "add to cart" is ever lost.
//!
//! A cart is a JSON object mapping item ids to quantities:
//!
//! ```json
//! {"items": {"apple": 2, "pear": 1}}
//! ```
//!
//! Merging takes the union of the items, and for an item in several carts
//! the largest quantity. The result is written in a canonical form (keys
//! sorted, no spaces), so resolving is deterministic, order-insensitive,
//! idempotent and associative.
//!
//! As in Dynamo, removing an item is not a merge-safe operation: an item
//! removed in one cart and still present in a concurrent one comes back.
//! Deletes of the whole cart (tombstones) lose against concurrent carts; if
//! every sibling is a tombstone, the cart stays deleted. If a sibling is not
//! a valid cart, the siblings are kept for the client to sort out.

use std::collections::BTreeMap;

use concord_guest::{Level, Resolution, Resolver, Sibling, log};
use serde::{Deserialize, Serialize};

/// A cart: item id to quantity.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    /// Items in the cart.
    pub items: BTreeMap<String, u64>,
}

impl Cart {
    /// Adds `other`'s items: union, largest quantity wins.
    pub fn merge(&mut self, other: Cart) {
        for (item, qty) in other.items {
            let q = self.items.entry(item).or_insert(0);
            *q = (*q).max(qty);
        }
    }
}

/// The resolver.
pub struct CartResolver;

impl Resolver for CartResolver {
    fn resolve(bucket: &str, _key: &[u8], siblings: Vec<Sibling>) -> Resolution {
        let mut merged = Cart::default();
        let mut live = 0;
        for s in siblings.into_iter().filter(|s| !s.tombstone) {
            match serde_json::from_slice::<Cart>(&s.value) {
                Ok(cart) => merged.merge(cart),
                Err(e) => {
                    log(Level::Warn, &format!("cart: a sibling in bucket {bucket} is not a cart ({e}); keeping siblings"));
                    return Resolution::KeepSiblings;
                }
            }
            live += 1;
        }
        if live == 0 {
            return Resolution::Delete;
        }
        Resolution::Resolved(serde_json::to_vec(&merged).expect("a cart serializes"))
    }
}

concord_guest::export_resolver!(CartResolver);

#[cfg(test)]
mod tests {
    use concord_guest::Dot;

    use super::*;

    fn sib(json: &str, counter: u64) -> Sibling {
        Sibling { value: json.into(), tombstone: false, dot: Dot { actor: 1, counter }, written_at_ms: 0 }
    }

    fn resolved(r: Resolution) -> String {
        match r {
            Resolution::Resolved(v) => String::from_utf8(v).unwrap(),
            other => panic!("expected a resolved cart, got {other:?}"),
        }
    }

    #[test]
    fn union_keeps_every_added_item_with_the_largest_quantity() {
        let r = CartResolver::resolve(
            "carts",
            b"alice",
            vec![sib(r#"{"items":{"apple":1,"pear":2}}"#, 1), sib(r#"{"items": {"apple": 3, "fig": 1}}"#, 2)],
        );
        assert_eq!(resolved(r), r#"{"items":{"apple":3,"fig":1,"pear":2}}"#);
    }

    #[test]
    fn resolving_a_resolved_cart_with_itself_changes_nothing() {
        let once = resolved(CartResolver::resolve("c", b"k", vec![sib(r#"{"items":{"b":1,"a":2}}"#, 1)]));
        let twice = resolved(CartResolver::resolve("c", b"k", vec![sib(&once, 1), sib(&once, 2)]));
        assert_eq!(once, twice);
    }

    #[test]
    fn tombstones_lose_to_live_carts_and_win_alone() {
        let mut t = sib("", 3);
        t.tombstone = true;
        assert_eq!(resolved(CartResolver::resolve("c", b"k", vec![t.clone(), sib(r#"{"items":{"a":1}}"#, 1)])), r#"{"items":{"a":1}}"#);
        assert_eq!(CartResolver::resolve("c", b"k", vec![t.clone(), t]), Resolution::Delete);
    }

    #[test]
    fn garbage_keeps_siblings() {
        assert_eq!(CartResolver::resolve("c", b"k", vec![sib("nope", 1), sib("{}", 2)]), Resolution::KeepSiblings);
    }
}

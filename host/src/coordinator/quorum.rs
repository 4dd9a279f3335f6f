//! How many replicas a request waits for. Pure: a table of cases in `tests`.

use crate::{Error, Result};

/// Requested consistency, as the API names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// The bucket's own `r` / `w`.
    #[default]
    Default,
    /// One replica.
    One,
    /// A majority of the replicas.
    Quorum,
    /// Every replica.
    All,
    /// A majority of the replicas in the zone of the node the client called.
    LocalQuorum,
}

/// What a request asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuorumSpec {
    /// Named consistency level, used when `count` is 0.
    pub consistency: Consistency,
    /// Explicit replica count (`r` or `w`); 0 means "use `consistency`".
    pub count: u32,
    /// How many of the answers must come from primary replicas.
    pub primaries: u32,
}

/// What the coordinator waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needed {
    /// Answers (acks for writes) needed before replying.
    pub total: usize,
    /// Of those, answers needed from primary replicas.
    pub primaries: usize,
    /// Only answers from replicas in the client's zone count
    /// (`LOCAL_QUORUM`).
    pub local_only: bool,
}

/// Resolves a request's quorum.
///
/// * `bucket_n` and `bucket_default` are the bucket's `n` and its `r` or `w`;
/// * `replicas` is the number of replicas this request can use (`n` shrunk
///   to the cluster size);
/// * `local_replicas` is how many of those sit in the client's zone.
///
/// A request for more replicas than the bucket has is a mistake in the
/// request (`InvalidInput`); one for more than the cluster can offer right
/// now is `Unavailable`.
pub fn needed(
    op: &'static str,
    spec: QuorumSpec,
    bucket_n: u32,
    bucket_default: u32,
    replicas: usize,
    local_replicas: usize,
) -> Result<Needed> {
    let majority = |n: usize| n / 2 + 1;
    let letter = if op == "read" { "r" } else { "w" };
    let total = if spec.count > 0 {
        if spec.count > bucket_n {
            return Err(Error::invalid(format!("{letter}={} exceeds the bucket's n={bucket_n}", spec.count)));
        }
        spec.count as usize
    } else {
        match spec.consistency {
            // The bucket's quorum, scaled down with n on a small cluster.
            Consistency::Default => (bucket_default as usize).min(replicas).max(1),
            Consistency::One => 1,
            Consistency::Quorum => majority(replicas),
            Consistency::All => replicas,
            Consistency::LocalQuorum => majority(local_replicas),
        }
    };
    if spec.primaries > bucket_n {
        return Err(Error::invalid(format!("p{letter}={} exceeds the bucket's n={bucket_n}", spec.primaries)));
    }
    if spec.count == 0 && spec.consistency == Consistency::LocalQuorum && local_replicas == 0 {
        return Err(Error::Unavailable {
            op,
            needed: 1,
            got: 0,
            total: replicas,
            detail: "; LOCAL_QUORUM: no replica of this key is in the client's zone (that of the node it called)"
                .into(),
        });
    }
    let primaries = spec.primaries as usize;
    if total > replicas || primaries > replicas {
        return Err(Error::Unavailable {
            op,
            needed: total.max(primaries),
            got: 0,
            total: replicas,
            detail: format!("; the cluster offers only {replicas} replicas for this key"),
        });
    }
    let local_only = spec.count == 0 && spec.consistency == Consistency::LocalQuorum;
    Ok(Needed { total: total.max(primaries), primaries, local_only })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(consistency: Consistency, count: u32, primaries: u32) -> QuorumSpec {
        QuorumSpec { consistency, count, primaries }
    }

    #[test]
    fn table() {
        use Consistency::*;
        // (spec, bucket n, bucket default, replicas, local) -> (total, primaries)
        let ok = [
            (spec(Default, 0, 0), 3, 2, 3, 3, (2, 0)),
            (spec(Default, 0, 0), 3, 2, 1, 1, (1, 0)), // single node: n shrinks
            (spec(Default, 0, 0), 3, 3, 2, 2, (2, 0)),
            (spec(One, 0, 0), 3, 2, 3, 3, (1, 0)),
            (spec(Quorum, 0, 0), 5, 3, 5, 5, (3, 0)),
            (spec(All, 0, 0), 3, 2, 3, 3, (3, 0)),
            (spec(All, 0, 0), 3, 2, 1, 1, (1, 0)),
            (spec(LocalQuorum, 0, 0), 5, 3, 5, 2, (2, 0)),
            (spec(LocalQuorum, 0, 0), 3, 2, 3, 1, (1, 0)),
            (spec(Default, 3, 0), 3, 2, 3, 3, (3, 0)),
            (spec(One, 2, 0), 3, 2, 3, 3, (2, 0)),     // explicit count wins
            (spec(Default, 1, 2), 3, 2, 3, 3, (2, 2)), // pw raises w
        ];
        for (s, n, d, replicas, local, (total, primaries)) in ok {
            let got = needed("write", s, n, d, replicas, local).unwrap();
            assert_eq!((got.total, got.primaries), (total, primaries), "{s:?}");
            assert_eq!(got.local_only, s.consistency == LocalQuorum && s.count == 0);
        }
    }

    #[test]
    fn impossible_requests_say_why() {
        let e = needed("read", spec(Consistency::Default, 4, 0), 3, 2, 3, 3).unwrap_err().to_string();
        assert!(e.contains("r=4 exceeds the bucket's n=3"), "{e}");
        let e = needed("write", spec(Consistency::Default, 3, 0), 3, 2, 1, 1).unwrap_err();
        assert!(matches!(e, Error::Unavailable { needed: 3, total: 1, .. }), "{e}");
        let e = needed("write", spec(Consistency::Default, 0, 4), 3, 2, 3, 3).unwrap_err().to_string();
        assert!(e.contains("pw=4"), "{e}");
        let e = needed("write", spec(Consistency::LocalQuorum, 0, 0), 3, 2, 3, 0).unwrap_err().to_string();
        assert!(e.contains("no replica of this key is in the client's zone"), "{e}");
    }
}

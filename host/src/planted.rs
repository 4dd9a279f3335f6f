//! Deliberate bugs, compiled in only with the `planted-bugs` feature, so
//! the deterministic simulation (`sim/`) can show it catches each kind of
//! mistake a replication bug makes. Each is off until a test plants it on
//! its own thread.

/// A bug the simulation must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Merging a replica's copy into the local one drops a sibling.
    MergeDropsSibling,
    /// The coordinator counts its own replica's acknowledgement twice.
    AckCountedTwice,
    /// Hinted handoff deletes a hint before the replica has it.
    HintDeletedBeforeDelivery,
}

impl Bug {
    /// Every planted bug.
    pub const ALL: [Bug; 3] = [Bug::MergeDropsSibling, Bug::AckCountedTwice, Bug::HintDeletedBeforeDelivery];
}

#[cfg(feature = "planted-bugs")]
thread_local! {
    static PLANTED: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Plants `bug` on this thread (`None` removes it).
#[cfg(feature = "planted-bugs")]
pub fn plant(bug: Option<Bug>) {
    PLANTED.with(|p| p.set(bug));
}

/// Whether `bug` is planted on this thread.
#[inline]
pub fn planted(bug: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        PLANTED.with(|p| p.get()) == Some(bug)
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}

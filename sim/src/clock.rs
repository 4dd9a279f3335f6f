//! Clock skew: each node reads the wall clock off by its own amount.
//!
//! All hosts run on one thread, so the simulated wall clock has to know
//! which host is asking. turmoil runs each host inside a tracing span named
//! `node` that carries the host's name; [`Tracker`] notes the running host
//! when that span is entered, and [`wall_clock`] adds that host's skew.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::subscriber::Subscriber;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

thread_local! {
    static RUNNING: RefCell<Option<String>> = const { RefCell::new(None) };
    static SKEW_MS: RefCell<BTreeMap<String, i64>> = const { RefCell::new(BTreeMap::new()) };
}

/// Sets `node`'s skew in milliseconds (negative: behind); 0 removes it.
pub fn set_skew(node: &str, ms: i64) {
    SKEW_MS.with(|s| {
        let mut s = s.borrow_mut();
        if ms == 0 {
            s.remove(node);
        } else {
            s.insert(node.to_owned(), ms);
        }
    });
}

/// Removes every skew (at the end of a run).
pub fn clear() {
    SKEW_MS.with(|s| s.borrow_mut().clear());
    RUNNING.with(|r| *r.borrow_mut() = None);
}

/// The wall clock as the running host reads it: the simulation's, plus
/// that host's skew. For `concord::env::set_thread_clock`.
pub fn wall_clock() -> Option<Duration> {
    let base = turmoil::since_epoch()?;
    let skew = RUNNING.with(|r| r.borrow().as_ref().and_then(|n| SKEW_MS.with(|s| s.borrow().get(n).copied())));
    Some(match skew {
        Some(ms) if ms >= 0 => base + Duration::from_millis(ms as u64),
        Some(ms) => base.saturating_sub(Duration::from_millis(ms.unsigned_abs())),
        None => base,
    })
}

/// The host turmoil is running, if any (for log lines).
pub fn running() -> Option<String> {
    RUNNING.with(|r| r.borrow().clone())
}

/// Notes which host turmoil is running (see the module docs).
pub struct Tracker;

struct HostName(String);

struct NameField(Option<String>);

impl Visit for NameField {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "name" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "name" && self.0.is_none() {
            self.0 = Some(format!("{value:?}").trim_matches('"').to_owned());
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Tracker {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "node" {
            return;
        }
        let mut name = NameField(None);
        attrs.record(&mut name);
        if let (Some(name), Some(span)) = (name.0, ctx.span(id)) {
            span.extensions_mut().insert(HostName(name));
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(host) = span.extensions().get::<HostName>()
        {
            RUNNING.with(|r| *r.borrow_mut() = Some(host.0.clone()));
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && span.extensions().get::<HostName>().is_some()
        {
            RUNNING.with(|r| *r.borrow_mut() = None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn each_host_reads_its_own_skew() {
        let _tracing = tracing::subscriber::set_default(
            tracing_subscriber::registry()
                .with(Tracker.with_filter(tracing_subscriber::filter::filter_fn(|m| m.name() == "node"))),
        );
        set_skew("ahead", 5_000);
        set_skew("behind", -3_000);
        let seen: Rc<RefCell<BTreeMap<String, Duration>>> = Rc::default();
        let mut sim = turmoil::Builder::new().build();
        for name in ["ahead", "behind", "plain"] {
            let seen = Rc::clone(&seen);
            sim.client(name, async move {
                let base = turmoil::since_epoch().expect("inside the simulation");
                let read = wall_clock().expect("inside the simulation");
                let offset = read.abs_diff(base);
                seen.borrow_mut().insert(name.to_owned(), offset);
                Ok(())
            });
        }
        sim.run().unwrap();
        clear();
        let seen = seen.borrow();
        assert_eq!(seen["ahead"], Duration::from_secs(5));
        assert_eq!(seen["behind"], Duration::from_secs(3));
        assert_eq!(seen["plain"], Duration::ZERO);
    }
}

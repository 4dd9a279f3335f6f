//! When an acknowledged write is on disk.
//!
//! * [`DurabilityMode::Fsync`]: a write is acknowledged only after a flush
//!   that started after it finished. Writers that arrive while a flush runs
//!   wait for the next one together (*group commit*), so one `fsync` serves
//!   many writes: throughput grows with concurrency instead of being capped
//!   at one write per disk flush. Risk: none beyond the disk's own honesty
//!   about `fsync`.
//! * [`DurabilityMode::Periodic`] (the default): writes are acknowledged once
//!   they are in the engine's memory, and a background worker flushes every
//!   `interval`. Risk: a crash of the process or the machine loses up to one
//!   interval of acknowledged writes *on this replica*. With N > 1 replicas a
//!   write acknowledged by W of them is lost only if all of those crash within
//!   the same interval.
//!
//! Both workers are plain threads: a flush is a blocking syscall and must
//! not occupy a tokio worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::Store;
use crate::{Error, Result};

/// How writes are made durable. See the module docs for what each risks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// Acknowledge after the write is flushed to disk (group commit).
    Fsync,
    /// Acknowledge from memory; flush in the background every interval.
    #[default]
    Periodic,
}

impl std::str::FromStr for DurabilityMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fsync" => Ok(Self::Fsync),
            "periodic" => Ok(Self::Periodic),
            other => Err(format!("unknown durability mode {other:?}; use fsync or periodic")),
        }
    }
}

type Waiter = oneshot::Sender<Result<(), String>>;

/// The running durability worker of one store.
pub struct Durability {
    mode: DurabilityMode,
    /// Fsync mode: writers enqueue here and wait for the flush that covers
    /// them. Periodic mode: never sent on; dropping it stops the flusher.
    tx: Option<mpsc::Sender<Waiter>>,
    /// The worker thread, joined on drop so its final flush has finished
    /// before the store can be closed.
    thread: Option<std::thread::JoinHandle<()>>,
    /// Microseconds every flush waits before it starts: 0 except in tests
    /// that stand in for a stalled disk ([`Durability::delay_flushes`]).
    delay_us: Arc<AtomicU64>,
    /// No worker thread ([`Durability::inline`]): `fsync` mode flushes in
    /// [`Durability::wait`] itself; `periodic` mode flushes from a task.
    inline: Option<Inline>,
}

/// What an inline [`Durability`] flushes, and its periodic flush task.
struct Inline {
    store: Arc<dyn Store>,
    flusher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Durability {
    fn drop(&mut self) {
        if let Some(flusher) = self.inline.as_mut().and_then(|i| i.flusher.take()) {
            flusher.abort();
        }
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Durability {
    /// Starts the worker for `mode`. `interval` is the flush period in
    /// `periodic` mode; `commit_delay` is the longest a flush waits for more
    /// writers to join it in `fsync` mode.
    pub fn start(store: Arc<dyn Store>, mode: DurabilityMode, interval: Duration, commit_delay: Duration) -> Self {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let delay_us = Arc::new(AtomicU64::new(0));
        let delay = Arc::clone(&delay_us);
        let name = match mode {
            DurabilityMode::Fsync => "concord-group-commit",
            DurabilityMode::Periodic => "concord-flusher",
        };
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || match mode {
                DurabilityMode::Fsync => group_commit(&*store, rx, commit_delay, &delay),
                DurabilityMode::Periodic => periodic(&*store, rx, interval, &delay),
            })
            .expect("spawning the durability thread");
        Self { mode, tx: Some(tx), thread: Some(thread), delay_us, inline: None }
    }

    /// No worker thread, for a node that runs on one thread (the
    /// simulation): in `fsync` mode [`Durability::wait`] flushes by itself,
    /// and in `periodic` mode a task on the caller's runtime flushes every
    /// `interval` (stopped when this is dropped, without a last flush: a
    /// node that is dropped has crashed).
    pub fn inline(store: Arc<dyn Store>, mode: DurabilityMode, interval: Duration) -> Self {
        let flusher = (mode == DurabilityMode::Periodic).then(|| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(interval).await;
                    if let Err(e) = store.flush() {
                        tracing::error!(error = %e, "periodic flush failed");
                    }
                }
            })
        });
        Self { mode, tx: None, thread: None, delay_us: Arc::default(), inline: Some(Inline { store, flusher }) }
    }

    /// Makes every later flush wait `delay` before it starts, as a stalled
    /// disk would. For tests of what the request paths do meanwhile;
    /// `Duration::ZERO` restores normal flushing.
    pub fn delay_flushes(&self, delay: Duration) {
        self.delay_us.store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// The configured mode.
    pub fn mode(&self) -> DurabilityMode {
        self.mode
    }

    /// Returns once every write that finished before the call is as durable
    /// as the mode promises: on disk for `fsync`, immediately for `periodic`.
    pub async fn wait(&self) -> Result<()> {
        if self.mode == DurabilityMode::Periodic {
            return Ok(());
        }
        if let Some(inline) = &self.inline {
            return inline.store.flush().map_err(|e| Error::Internal(format!("flushing to disk failed: {e}")));
        }
        let (done, wait) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or_else(|| Error::internal("the group-commit worker has stopped"))?;
        tx.send(done).map_err(|_| Error::internal("the group-commit worker has stopped"))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Internal(format!("flushing to disk failed: {e}"))),
            Err(_) => Err(Error::internal("the group-commit worker has stopped")),
        }
    }
}

/// Flushes once per batch of waiters: everyone queued when a flush starts is
/// covered by it, and everyone arriving during it waits for the next.
///
/// Under concurrent load a flush that starts the moment the first waiter
/// arrives covers only the few writes that queued meanwhile, and each flush
/// costs CPU the writers need. So the worker keeps a moving average of
/// recent batch sizes and, before flushing, waits up to `max_delay` for that
/// many waiters to gather. A lone writer (average 1) never waits; many
/// concurrent writers share one flush.
fn group_commit(store: &dyn Store, rx: mpsc::Receiver<Waiter>, max_delay: Duration, stall: &AtomicU64) {
    let batches = metrics::histogram!("concord_group_commit_batch_size");
    let flushes = metrics::counter!("concord_group_commit_flushes_total");
    let mut expected = 1.0f64;
    while let Ok(first) = rx.recv() {
        let mut waiters = vec![first];
        waiters.extend(rx.try_iter());
        let deadline = std::time::Instant::now() + max_delay;
        while (waiters.len() as f64) < expected.round() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(w) => {
                    waiters.push(w);
                    waiters.extend(rx.try_iter());
                }
                Err(_) => break,
            }
        }
        expected = 0.8 * expected + 0.2 * waiters.len() as f64;
        batches.record(waiters.len() as f64);
        flushes.increment(1);
        stall_if_asked(stall);
        let result = store.flush().map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, "group commit flush failed");
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
    let _ = store.flush();
}

/// Flushes every `interval` until the [`Durability`] is dropped, then once
/// more so a clean shutdown loses nothing.
fn periodic(store: &dyn Store, rx: mpsc::Receiver<Waiter>, interval: Duration, stall: &AtomicU64) {
    // Wakes on each timeout (or stray message) to flush; stops once the
    // sender is dropped.
    while let Err(mpsc::RecvTimeoutError::Timeout) | Ok(_) = rx.recv_timeout(interval) {
        stall_if_asked(stall);
        if let Err(e) = store.flush() {
            tracing::error!(error = %e, "periodic flush failed");
        }
    }
    if let Err(e) = store.flush() {
        tracing::error!(error = %e, "final flush failed");
    }
}

/// Sleeps for the test-only flush delay, if one is set.
fn stall_if_asked(stall: &AtomicU64) {
    let us = stall.load(Ordering::Relaxed);
    if us > 0 {
        std::thread::sleep(Duration::from_micros(us));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::storage::{Entries, MemStore, Space, StorageError};

    /// Counts flushes and makes each one slow, so writers pile up.
    struct SlowFlush {
        inner: MemStore,
        flushes: AtomicUsize,
    }

    impl Store for SlowFlush {
        fn get(&self, s: Space, k: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
            self.inner.get(s, k)
        }
        fn insert(&self, s: Space, k: &[u8], v: &[u8]) -> Result<(), StorageError> {
            self.inner.insert(s, k, v)
        }
        fn remove(&self, s: Space, k: &[u8]) -> Result<(), StorageError> {
            self.inner.remove(s, k)
        }
        fn apply(&self, s: Space, b: &[crate::storage::BatchOp<'_>]) -> Result<(), StorageError> {
            self.inner.apply(s, b)
        }
        fn scan(&self, s: Space, a: Option<&[u8]>, l: usize) -> Result<Entries, StorageError> {
            self.inner.scan(s, a, l)
        }
        fn clear(&self, s: Space) -> Result<(), StorageError> {
            self.inner.clear(s)
        }
        fn flush(&self) -> Result<(), StorageError> {
            std::thread::sleep(Duration::from_millis(5));
            self.flushes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn size_on_disk(&self) -> Result<u64, StorageError> {
            Ok(0)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_fsync_writers_share_flushes() {
        let store = Arc::new(SlowFlush { inner: MemStore::new(), flushes: AtomicUsize::new(0) });
        let d = Arc::new(Durability::start(
            store.clone(),
            DurabilityMode::Fsync,
            Duration::from_millis(10),
            Duration::from_millis(1),
        ));
        let waits: Vec<_> = (0..64)
            .map(|_| {
                let d = Arc::clone(&d);
                tokio::spawn(async move { d.wait().await })
            })
            .collect();
        for w in waits {
            w.await.unwrap().unwrap();
        }
        let flushes = store.flushes.load(Ordering::SeqCst);
        assert!(flushes >= 1, "every fsync wait needs a flush");
        assert!(flushes < 64, "64 concurrent writers took {flushes} flushes: no group commit");
    }

    #[tokio::test]
    async fn an_inline_durability_flushes_on_the_callers_runtime() {
        // fsync: durable once `wait` returns.
        let store = MemStore::volatile();
        let fsync = Durability::inline(Arc::new(store.clone()), DurabilityMode::Fsync, Duration::from_secs(3600));
        store.insert(Space::Meta, b"a", b"1").unwrap();
        fsync.wait().await.unwrap();
        assert_eq!(store.crash().get(Space::Meta, b"a").unwrap(), Some(b"1".to_vec()));
        // periodic: `wait` returns at once, before any flush...
        let store = MemStore::volatile();
        let slow = Durability::inline(Arc::new(store.clone()), DurabilityMode::Periodic, Duration::from_secs(3600));
        store.insert(Space::Meta, b"b", b"2").unwrap();
        slow.wait().await.unwrap();
        assert_eq!(store.crash().get(Space::Meta, b"b").unwrap(), None, "a crash loses what was not flushed");
        // ...and the task flushes every interval.
        let store = MemStore::volatile();
        let _fast = Durability::inline(Arc::new(store.clone()), DurabilityMode::Periodic, Duration::from_millis(1));
        store.insert(Space::Meta, b"c", b"3").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while store.crash().get(Space::Meta, b"c").unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "the flush task never flushed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn periodic_mode_acknowledges_at_once_and_flushes_in_the_background() {
        let store = Arc::new(SlowFlush { inner: MemStore::new(), flushes: AtomicUsize::new(0) });
        let d = Durability::start(store.clone(), DurabilityMode::Periodic, Duration::from_millis(1), Duration::ZERO);
        d.wait().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.flushes.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "the periodic flusher never flushed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

//! Storage work off the async workers.
//!
//! An engine call can block: a read that misses the page cache waits for
//! the disk, and a write can wait for the engine's locks. On a tokio worker
//! that stalls every request the worker serves (with data larger than the
//! cache, one slow read held up the whole node). So the request paths (the
//! coordinator's local reads and writes, replica batches from peers, read
//! repair and hints kept by the coordinator) hand their storage work to a
//! [`Pool`] of dedicated threads and await the answer.
//!
//! The queue is bounded: past [`Pool::QUEUE`] waiting jobs, callers wait
//! (asynchronously) for room instead of adding to a queue the threads
//! cannot work off. A queued job whose caller has given up (its request
//! timed out) is skipped, so an overloaded node does not spend its storage
//! threads on answers nobody waits for.
//!
//! The hand-off has a price: on a machine whose cores are all busy, it
//! costs a thread wake-up each way (docs/BENCHMARKS.md measures it). A node
//! whose data fits its cache can run storage calls inline on the request
//! threads instead ([`Pool::inline`], `storage_threads = 0`).
//!
//! Background workers (hint delivery, anti-entropy, transfers) run on the
//! node's low-priority background thread, which serves no requests, and
//! call the store from there directly.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{Semaphore, oneshot};

use crate::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// Threads that run storage calls for async callers.
pub struct Pool {
    /// `None` for an inline pool, or after [`Pool::close`]. Written only
    /// by `close`: every call takes the shared lock.
    jobs: RwLock<Option<crossbeam_channel::Sender<Job>>>,
    /// The storage threads, joined by [`Pool::close`].
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Calls run on the caller's thread ([`Pool::inline`]).
    inline: bool,
    /// One permit per job that may be queued or running.
    room: Arc<Semaphore>,
}

impl Pool {
    /// Most jobs queued or running at once.
    pub const QUEUE: usize = 4096;

    /// Starts `threads` storage threads (at least one). They stop when the
    /// pool is dropped and the jobs queued before have run.
    pub fn start(threads: usize) -> Result<Arc<Self>> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            let handle = std::thread::Builder::new()
                .name(format!("concord-storage-{i}"))
                .spawn(move || {
                    for job in queue {
                        // A job that panics fails its caller (its answer is
                        // dropped), not the thread.
                        if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
                            tracing::error!("a storage call panicked; its request failed");
                        }
                    }
                })
                .map_err(|e| Error::Internal(format!("cannot start a storage thread: {e}")))?;
            handles.push(handle);
        }
        Ok(Arc::new(Self {
            jobs: RwLock::new(Some(jobs)),
            threads: Mutex::new(handles),
            inline: false,
            room: Arc::new(Semaphore::new(Self::QUEUE)),
        }))
    }

    /// A pool without threads: [`Pool::run`] calls its function at once on
    /// the caller's thread. For data that fits the engine's cache, where a
    /// call rarely waits for the disk and the hand-off would cost more than
    /// it saves.
    pub fn inline() -> Arc<Self> {
        Arc::new(Self {
            jobs: RwLock::new(None),
            threads: Mutex::new(Vec::new()),
            inline: true,
            room: Arc::new(Semaphore::new(Self::QUEUE)),
        })
    }

    /// Stops taking jobs, lets the storage threads finish the queued ones
    /// and waits for them to exit: after this no storage call of a request
    /// runs any more. Later calls fail. For a node's shutdown, before its
    /// final flush.
    pub async fn close(&self) {
        drop(self.jobs.write().unwrap_or_else(|p| p.into_inner()).take());
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        if !threads.is_empty() {
            let _ = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join()))).await;
        }
    }

    /// The default number of threads: one per core, and at least four, so
    /// that reads waiting for the disk do not leave the cores idle.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(4, |n| n.get()).clamp(4, 256)
    }

    /// Runs `f` on a storage thread and returns its result. Waits for room
    /// when the queue is full. If the caller stops waiting before `f`
    /// starts, `f` does not run; once it runs, it runs to the end (a write
    /// is never torn) and its result is dropped.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        if self.inline {
            return f();
        }
        let permit = Arc::clone(&self.room)
            .acquire_owned()
            .await
            .map_err(|_| Error::internal("the storage threads have stopped"))?;
        let (done, answer) = oneshot::channel();
        let job: Job = Box::new(move || {
            if done.is_closed() {
                return;
            }
            let result = f();
            drop(permit);
            let _ = done.send(result);
        });
        let sent = match &*self.jobs.read().unwrap_or_else(|p| p.into_inner()) {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if !sent {
            return Err(Error::internal("the storage threads have stopped"));
        }
        answer.await.map_err(|_| Error::internal("a storage call panicked; see the node's log"))?
    }

    /// Whether [`Pool::run`] calls its function on the caller's thread.
    pub fn is_inline(&self) -> bool {
        self.inline
    }

    /// Jobs queued or running now.
    pub fn busy(&self) -> usize {
        Self::QUEUE - self.room.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Blocker = tokio::task::JoinHandle<Result<()>>;

    /// A pool of one thread, held by a job until `release` is sent (or
    /// dropped); the job's task is returned to be awaited.
    async fn held_pool() -> (Arc<Pool>, std::sync::mpsc::Sender<()>, Blocker) {
        let pool = Pool::start(1).unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let blocker = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                pool.run(move || {
                    held.recv().ok();
                    Ok(())
                })
                .await
            })
        };
        while pool.busy() < 1 {
            tokio::task::yield_now().await;
        }
        (pool, release, blocker)
    }

    #[tokio::test]
    async fn runs_jobs_off_the_caller_and_answers_each() {
        let pool = Pool::start(2).unwrap();
        let caller = std::thread::current().id();
        let on = pool.run(|| Ok(std::thread::current().id())).await.unwrap();
        assert_ne!(on, caller, "the job ran on a storage thread");
        let answers = futures::future::join_all((0..100u32).map(|i| pool.run(move || Ok(i * 2)))).await;
        assert_eq!(
            answers.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            (0..100).map(|i| i * 2).collect::<Vec<_>>()
        );
        assert_eq!(pool.busy(), 0);
    }

    #[tokio::test]
    async fn a_job_whose_caller_gave_up_does_not_run_and_close_waits_for_the_rest() {
        let (pool, release, blocker) = held_pool().await;
        let ran = Arc::new(AtomicUsize::new(0));
        let job = |ran: &Arc<AtomicUsize>| {
            let ran = Arc::clone(ran);
            move || {
                ran.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        };
        // Queued behind the blocker, then given up on.
        let abandoned = {
            let (pool, job) = (Arc::clone(&pool), job(&ran));
            tokio::spawn(async move { pool.run(job).await })
        };
        while pool.busy() < 2 {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled());
        let kept = {
            let (pool, job) = (Arc::clone(&pool), job(&ran));
            tokio::spawn(async move { pool.run(job).await })
        };
        while pool.busy() < 3 {
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        kept.await.unwrap().unwrap();
        blocker.await.unwrap().unwrap();
        assert_eq!(ran.load(Ordering::Relaxed), 1, "only the job someone waited for ran");
        pool.close().await;
        assert!(pool.run(|| Ok(())).await.is_err(), "a closed pool takes no more jobs");
    }

    #[tokio::test]
    async fn an_inline_pool_runs_jobs_on_the_caller() {
        let pool = Pool::inline();
        let caller = std::thread::current().id();
        assert_eq!(pool.run(|| Ok(std::thread::current().id())).await.unwrap(), caller);
    }

    #[tokio::test]
    async fn a_panicking_job_fails_its_caller_and_the_thread_goes_on() {
        let pool = Pool::start(1).unwrap();
        let e = pool.run(|| -> Result<()> { panic!("boom") }).await.unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
        assert_eq!(pool.run(|| Ok(7)).await.unwrap(), 7, "the one thread still serves");
    }

    #[tokio::test]
    async fn a_full_queue_makes_callers_wait_not_fail() {
        // The one thread is held until every job is queued.
        let (pool, release, blocker) = held_pool().await;
        let ran = Arc::new(AtomicUsize::new(0));
        let count = Pool::QUEUE + 10;
        let jobs = {
            let (pool, ran) = (Arc::clone(&pool), Arc::clone(&ran));
            tokio::spawn(async move {
                let jobs = (0..count).map(|_| {
                    let ran = Arc::clone(&ran);
                    pool.run(move || {
                        ran.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    })
                });
                futures::future::join_all(jobs).await
            })
        };
        // The queue fills up; the last jobs wait for room.
        while pool.busy() < Pool::QUEUE {
            tokio::task::yield_now().await;
        }
        assert_eq!(ran.load(Ordering::Relaxed), 0);
        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        assert!(jobs.await.unwrap().iter().all(Result::is_ok));
        assert_eq!(ran.load(Ordering::Relaxed), count, "every job ran once");
    }
}

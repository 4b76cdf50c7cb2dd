//! The work budget for key derivations: a pool of its own threads (never the runtime's blocking
//! pool that serves reads), at most `jobs` derivations at once, a bounded queue for requests.
//!
//! A key derivation (Argon2 at 1 GiB, PBKDF2 at millions of iterations) takes seconds and
//! cannot be interrupted; on the threads that serve reads, a few of them would stall every
//! other view. Here they run on `jobs` threads of their own, and work waits in three classes,
//! taken in this order:
//! - [`Class::Request`]: a client is waiting for it (an open of a view that is not ready).
//!   Bounded: when `max_queued` request jobs already wait, [`Pool::submit`] refuses and the
//!   face answers "busy, retry later" (HTTP 503 with `Retry-After`).
//! - [`Class::Essential`]: background preparation a view will need (encrypt headers, the
//!   unlock of an image's own Secret).
//! - [`Class::Speculative`]: background tries of every other (LUKS image, Secret) pair. With
//!   two workers or more, one worker is kept free of them, so that they never hold up the
//!   other classes entirely.
//!
//! Threads are never joined: a stopping process does not wait for a derivation (Argon2 has no
//! way to stop midway); its result is dropped with the process.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Which queue a job waits in (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Request,
    Essential,
    Speculative,
}

type Task = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queues {
    request: VecDeque<Task>,
    essential: VecDeque<Task>,
    speculative: VecDeque<Task>,
    running: usize,
    running_speculative: usize,
}

struct Inner {
    queues: Mutex<Queues>,
    wake: Condvar,
    jobs: usize,
    max_queued: usize,
    done: AtomicU64,
    refused: AtomicU64,
}

/// The request queue is full: the job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{queued} key derivations already wait (--max-kdf-queue); try again later")]
pub struct Busy {
    pub queued: usize,
}

/// What the pool is doing, for `/readyz` and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub jobs: usize,
    pub running: usize,
    pub queued_request: usize,
    pub queued_background: usize,
    pub done: u64,
    pub refused: u64,
}

/// Cheap to clone; every clone submits to the same threads.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// Starts `jobs` worker threads (at least one); at most `max_queued` request jobs wait.
    pub fn new(jobs: usize, max_queued: usize) -> std::io::Result<Self> {
        let jobs = jobs.max(1);
        let inner = Arc::new(Inner {
            queues: Mutex::new(Queues::default()),
            wake: Condvar::new(),
            jobs,
            max_queued,
            done: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        for i in 0..jobs {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name(format!("bifs-kdf-{i}"))
                .spawn(move || worker(&inner))?;
        }
        Ok(Self { inner })
    }

    /// Queues `task` in `class`. Only [`Class::Request`] is bounded.
    pub fn submit(&self, class: Class, task: impl FnOnce() + Send + 'static) -> Result<(), Busy> {
        let mut q = self.lock();
        let queue = match class {
            Class::Request => {
                if q.request.len() >= self.inner.max_queued {
                    self.inner.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(Busy {
                        queued: q.request.len(),
                    });
                }
                &mut q.request
            }
            Class::Essential => &mut q.essential,
            Class::Speculative => &mut q.speculative,
        };
        queue.push_back(Box::new(task));
        drop(q);
        self.inner.wake.notify_one();
        Ok(())
    }

    pub fn stats(&self) -> PoolStats {
        let q = self.lock();
        PoolStats {
            jobs: self.inner.jobs,
            running: q.running,
            queued_request: q.request.len(),
            queued_background: q.essential.len() + q.speculative.len(),
            done: self.inner.done.load(Ordering::Relaxed),
            refused: self.inner.refused.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.inner.queues.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The next task a free worker may take, if any (see the module doc for the order).
fn next(q: &mut Queues, jobs: usize) -> Option<(Task, bool)> {
    if let Some(t) = q.request.pop_front() {
        return Some((t, false));
    }
    if let Some(t) = q.essential.pop_front() {
        return Some((t, false));
    }
    let spare = if jobs >= 2 { jobs - 1 } else { jobs };
    if q.running_speculative < spare {
        if let Some(t) = q.speculative.pop_front() {
            return Some((t, true));
        }
    }
    None
}

fn worker(inner: &Inner) {
    loop {
        let (task, speculative) = {
            let mut q = inner.queues.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(found) = next(&mut q, inner.jobs) {
                    q.running += 1;
                    if found.1 {
                        q.running_speculative += 1;
                    }
                    break found;
                }
                q = inner.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        // A task that panics must not take the worker with it (nor leave `running` counted).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
        inner.done.fetch_add(1, Ordering::Relaxed);
        let mut q = inner.queues.lock().unwrap_or_else(|e| e.into_inner());
        q.running -= 1;
        if speculative {
            q.running_speculative -= 1;
        }
        drop(q);
        // A finished speculative task may let another one start.
        inner.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn requests_go_first_and_the_request_queue_is_bounded() {
        let pool = Pool::new(1, 2).unwrap();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let (order_tx, order_rx) = mpsc::channel::<&'static str>();
        // Occupy the only worker until the gate opens.
        pool.submit(Class::Essential, move || {
            let _ = gate_rx.recv();
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        for (class, name) in [
            (Class::Speculative, "speculative"),
            (Class::Essential, "essential"),
            (Class::Request, "request"),
        ] {
            let tx = order_tx.clone();
            pool.submit(class, move || {
                let _ = tx.send(name);
            })
            .unwrap();
        }
        let tx = order_tx.clone();
        pool.submit(Class::Request, move || {
            let _ = tx.send("request 2");
        })
        .unwrap();
        assert_eq!(
            pool.submit(Class::Request, || {}),
            Err(Busy { queued: 2 }),
            "a third request job waits in a queue of two"
        );
        assert_eq!(pool.stats().queued_request, 2);
        gate_tx.send(()).unwrap();
        let got: Vec<_> = (0..4)
            .map(|_| order_rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        assert_eq!(got, ["request", "request 2", "essential", "speculative"]);
    }

    #[test]
    fn speculative_work_leaves_one_worker_free() {
        let pool = Pool::new(2, 4).unwrap();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let gate_rx = Arc::new(Mutex::new(gate_rx));
        for _ in 0..2 {
            let g = gate_rx.clone();
            pool.submit(Class::Speculative, move || {
                let _ = g.lock().unwrap().recv();
            })
            .unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(pool.stats().running, 1, "one speculative job runs, not two");
        let (tx, rx) = mpsc::channel();
        pool.submit(Class::Request, move || {
            let _ = tx.send(());
        })
        .unwrap();
        rx.recv_timeout(Duration::from_secs(5))
            .expect("a request runs beside the speculative job");
        gate_tx.send(()).unwrap();
        gate_tx.send(()).unwrap();
    }

    #[test]
    fn a_panicking_task_keeps_the_worker() {
        let pool = Pool::new(1, 2).unwrap();
        pool.submit(Class::Request, || panic!("boom")).unwrap();
        let (tx, rx) = mpsc::channel();
        pool.submit(Class::Request, move || {
            let _ = tx.send(());
        })
        .unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }
}

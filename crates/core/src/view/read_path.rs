//! Which of two ways a sector transform reads whole sectors costs less on this host, for this
//! source: ciphering straight from the source's page cache, mapped
//! ([`crate::io::ReadAt::with_bytes_at`]), or `pread` into the caller's buffer and ciphering
//! there in place.
//!
//! Neither wins everywhere. A mapping saves the copy but pays for its page-table entries,
//! per page cache folio: where the file system caches large folios (ext4, XFS) that came to
//! 0.13 us per 4 KiB page here, where it caches single pages (tmpfs) 0.35 us on a quiet host
//! and 1.1 us on a busy one, more than the copy it saves (0.8 us) (docs/performance.md, "A host that changes
//! under the measurement"). So each transform times both ways on its own reads, in the reading
//! thread's CPU time (time the host gave to other guests is not counted), and uses the
//! cheaper: the first [`PROBES`] reads of every [`EPOCH`] alternate between the two.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Reads per round of measurement.
const EPOCH: u64 = 256;
/// Reads at the start of each round that alternate between the two ways, timed.
const PROBES: u64 = 8;
/// Reads shorter than this are not timed: no source maps them, and a short `pread` costs
/// more per byte than a long one.
const MIN_TIMED: usize = crate::io::MIN_MAPPED_READ;

/// One way to read whole sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Cipher from the source's bytes where they lie (a mapping of its page cache).
    Mapped,
    /// `pread` into the buffer, cipher in place.
    Copied,
}

impl Way {
    fn index(self) -> usize {
        match self {
            Way::Mapped => 0,
            Way::Copied => 1,
        }
    }
}

/// The choice between the [`Way`]s, and what this round measured of each.
#[derive(Debug)]
pub struct ReadPath {
    reads: AtomicU64,
    /// Per way: CPU nanoseconds and bytes of this round's timed reads.
    ns: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
    mapped: AtomicBool,
}

impl Default for ReadPath {
    fn default() -> Self {
        Self::new()
    }
}

/// A read chosen by [`ReadPath::begin`]: finish it with [`ReadPath::end`].
#[derive(Debug, Clone, Copy)]
pub struct Chosen {
    pub way: Way,
    /// The thread's CPU clock at the start, for a timed read.
    started: Option<u64>,
}

impl ReadPath {
    pub fn new() -> Self {
        Self {
            reads: AtomicU64::new(0),
            ns: [AtomicU64::new(0), AtomicU64::new(0)],
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            // Until measured: the mapping, which saves a copy where it can be made at all.
            mapped: AtomicBool::new(true),
        }
    }

    /// The way to read the next `len` bytes.
    pub fn begin(&self, len: usize) -> Chosen {
        if len < MIN_TIMED {
            return Chosen {
                way: self.current(),
                started: None,
            };
        }
        let n = self.reads.fetch_add(1, Ordering::Relaxed) % EPOCH;
        if n == 0 {
            for a in self.ns.iter().chain(&self.bytes) {
                a.store(0, Ordering::Relaxed);
            }
        }
        if n < PROBES {
            let way = if n.is_multiple_of(2) {
                Way::Mapped
            } else {
                Way::Copied
            };
            return Chosen {
                way,
                started: thread_cpu_ns(),
            };
        }
        if n == PROBES {
            self.decide();
        }
        Chosen {
            way: self.current(),
            started: None,
        }
    }

    /// Records a read begun with `chosen`, done the way `done` (a mapped read may have been
    /// read with `pread` after all, where the source could not map it), of `len` bytes.
    pub fn end(&self, chosen: Chosen, done: Way, len: usize) {
        let (Some(start), Some(now)) = (chosen.started, thread_cpu_ns()) else {
            return;
        };
        self.ns[done.index()].fetch_add(now.saturating_sub(start), Ordering::Relaxed);
        self.bytes[done.index()].fetch_add(len as u64, Ordering::Relaxed);
    }

    fn current(&self) -> Way {
        if self.mapped.load(Ordering::Relaxed) {
            Way::Mapped
        } else {
            Way::Copied
        }
    }

    /// Picks the way that cost less CPU per byte this round; with no measurement of one of
    /// them (a source that could not map a single probe), the choice stays.
    fn decide(&self) {
        let get = |w: Way| {
            (
                u128::from(self.ns[w.index()].load(Ordering::Relaxed)),
                u128::from(self.bytes[w.index()].load(Ordering::Relaxed)),
            )
        };
        let ((mns, mb), (cns, cb)) = (get(Way::Mapped), get(Way::Copied));
        if mb == 0 || cb == 0 {
            return;
        }
        // mns / mb <= cns / cb, without division.
        self.mapped.store(mns * cb <= cns * mb, Ordering::Relaxed);
    }
}

/// This thread's CPU time in nanoseconds (user and system; not time spent waiting for a CPU).
fn thread_cpu_ns() -> Option<u64> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    let secs = u64::try_from(t.tv_sec).ok()?;
    let nanos = u64::try_from(t.tv_nsec).ok()?;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one round in which each way costs `ns_per_byte` (mapped, copied), and returns the
    /// way chosen after it.
    fn round(p: &ReadPath, mapped_cost: u64, copied_cost: u64) -> Way {
        let len = 1 << 20;
        for _ in 0..PROBES {
            let c = p.begin(len);
            assert!(c.started.is_some(), "a probe is timed");
            let cost = if c.way == Way::Mapped {
                mapped_cost
            } else {
                copied_cost
            };
            // What `end` adds, with a made-up cost instead of the clock's.
            p.ns[c.way.index()].fetch_add(cost * len as u64, Ordering::Relaxed);
            p.bytes[c.way.index()].fetch_add(len as u64, Ordering::Relaxed);
        }
        let c = p.begin(len);
        assert!(c.started.is_none(), "past the probes nothing is timed");
        for _ in PROBES + 1..EPOCH {
            assert_eq!(p.begin(len).way, c.way, "one way for the rest of the round");
        }
        c.way
    }

    #[test]
    fn the_cheaper_way_wins_each_round() {
        let p = ReadPath::new();
        assert_eq!(round(&p, 3, 2), Way::Copied);
        // The host changed: the next round measures again.
        assert_eq!(round(&p, 1, 2), Way::Mapped);
        assert_eq!(round(&p, 5, 4), Way::Copied);
    }

    #[test]
    fn probes_alternate_and_short_reads_are_not_timed() {
        let p = ReadPath::new();
        let ways: Vec<Way> = (0..4).map(|_| p.begin(1 << 20).way).collect();
        assert_eq!(ways, [Way::Mapped, Way::Copied, Way::Mapped, Way::Copied]);
        let short = p.begin(4096);
        assert!(short.started.is_none());
        assert_eq!(
            p.reads.load(Ordering::Relaxed),
            4,
            "short reads do not count"
        );
    }

    #[test]
    fn without_a_measurement_of_both_the_choice_stays() {
        let p = ReadPath::new();
        // Every probe was read with pread (the source maps nothing).
        for _ in 0..PROBES {
            let c = p.begin(1 << 20);
            p.ns[1].fetch_add(1, Ordering::Relaxed);
            p.bytes[1].fetch_add(1 << 20, Ordering::Relaxed);
            let _ = c;
        }
        assert_eq!(p.begin(1 << 20).way, Way::Mapped);
    }

    #[test]
    fn the_clock_counts_this_threads_work() {
        let a = thread_cpu_ns().expect("CLOCK_THREAD_CPUTIME_ID");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let b = thread_cpu_ns().unwrap();
        assert!(b > a, "no CPU time counted for 2M multiplications ({x})");
    }
}

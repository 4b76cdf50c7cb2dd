//! The XTS engine alone, in the units `openssl speed -evp aes-*-xts` prints, so that
//! `scripts/bench.sh` can put the two side by side.
//!
//! As `openssl speed -bytes N` does, every call processes one N-byte data unit (one sector
//! with its own tweak), on one thread, for a fixed time. A third size, `bulk`, is one call
//! over 1 MiB of 4 KiB sectors: what the copier and the FUSE reads actually ask for.
//!
//! Usage: `cargo bench -p bifs-core --bench xts -- [SECONDS] [cpu] [kernel=NAME]`; prints
//! lines `aes-128-xts <bytes|bulk> <MB/s>` (MB = 10^6 bytes, openssl's "k" is 10^3), and
//! `xts kernel: NAME` on stderr. `kernel=NAME` forces one of the kernels this CPU runs
//! (`bifs_core::xts::kernel_names`: vaes512, vaes256, avx512, avx2, portable) instead of the
//! one `Xts::new` picks; the single argument `kernels` prints those names, the picked one
//! first, and exits.
//!
//! Time is wall-clock time, as `openssl speed -elapsed` counts it; with `cpu` it is the
//! thread's CPU time, as `openssl speed` without `-elapsed` counts it (user time): on a
//! machine shared with other work that leaves out the time the benchmark waited for a core.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bifs_core::xts::{kernel_names, Xts};

/// Wall-clock or thread CPU time.
#[derive(Clone, Copy)]
enum Clock {
    Wall,
    Cpu,
}

struct Stopwatch {
    clock: Clock,
    wall: Instant,
    cpu: Duration,
}

impl Stopwatch {
    fn start(clock: Clock) -> Self {
        Self {
            clock,
            wall: Instant::now(),
            cpu: thread_cpu_time(),
        }
    }

    fn elapsed(&self) -> Duration {
        match self.clock {
            Clock::Wall => self.wall.elapsed(),
            Clock::Cpu => thread_cpu_time().saturating_sub(self.cpu),
        }
    }
}

fn thread_cpu_time() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn measure(xts: &Xts, unit: usize, sector: usize, secs: f64, clock: Clock) -> f64 {
    let mut buf = vec![0x5au8; unit];
    let mut iv = 0u64;
    let deadline = Duration::from_secs_f64(secs);
    let start = Stopwatch::start(clock);
    let mut bytes = 0u64;
    // Check the clock every few calls only: reading it costs about as much as a 512-byte
    // sector.
    while start.elapsed() < deadline {
        for _ in 0..64 {
            if xts
                .encrypt_sectors(black_box(&mut buf), sector, iv)
                .is_err()
            {
                eprintln!("bad geometry {unit}/{sector}");
                std::process::exit(2);
            }
            iv = iv.wrapping_add((unit / 512) as u64);
            bytes += unit as u64;
        }
    }
    black_box(&buf);
    bytes as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn main() {
    if std::env::var_os("XTS_ECB").is_some() {
        ecb_ceiling();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "kernels") {
        println!("{}", kernel_names().join(" "));
        return;
    }
    let kernel = args.iter().find_map(|a| a.strip_prefix("kernel="));
    // `cargo bench` passes `--bench`; the first number is the time per measurement.
    let secs = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<f64>().ok())
        .unwrap_or(2.0);
    let clock = if std::env::args().skip(1).any(|a| a == "cpu") {
        Clock::Cpu
    } else {
        Clock::Wall
    };
    let key: Vec<u8> = (0..64u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    for (name, key_len) in [("aes-128-xts", 32usize), ("aes-256-xts", 64)] {
        let xts = match kernel {
            Some(k) => Xts::with_kernel_named(&key[..key_len], k),
            None => Xts::new(&key[..key_len]),
        };
        let xts = match xts {
            Ok(xts) => xts,
            Err(e) => {
                eprintln!("cannot key {name}: {e}");
                std::process::exit(2);
            }
        };
        if key_len == 32 {
            eprintln!("xts kernel: {}", xts.kernel_name());
        }
        for (label, unit, sector) in [
            ("512", 512usize, 512usize),
            ("4096", 4096, 4096),
            ("bulk", 1 << 20, 4096),
        ] {
            let mbs = measure(&xts, unit, sector, secs, clock);
            println!("{name} {label} {mbs:.0}");
        }
    }
}

#[allow(dead_code)]
fn ecb_ceiling() {
    use aes::cipher::{BlockCipherEncrypt, KeyInit};
    let c = aes::Aes128::new_from_slice(&[7u8; 16]).unwrap();
    let mut buf = vec![aes::Block::default(); 65536];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        c.encrypt_blocks(&mut buf);
        n += 1 << 20;
    }
    println!(
        "ecb128 bulk {:.0}",
        n as f64 / start.elapsed().as_secs_f64() / 1e6
    );
}

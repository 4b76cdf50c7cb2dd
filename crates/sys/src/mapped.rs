//! A file's bytes read where its page cache holds them, through a short-lived read-only
//! mapping: a transform that reads each byte once (XTS from the source into the reply) then
//! spares the copy that `pread` makes into a buffer first. On a 2-vCPU Xeon that copy was
//! about 45 % of what serving a plain file costs (docs/performance.md, "HTTP views").
//!
//! Why `unsafe`: a mapping is raw memory whose pages the kernel supplies on access, and a file
//! that shrinks under a mapping makes an access past its new end raise SIGBUS, which kills the
//! process (a privileged server of a whole node, over one truncated image). So the bytes are
//! handed out only inside [`with_mapped`], with a guard armed for exactly that range in a
//! process-wide table (so a thread that `f` hands the bytes to, or an enclosing
//! `with_mapped`'s bytes read inside a nested one, are covered too): the SIGBUS handler puts a
//! page of zeros where the file's page was and notes the fault, and `with_mapped` returns an
//! error instead of what `f` made of the bytes. A SIGBUS anywhere else, or sent by a process
//! (`kill`), goes on to the handler that was there before (Rust's stack-overflow report) or to
//! the default action, as if this module were not there; after that, no new mapping is made
//! (the handler may be gone), and callers read with `pread`.
//!
//! The bytes may change under `f` while another process writes the file, as `pread` may return
//! a mix of old and new bytes: callers check their source after the read, as they do after a
//! `pread` (bifs-node's `Watched`), and `f` must read each byte at most once and not rely on
//! two reads agreeing.

use std::ffi::c_void;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

use rustix::mm::{MapFlags, ProtFlags};

/// Ranges being read through a mapping, by any thread (at most this many at once; a read that
/// finds no free slot is not mapped). A slot's `end` is stored last when it is armed and
/// cleared first when it is disarmed, so the handler, which may run between any two
/// instructions of any thread, sees either a whole range or none.
const SLOTS: usize = 64;

struct Slot {
    taken: AtomicBool,
    start: AtomicUsize,
    end: AtomicUsize,
    /// Set by the handler when a page of the range was gone.
    faulted: AtomicBool,
}

static ARMED: [Slot; SLOTS] = [const {
    Slot {
        taken: AtomicBool::new(false),
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        faulted: AtomicBool::new(false),
    }
}; SLOTS];

/// Set when the handler passed a SIGBUS on to the previous action, which may have put the
/// default action back in place of ours: no mapping is made from then on.
static PASSED_ON: AtomicBool = AtomicBool::new(false);

/// The SIGBUS action in place before ours, for faults that are not ours; set once.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
/// The page size ([`page_size`]); 0 until first asked.
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` on the `len` bytes of `file` at `offset`, read through a mapping of the file's
/// pages, and unmaps them. `Err` if the mapping fails (a file that cannot be mapped: the caller
/// reads it instead; `WouldBlock` when the slots of [`SLOTS`] reads at once are all taken) or
/// if part of the range was gone while `f` ran (the file shrank; `f` then saw zeros there, and
/// its result is dropped). The range should lie inside the file as it was
/// opened: pages past its end are read as zeros and reported as such.
pub fn with_mapped<R>(
    file: &impl AsFd,
    offset: u64,
    len: usize,
    f: impl FnOnce(&[u8]) -> R,
) -> io::Result<R> {
    if len == 0 {
        return Ok(f(&[]));
    }
    install()?;
    if PASSED_ON.load(Ordering::SeqCst) {
        return Err(io::Error::other(
            "a SIGBUS was passed on to the previous handler: no more mapped reads",
        ));
    }
    // A slot first: with none free, no mapping is made for nothing.
    let guard = Armed::take().ok_or_else(|| {
        io::Error::new(io::ErrorKind::WouldBlock, "every mapped-read slot is taken")
    })?;
    let skip = (offset % page_size() as u64) as usize;
    let map_len = skip
        .checked_add(len)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a new read-only mapping at an address the kernel picks: it aliases no memory of
    // this process, and `Mapping` unmaps exactly it.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            map_len,
            ProtFlags::READ,
            // POPULATE: the page-table entries in one call, not one fault per 16 pages inside
            // the cipher's loop (5 % faster on a quiet host, 30 % slower on a busy one:
            // docs/performance.md, "A host that changes under the measurement").
            MapFlags::SHARED | MapFlags::POPULATE,
            file,
            offset - skip as u64,
        )
    }?;
    let mapping = Mapping { ptr, len: map_len };
    guard.cover(ptr as usize, map_len);
    // SAFETY: `map_len` readable bytes live at `ptr` until `mapping` drops, after `f` returns
    // and the guard is disarmed; a page the file no longer has reads as zeros (the guard, on
    // whichever thread reads it), never a fault. `f`'s result cannot borrow the slice (its
    // lifetime is `f`'s argument's), so nothing outlives the mapping. The bytes may change
    // under `f` (see the module documentation).
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>().add(skip), len) };
    compiler_fence(Ordering::SeqCst);
    let r = f(bytes);
    compiler_fence(Ordering::SeqCst);
    let faulted = guard.disarm();
    drop(mapping);
    if faulted {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "a page of the file was gone while it was being read (the file shrank, or reading \
             the page failed)",
        ));
    }
    Ok(r)
}

/// `cachestat(2)` (Linux 6.5), which libc 0.2 names on some architectures only; 451 on all
/// but alpha.
const SYS_CACHESTAT: libc::c_long = 451;

/// Whether every page of the `len` bytes of `file` at `offset` is in the page cache now, as
/// `cachestat(2)` counts them; `false` where the kernel lacks it. A mapping pays off only
/// there: a page not yet read would be read by the mapping's fault, without the read-ahead
/// that `pread` gets (so callers read such a range with `pread`).
pub fn cached(file: &impl AsFd, offset: u64, len: usize) -> bool {
    static MISSING: AtomicBool = AtomicBool::new(false);
    if len == 0 || MISSING.load(Ordering::Relaxed) {
        return len == 0;
    }
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    let range = Range {
        off: offset,
        len: len as u64,
    };
    let mut stat = Stat::default();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file.as_fd());
    // SAFETY: cachestat reads `range` and writes `stat`, both live locals of the layouts the
    // kernel's UAPI gives (`struct cachestat_range`, `struct cachestat`); flags must be 0.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd,
            &range as *const Range,
            &mut stat as *mut Stat,
            0 as libc::c_uint,
        )
    };
    if r != 0 {
        // Not in this kernel, or refused by a seccomp filter: not asked again.
        if let Some(libc::ENOSYS | libc::EPERM) = io::Error::last_os_error().raw_os_error() {
            MISSING.store(true, Ordering::Relaxed);
        }
        return false;
    }
    let page = page_size() as u64;
    let Some(end) = offset.checked_add(len as u64 - 1) else {
        return false;
    };
    stat.nr_cache > end / page - offset / page
}

/// The system's page size, asked once; the handler reads [`PAGE_SIZE`], set before any range
/// is armed (`with_mapped` asks first).
fn page_size() -> usize {
    let known = PAGE_SIZE.load(Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    // SAFETY: sysconf reads a constant of the system.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    PAGE_SIZE.store(page, Ordering::Relaxed);
    page
}

/// A mapping made by [`with_mapped`], unmapped on drop (also when `f` panics).
struct Mapping {
    ptr: *mut c_void,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping `mmap` made; the slice over it is gone (`f` returned or
        // unwound).
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}

/// A slot of [`ARMED`], taken while it lives; it holds one range once [`Armed::cover`] set it.
struct Armed(&'static Slot);

impl Armed {
    /// Takes a free slot; `None` if every slot is taken.
    fn take() -> Option<Self> {
        ARMED
            .iter()
            .find(|s| {
                s.taken
                    .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            })
            .map(Self)
    }

    /// Arms the slot for `[start, start + len)`.
    fn cover(&self, start: usize, len: usize) {
        self.0.faulted.store(false, Ordering::SeqCst);
        self.0.start.store(start, Ordering::SeqCst);
        self.0.end.store(start + len, Ordering::SeqCst);
    }

    /// Whether a page of the range was gone; the slot is free again.
    fn disarm(self) -> bool {
        self.0.faulted.load(Ordering::SeqCst)
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.0.end.store(0, Ordering::SeqCst);
        self.0.start.store(0, Ordering::SeqCst);
        self.0.faulted.store(false, Ordering::SeqCst);
        self.0.taken.store(false, Ordering::SeqCst);
    }
}

/// Installs the SIGBUS handler once per process, keeping the action it replaces.
fn install() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let r = INSTALLED.get_or_init(|| {
        // SAFETY: a zeroed `sigaction` is a valid empty one; `sigemptyset` and `sigaction`
        // get pointers to live locals; the handler is an `extern "C"` function of the
        // signature SA_SIGINFO asks for.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            // ONSTACK: Rust's threads run handlers on their alternate stack, so a handler can
            // still run where a stack overflowed.
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            // The previous action is stored before ours can run, so the handler always finds
            // it: set ours with the old one read first.
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
                return Err(io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO));
            }
            let _ = PREVIOUS.set(previous);
            if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO));
            }
        }
        Ok(())
    });
    r.map_err(io::Error::from_raw_os_error)
}

/// The SIGBUS handler: a fault inside an armed range maps a page of zeros over the faulting
/// page and returns (the access is retried and reads zeros); any other SIGBUS, and one sent by
/// a process, goes to the previous action. Only async-signal-safe work: atomic loads and stores
/// of statics, `mmap`, `sigaction`, `raise`.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` to an SA_SIGINFO handler; a fault's SIGBUS
    // fills in `si_addr` (for a sent one it means nothing, and `si_code` says so).
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // si_code > 0: raised by the kernel for a fault (BUS_ADRERR and the like); <= 0: sent.
    if code > 0 {
        if let Some(slot) = ARMED.iter().find(|s| {
            let end = s.end.load(Ordering::SeqCst);
            end != 0 && s.start.load(Ordering::SeqCst) <= addr && addr < end
        }) {
            let page_size = PAGE_SIZE.load(Ordering::Relaxed);
            // SAFETY: replaces one page of an armed mapping (made by `with_mapped`, unmapped
            // only after its range is disarmed) with a private page of zeros; no other memory
            // is touched.
            let r = unsafe {
                libc::mmap(
                    (addr & !(page_size - 1)) as *mut c_void,
                    page_size,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if r != libc::MAP_FAILED {
                slot.faulted.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
    PASSED_ON.store(true, Ordering::SeqCst);
    let Some(previous) = PREVIOUS.get() else {
        return;
    };
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Put the old action back and raise the signal again: it is delivered when this
        // handler returns (SIGBUS is blocked while it runs), and a fault's access faults
        // again, so the process ends (or ignores a sent SIGBUS) as without this module.
        // SAFETY: `previous` is the action `sigaction` gave back at install.
        unsafe {
            libc::sigaction(libc::SIGBUS, previous, std::ptr::null_mut());
            libc::raise(libc::SIGBUS);
        }
    } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: an SA_SIGINFO action's handler has this signature.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void) =
            unsafe { std::mem::transmute(handler) };
        f(sig, info, ctx);
    } else {
        // SAFETY: a plain action's handler takes the signal number.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file holding `bytes`, in memory (memfd: tmpfs with 4 KiB pages, so a page past a new
    /// end is gone at once; a file system with large folios may keep it mapped, zeroed, until
    /// the folio splits, so a SIGBUS would not be certain there).
    fn file_of(bytes: &[u8]) -> std::fs::File {
        let fd =
            rustix::fs::memfd_create("bifs-sys-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let mut f = std::fs::File::from(fd);
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn any_range_reads_as_the_file_holds_it() {
        let data: Vec<u8> = (0..3 * 4096 + 100u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let f = file_of(&data);
        for (offset, len) in [
            (0usize, data.len()),
            (1, 10),
            (4095, 2),
            (4096, 4096),
            (5000, 7388),
        ] {
            let got = with_mapped(&f, offset as u64, len, |b| b.to_vec()).unwrap();
            assert_eq!(
                got,
                data[offset..offset + len],
                "offset {offset}, {len} bytes"
            );
        }
        assert!(with_mapped(&f, 7, 0, |b| b.len()).unwrap() == 0);
    }

    #[test]
    fn a_file_that_shrinks_under_the_reader_is_an_error_not_a_crash() {
        let data = vec![0x5au8; 8 * 4096];
        let f = file_of(&data);
        let r = with_mapped(&f, 0, data.len(), |b| {
            // The file loses its last six pages while the mapping is armed: reading them
            // raises SIGBUS, which the guard turns into zeros and an error.
            f.set_len(2 * 4096).unwrap();
            // Read after the truncation, and kept (see the nested test).
            let sum: u64 = std::hint::black_box(b).iter().map(|&x| x as u64).sum();
            std::hint::black_box(sum)
        });
        let e = r.expect_err("a read past the new end must fail");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // The guard is gone and the mapping with it: the next read of what is left works.
        let left = with_mapped(&f, 0, 2 * 4096, |b| b.iter().all(|&x| x == 0x5a)).unwrap();
        assert!(left);
    }

    #[test]
    fn cached_counts_the_pages_in_memory() {
        let f = file_of(&[7u8; 4 * 4096]);
        if !cached(&f, 0, 4096) {
            eprintln!("SKIPPED cached_counts_the_pages_in_memory: this kernel lacks cachestat(2)");
            return;
        }
        assert!(cached(&f, 0, 4 * 4096));
        assert!(cached(&f, 100, 3 * 4096));
        // A hole of a memfd holds no page until written.
        f.set_len(8 * 4096).unwrap();
        assert!(!cached(&f, 0, 8 * 4096));
        assert!(cached(&f, 4096, 3 * 4096));
    }

    #[test]
    fn a_nested_read_keeps_the_outer_guard() {
        let data = vec![1u8; 4 * 4096];
        let outer = file_of(&data);
        let inner = file_of(&data);
        let r = with_mapped(&outer, 0, data.len(), |b| {
            with_mapped(&inner, 0, 4096, |i| i[0]).unwrap();
            outer.set_len(4096).unwrap();
            // Read after the truncation, and kept: the test drops the value, and an unused read
            // of a shared slice may be left out or done earlier.
            std::hint::black_box(std::hint::black_box(b)[3 * 4096])
        });
        assert!(
            r.is_err(),
            "the outer range stays armed after the inner read"
        );
    }

    #[test]
    fn bytes_read_on_another_thread_are_guarded_too() {
        let data = vec![2u8; 4 * 4096];
        let f = file_of(&data);
        let r = with_mapped(&f, 0, data.len(), |b| {
            f.set_len(4096).unwrap();
            std::thread::scope(|s| {
                s.spawn(|| std::hint::black_box(std::hint::black_box(b)[3 * 4096]))
                    .join()
                    .unwrap()
            })
        });
        assert!(r.is_err(), "the fault on the other thread is the read's");
    }

    #[test]
    fn a_fault_outside_any_armed_range_still_kills_the_process() {
        // In a child process: a SIGBUS outside `with_mapped` (a plain mapping of a file that
        // shrank) must take the default action, as without this module.
        if std::env::var_os("BIFS_SYS_SIGBUS_CHILD").is_some() {
            let f = file_of(&[3u8; 8192]);
            install().unwrap();
            // SAFETY: a test-only mapping of 8 KiB that is read after the file shrank, on
            // purpose: the process must die of SIGBUS.
            unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    8192,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    0,
                );
                assert_ne!(p, libc::MAP_FAILED);
                f.set_len(0).unwrap();
                let v = std::ptr::read_volatile(p.cast::<u8>().add(4096));
                println!("read {v} past the end: not killed");
            }
            std::process::exit(0);
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "mapped::tests::a_fault_outside_any_armed_range_still_kills_the_process",
                "--nocapture",
            ])
            .env("BIFS_SYS_SIGBUS_CHILD", "1")
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGBUS),
            "child: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

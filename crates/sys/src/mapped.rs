//! A file's bytes read where its page cache holds them, through a short-lived read-only
//! mapping: a transform that reads each byte once (XTS from the source into the reply) then
//! spares the copy that `pread` makes into a buffer first. On a 2-vCPU Xeon that copy was
//! about 45 % of what serving a plain file costs (docs/performance.md, "HTTP views").
//!
//! Why `unsafe`: a mapping is raw memory whose pages the kernel supplies on access, and a file
//! that shrinks under a mapping makes an access past its new end raise SIGBUS, which kills the
//! process (a privileged server of a whole node, over one truncated image). So the bytes are
//! handed out only inside [`with_mapped`], with a guard armed on the calling thread for exactly
//! that range: the SIGBUS handler puts a page of zeros where the file's page was and notes the
//! fault, and `with_mapped` returns an error instead of what `f` made of the bytes. A SIGBUS
//! anywhere else goes on to the handler that was there before (Rust's stack-overflow report)
//! or to the default action, as if this module were not there.
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

thread_local! {
    /// The mapped range `[start, end)` this thread reads inside [`with_mapped`]; empty outside.
    /// `const`-initialised and without a destructor, so the signal handler's access is a plain
    /// thread-local load (no lazy initialisation, no allocation). Atomics, with compiler
    /// fences around `f`, so that the compiler keeps every load and store where the handler
    /// sees it: the handler runs between two instructions of this thread, not in any call the
    /// compiler knows of.
    static ARMED_START: AtomicUsize = const { AtomicUsize::new(0) };
    static ARMED_END: AtomicUsize = const { AtomicUsize::new(0) };
    /// Set by the handler when a page of the armed range was gone.
    static FAULTED: AtomicBool = const { AtomicBool::new(false) };
}

/// The SIGBUS action in place before ours, for faults that are not ours; set once.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` on the `len` bytes of `file` at `offset`, read through a mapping of the file's
/// pages, and unmaps them. `Err` if the mapping fails (a file that cannot be mapped: the caller
/// reads it instead) or if part of the range was gone while `f` ran (the file shrank; `f` then
/// saw zeros there, and its result is dropped). The range should lie inside the file as it was
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
    let page = PAGE_SIZE.load(Ordering::Relaxed);
    let skip = (offset % page as u64) as usize;
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
            // POPULATE: the page-table entries in one call, not one fault per 16 pages.
            MapFlags::SHARED | MapFlags::POPULATE,
            file,
            offset - skip as u64,
        )
    }?;
    let mapping = Mapping { ptr, len: map_len };
    let guard = Armed::arm(ptr as usize, map_len);
    // SAFETY: `map_len` readable bytes live at `ptr` until `mapping` drops, after `f` returns;
    // a page the file no longer has reads as zeros (the guard), never a fault. `f`'s result
    // cannot borrow the slice (its lifetime is `f`'s argument's), so nothing outlives the
    // mapping. The bytes may change under `f` (see the module documentation).
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>().add(skip), len) };
    compiler_fence(Ordering::SeqCst);
    let r = f(bytes);
    compiler_fence(Ordering::SeqCst);
    let faulted = guard.disarm();
    drop(mapping);
    if faulted {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the file shrank while it was being read",
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
        if io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            MISSING.store(true, Ordering::Relaxed);
        }
        return false;
    }
    let page = page_size() as u64;
    let first = offset / page;
    let last = (offset + len as u64 - 1) / page;
    stat.nr_cache > last - first
}

/// The system's page size.
fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).unwrap_or(4096)
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

/// This thread's armed range while it lives; the range and fault flag of an enclosing
/// `with_mapped` come back when it drops.
struct Armed {
    outer: (usize, usize),
    outer_faulted: bool,
    done: bool,
}

impl Armed {
    fn arm(start: usize, len: usize) -> Self {
        // The end first cleared, so that the handler never sees a range that is half old, half
        // new (it runs on this thread, between any two of these instructions).
        let outer_end = ARMED_END.with(|e| e.swap(0, Ordering::SeqCst));
        let outer_start = ARMED_START.with(|s| s.swap(start, Ordering::SeqCst));
        let outer_faulted = FAULTED.with(|f| f.swap(false, Ordering::SeqCst));
        ARMED_END.with(|e| e.store(start + len, Ordering::SeqCst));
        let outer = (outer_start, outer_end);
        Self {
            outer,
            outer_faulted,
            done: false,
        }
    }

    /// Whether a page of the range was gone; the enclosing state is back.
    fn disarm(mut self) -> bool {
        self.done = true;
        self.restore()
    }

    fn restore(&self) -> bool {
        ARMED_END.with(|e| e.store(0, Ordering::SeqCst));
        ARMED_START.with(|s| s.store(self.outer.0, Ordering::SeqCst));
        let faulted = FAULTED.with(|f| f.swap(self.outer_faulted, Ordering::SeqCst));
        ARMED_END.with(|e| e.store(self.outer.1, Ordering::SeqCst));
        faulted
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        if !self.done {
            self.restore();
        }
    }
}

/// Installs the SIGBUS handler once per process, keeping the action it replaces.
fn install() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let r = INSTALLED.get_or_init(|| {
        PAGE_SIZE.store(page_size(), Ordering::Relaxed);
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

/// The SIGBUS handler: a fault inside this thread's armed range maps a page of zeros over the
/// faulting page and returns (the access is retried and reads zeros); any other goes to the
/// previous action. Only async-signal-safe work: thread-local loads and stores of plain
/// values, `mmap`, `sigaction`.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` to an SA_SIGINFO handler; SIGBUS fills in
    // `si_addr`.
    let addr = unsafe { (*info).si_addr() } as usize;
    let start = ARMED_START
        .try_with(|s| s.load(Ordering::SeqCst))
        .unwrap_or(0);
    let end = ARMED_END
        .try_with(|e| e.load(Ordering::SeqCst))
        .unwrap_or(0);
    if start <= addr && addr < end {
        let page = addr & !(PAGE_SIZE.load(Ordering::Relaxed) - 1);
        // SAFETY: replaces one page of this thread's own armed mapping (made by
        // `with_mapped`, unmapped only after the range is disarmed) with a private page of
        // zeros; no other memory is touched.
        let r = unsafe {
            libc::mmap(
                page as *mut c_void,
                PAGE_SIZE.load(Ordering::Relaxed),
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if r != libc::MAP_FAILED {
            let _ = FAULTED.try_with(|f| f.store(true, Ordering::SeqCst));
            return;
        }
    }
    let Some(previous) = PREVIOUS.get() else {
        return;
    };
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Put the old action back and return: the access faults again and the kernel takes
        // the default action (a fault's SIGBUS cannot be ignored).
        // SAFETY: `previous` is the action `sigaction` gave back at install.
        unsafe { libc::sigaction(libc::SIGBUS, previous, std::ptr::null_mut()) };
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

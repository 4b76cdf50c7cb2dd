//! The C allocator's one setting a long-running bifs needs: `mallopt` has no safe binding.
//!
//! glibc serves a large allocation with its own `mmap` and unmaps it when freed, but it raises
//! that threshold to the size of each such block freed (up to 32 MiB), after which blocks of
//! that size come from an arena and stay there when freed. A mount or server makes a 16 MiB
//! LUKS2 header region for each encrypt view it prepares, on its preparation threads: each one
//! left 16 MiB resident for good (48 MiB after three views, docs/performance.md). A fixed
//! threshold keeps blocks of 4 MiB and more out of the arenas: they go back to the system when
//! freed. Smaller blocks (the 1 MiB chunks of HTTP responses, FUSE read buffers) stay in the
//! arenas, where their reuse costs no page faults.

/// Blocks of this size and more are mapped and unmapped on their own.
pub const MMAP_THRESHOLD: usize = 4 << 20;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`] for the rest of the process. Returns
/// whether the allocator took it (always false where the C library is not glibc).
pub fn return_large_blocks_to_the_system() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes a tunable of the allocator; M_MMAP_THRESHOLD takes a
        // byte count, and 4 MiB is within its range (at most 32 MiB on 64-bit glibc). No
        // memory is read or written on the caller's behalf.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) };
        ok == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_threshold() {
        assert!(super::return_large_blocks_to_the_system());
    }
}

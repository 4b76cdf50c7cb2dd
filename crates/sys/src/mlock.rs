//! Locking key buffers in RAM: neither rustix nor std offers `mlock` as a safe function (it
//! takes a raw address range). Used by `bifs_core::keys` for every key buffer.

/// Locks the pages holding `bytes` in RAM.
pub fn lock(bytes: &[u8]) -> std::io::Result<()> {
    // SAFETY: mlock only changes the residency of the pages of a live allocation borrowed
    // for the duration of the call; it neither reads nor writes the memory.
    unsafe { rustix::mm::mlock(bytes.as_ptr().cast_mut().cast(), bytes.len()) }
        .map_err(std::io::Error::from)
}

/// Unlocks the pages of the allocation starting at `bytes` (`capacity` bytes long, at
/// least what `lock` locked). Best effort, errors ignored.
pub fn unlock(bytes: &[u8], capacity: usize) {
    // SAFETY: as for `lock`, residency only; the range (the `Vec`'s capacity, which the
    // caller passes) is the caller's own live allocation. Pages shared with another locked
    // key get unlocked too (mlock does not nest): accepted, this is best-effort defence
    // against swap, not a guarantee.
    let _ = unsafe { rustix::mm::munlock(bytes.as_ptr().cast_mut().cast(), capacity.max(1)) };
}

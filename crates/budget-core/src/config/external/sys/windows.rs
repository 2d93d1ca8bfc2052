//! Windows: byte-range locks with `LockFileEx`, owned by the file handle of this
//! process and released by the kernel when the process ends, however it ends; files
//! in the user's own temporary directory. Compile-checked only (no Windows here).
//!
//! Two differences from POSIX locks, both absorbed here or in `Member`:
//! - no lock query names the holder: [`holder`] tries an exclusive lock on the byte
//!   (and lets it go at once) and answers "someone" (pid 0) when that fails, its own
//!   locks included ([`HOLDER_SEES_OWN`]);
//! - unlocking a byte not held is an error (ignored by every caller, as on Unix).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::windows::fs::FileExt;
use std::os::windows::io::AsRawHandle;
use std::path::Path;

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::Storage::FileSystem::{
    LockFileEx, UnlockFileEx, LOCKFILE_EXCLUSIVE_LOCK, LOCKFILE_FAIL_IMMEDIATELY,
};
use windows_sys::Win32::System::IO::OVERLAPPED;

use super::Lock;

/// Whether this OS has the node budget.
pub(crate) const NODE_SUPPORTED: bool = true;

/// Whether [`holder`] also sees this process's own locks.
pub(crate) const HOLDER_SEES_OWN: bool = true;

/// Whether locks belong to the open file (here: the handle) rather than to the
/// process: closing another handle of the file drops none of them.
pub(crate) const PER_OPEN: bool = true;

/// No numeric user id: the directory lives in the user's own temporary directory.
pub(crate) fn uid() -> u32 {
    0
}

/// Makes `dir` if missing and checks that it is a directory (the user's temporary
/// directory is private to the user already).
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    super::make_dir(&DirBuilder::new(), dir, |_| true)
}

/// Creates (or truncates) `path` for writing (std's handles are not inherited).
pub(crate) fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// Opens `path` for reading and writing, shared with other processes.
pub(crate) fn open_shared(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// Reads from `offset` (moves the handle's position, which nothing else uses).
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    file.seek_read(buf, offset)
}

fn overlapped(at: u64) -> OVERLAPPED {
    let mut o = OVERLAPPED::default();
    o.Anonymous.Anonymous.Offset = at as u32;
    o.Anonymous.Anonymous.OffsetHigh = (at >> 32) as u32;
    o
}

/// `LockFileEx` / `UnlockFileEx` of one byte: never waits.
pub(crate) fn lock(file: &File, kind: Lock, at: u64) -> io::Result<()> {
    let handle = file.as_raw_handle() as HANDLE;
    let mut o = overlapped(at);
    // SAFETY: `handle` is an open file handle (leaked, never closed) and `o` a valid
    // OVERLAPPED naming the byte; with LOCKFILE_FAIL_IMMEDIATELY the call returns at
    // once, so `o` outlives it.
    let ok = unsafe {
        match kind {
            Lock::Exclusive => LockFileEx(
                handle,
                LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY,
                0,
                1,
                0,
                &mut o,
            ),
            Lock::Shared => LockFileEx(handle, LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, &mut o),
            Lock::Unlock => UnlockFileEx(handle, 0, 1, 0, &mut o),
        }
    };
    if ok == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// "Someone holds a lock on byte `at`" (pid 0: Windows does not say who), found by
/// trying an exclusive lock and letting it go at once.
pub(crate) fn holder(file: &File, at: u64) -> Option<u32> {
    match lock(file, Lock::Exclusive, at) {
        Ok(()) => {
            let _ = lock(file, Lock::Unlock, at);
            None
        }
        Err(_) => Some(0),
    }
}

/// A locked byte of `[at, at + len)`, as `(start, end)`, or `None` when none is
/// locked: one exclusive lock of the whole range tells "none" (and is let go at
/// once); otherwise halves are tried until one locked byte is found (log2 `len`
/// calls). This process's own locks count as locked here ([`HOLDER_SEES_OWN`]).
pub(crate) fn first_conflict(file: &File, at: u64, len: u64) -> Option<(u64, u64)> {
    let handle = file.as_raw_handle() as HANDLE;
    let free = |at: u64, len: u64| {
        let mut o = overlapped(at);
        let (lo, hi) = (len as u32, (len >> 32) as u32);
        // SAFETY: as in `lock`, for the range `[at, at + len)`.
        let ok = unsafe {
            LockFileEx(
                handle,
                LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY,
                0,
                lo,
                hi,
                &mut o,
            )
        };
        if ok != 0 {
            let mut o = overlapped(at);
            // SAFETY: as above; releases the range just locked.
            unsafe { UnlockFileEx(handle, 0, lo, hi, &mut o) };
        }
        ok != 0
    };
    if len == 0 || free(at, len) {
        return None;
    }
    let (mut lo, mut len) = (at, len);
    while len > 1 {
        let half = len / 2;
        if free(lo, half) {
            lo += half;
            len -= half;
        } else {
            len = half;
        }
    }
    Some((lo, lo + 1))
}

/// Nanoseconds since the Unix epoch (see `epoch_ns`).
pub(crate) fn monotonic_ns() -> u64 {
    super::epoch_ns()
}

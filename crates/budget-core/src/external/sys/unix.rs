//! Unix (Linux, macOS, the BSDs): POSIX `fcntl` byte-range locks, owned by the
//! process and dropped by the kernel when it dies; files private to the user.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::Lock;

/// Whether [`holder`] also sees this process's own locks (POSIX `F_GETLK` does not).
pub(crate) const HOLDER_SEES_OWN: bool = false;

/// Whether this OS has the node budget.
pub(crate) const NODE_SUPPORTED: bool = true;

/// This process's user id, for the name and owner check of the node directory.
pub(crate) fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Makes `dir` with mode 0700 if missing, and checks that it is a directory of this
/// user.
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    super::make_dir(DirBuilder::new().mode(0o700), dir, |meta| {
        meta.uid() == uid()
    })
}

/// Creates (or truncates) `path` for writing, readable by this user only, not
/// inherited across `exec`.
pub(crate) fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Opens `path` for reading and writing, not inherited across `exec`.
pub(crate) fn open_shared(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Reads from `offset` without moving the file's offset.
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    FileExt::read_at(file, buf, offset)
}

fn flock(kind: libc::c_short, at: u64) -> libc::flock {
    // SAFETY: flock is plain data; all-zeroes is valid and we set every field used.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = at as libc::off_t;
    fl.l_len = 1;
    fl
}

/// `fcntl(F_SETLK)` of one byte: never waits.
pub(crate) fn lock(file: &File, kind: Lock, at: u64) -> io::Result<()> {
    let kind = match kind {
        Lock::Exclusive => libc::F_WRLCK,
        Lock::Shared => libc::F_RDLCK,
        Lock::Unlock => libc::F_UNLCK,
    };
    let fl = flock(kind as libc::c_short, at);
    // SAFETY: the descriptor is open (leaked, never closed) and `fl` is a valid flock.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The pid of another process holding a lock on byte `at`, by `F_GETLK`.
pub(crate) fn holder(file: &File, at: u64) -> Option<u32> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, at);
    // SAFETY: as in `lock`; F_GETLK writes the conflicting lock into `fl`.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) };
    (rc == 0 && fl.l_type != libc::F_UNLCK as libc::c_short).then_some(fl.l_pid as u32)
}

/// `CLOCK_MONOTONIC` in nanoseconds: comparable between the processes of a machine
/// (the token log of a tree of processes).
pub(crate) fn monotonic_ns() -> u64 {
    // SAFETY: timespec is plain data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

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

/// The affinity mask as hex, lowest CPU first, trailing zero bytes dropped; "all"
/// where the OS has no affinity mask to read.
#[cfg(target_os = "linux")]
pub(crate) fn affinity_key() -> String {
    // SAFETY: cpu_set_t is a plain bit array; all-zeroes is a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is writable and we pass its exact size; pid 0 is this thread.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return "all".to_owned();
    }
    let cpus: Vec<bool> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: the index is below CPU_SETSIZE; `set` is initialised.
        .map(|cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    super::super::node::mask_key(&cpus)
}

/// The affinity mask as hex; "all" where the OS has no affinity mask to read
/// (macOS: threads have affinity tags, processes no CPU mask).
#[cfg(not(target_os = "linux"))]
pub(crate) fn affinity_key() -> String {
    "all".to_owned()
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

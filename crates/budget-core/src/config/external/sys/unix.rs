//! Unix (Linux, macOS, the BSDs): `fcntl` byte-range locks, dropped by the kernel
//! when the process dies; files private to the user.
//!
//! On Linux the locks are *open-file-description* locks (`F_OFD_SETLK`, Linux 3.15):
//! owned by the one open of the file that took them, so a program that opens and
//! closes the node file itself (`open(path).read()` in Python) does not drop them,
//! and two opens in one process conflict as two processes would. A forked child
//! shares its parent's open file descriptions: [`forget_in_child`] closes the
//! child's copy at once (in a `pthread_atfork` handler), so a child never keeps its
//! parent's tokens alive. `F_OFD_GETLK` names no pid; [`owners`] finds the holders
//! in `/proc/<pid>/fdinfo` for `budget info`.
//!
//! Elsewhere (macOS, the BSDs) they are classic POSIX locks (`F_SETLK`), owned by
//! the process: [`PER_OPEN`] is false there, and `node.rs` opens each file once per
//! process and never closes it (closing *any* descriptor of a file drops all of a
//! process's POSIX locks on it).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::Lock;

/// Whether [`holder`] also sees this process's own locks (`F_GETLK` and
/// `F_OFD_GETLK` do not: not those of the same owner).
pub(crate) const HOLDER_SEES_OWN: bool = false;

/// Whether locks belong to the open file (Linux's OFD locks) rather than to the
/// process (classic POSIX locks).
pub(crate) const PER_OPEN: bool = cfg!(target_os = "linux");

#[cfg(target_os = "linux")]
const SETLK: libc::c_int = libc::F_OFD_SETLK;
#[cfg(target_os = "linux")]
const GETLK: libc::c_int = libc::F_OFD_GETLK;
#[cfg(not(target_os = "linux"))]
const SETLK: libc::c_int = libc::F_SETLK;
#[cfg(not(target_os = "linux"))]
const GETLK: libc::c_int = libc::F_GETLK;

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

fn flock(kind: libc::c_short, at: u64, len: u64) -> libc::flock {
    // SAFETY: flock is plain data; all-zeroes is valid (OFD locks require
    // `l_pid == 0`) and we set every other field used.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = at as libc::off_t;
    fl.l_len = len as libc::off_t;
    fl
}

/// `fcntl(F_OFD_SETLK)` (`F_SETLK` off Linux) of one byte: never waits.
pub(crate) fn lock(file: &File, kind: Lock, at: u64) -> io::Result<()> {
    let kind = match kind {
        Lock::Exclusive => libc::F_WRLCK,
        Lock::Shared => libc::F_RDLCK,
        Lock::Unlock => libc::F_UNLCK,
    };
    let fl = flock(kind as libc::c_short, at, 1);
    // SAFETY: the descriptor is open (the caller's `File`) and `fl` is a valid flock.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), SETLK, &fl) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A lock of another owner on some byte of `[at, at + len)`, as `(start, end)` (end
/// exclusive, `u64::MAX` for "to the end of the file"), by one `F_OFD_GETLK`
/// (`F_GETLK`); `None` when no other owner holds any byte of the range. Which of
/// several locks comes back is the kernel's choice.
pub(crate) fn first_conflict(file: &File, at: u64, len: u64) -> Option<(u64, u64)> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, at, len);
    // SAFETY: as in `lock`; F_GETLK writes the conflicting lock into `fl`.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), GETLK, &mut fl) };
    if rc != 0 || fl.l_type == libc::F_UNLCK as libc::c_short {
        return None;
    }
    let start = fl.l_start as u64;
    let end = if fl.l_len == 0 {
        u64::MAX
    } else {
        start.saturating_add(fl.l_len as u64)
    };
    Some((start, end))
}

/// Someone else holds a lock on byte `at`: their pid where the lock kind names it
/// (classic POSIX locks), else 0 ("someone": Linux's OFD locks name no pid; see
/// [`owners`]).
pub(crate) fn holder(file: &File, at: u64) -> Option<u32> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, at, 1);
    // SAFETY: as in `lock`; F_GETLK writes the conflicting lock into `fl`.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), GETLK, &mut fl) };
    (rc == 0 && fl.l_type != libc::F_UNLCK as libc::c_short).then_some(fl.l_pid.max(0) as u32)
}

/// The locks on `file` of every process of this user, as `(pid, start, end)` (end
/// exclusive), from `/proc/<pid>/fdinfo` (Linux: OFD locks name no pid otherwise);
/// `None` where the OS gives no such list (the POSIX `F_GETLK` names the pid there).
#[cfg(target_os = "linux")]
pub(crate) fn owners(file: &File) -> Option<Vec<(u32, u64, u64)>> {
    let meta = file.metadata().ok()?;
    let (dev, ino) = (meta.dev(), meta.ino());
    let mut locks = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue; // another user's, or gone
        };
        for fd in fds.flatten() {
            let same = std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino);
            if !same {
                continue;
            }
            let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
            let Ok(text) = std::fs::read_to_string(info) else {
                continue;
            };
            // "lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:10010669 4096 4096"
            for line in text.lines().filter(|l| l.starts_with("lock:")) {
                let mut fields = line.split_whitespace().rev();
                let (Some(end), Some(start)) = (fields.next(), fields.next()) else {
                    continue;
                };
                let Ok(start) = start.parse::<u64>() else {
                    continue;
                };
                let end = end.parse::<u64>().map_or(u64::MAX, |e| e.saturating_add(1));
                locks.push((pid, start, end));
            }
        }
    }
    Some(locks)
}

/// Descriptors a forked child closes at once (Linux, OFD locks: the child's copy of
/// its parent's open file would keep the parent's locks alive after the parent
/// died). Slots hold -1 when empty.
#[cfg(target_os = "linux")]
static CLOSE_IN_CHILD: [std::sync::atomic::AtomicI32; 16] =
    [const { std::sync::atomic::AtomicI32::new(-1) }; 16];

/// Has a forked child close `file`'s descriptor at once (see the module docs). The
/// `File` must never be used in a child: `Member` checks the fork generation.
#[cfg(target_os = "linux")]
pub(crate) fn forget_in_child(file: &File) {
    use std::sync::atomic::Ordering;
    use std::sync::Once;
    static ONCE: Once = Once::new();
    extern "C" fn in_child() {
        // Async-signal-safe: atomic swaps and close(2), no allocation, no lock.
        for slot in &CLOSE_IN_CHILD {
            let fd = slot.swap(-1, Ordering::SeqCst);
            if fd >= 0 {
                // SAFETY: `fd` is the child's copy of a descriptor this module
                // registered; nothing in the child uses it (its `Member` is stale).
                unsafe { libc::close(fd) };
            }
        }
    }
    ONCE.call_once(|| {
        // SAFETY: `in_child` is an `extern "C" fn()` that lives for the whole program
        // and does only async-signal-safe work.
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
    let fd = file.as_raw_fd();
    // SeqCst: the child handler runs on the forking thread after fork; any order
    // works there (one thread), this only keeps the slot claim simple.
    let claimed = CLOSE_IN_CHILD.iter().any(|slot| {
        slot.compare_exchange(-1, fd, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    });
    if !claimed {
        tracing::warn!(
            "budget: more than 16 node budget files open; a forked child may keep its \
             parent's node tokens of the others until it exits"
        );
    }
}

/// Takes `file` out of the descriptors a forked child closes (before it is closed
/// itself).
#[cfg(target_os = "linux")]
pub(crate) fn forget_in_child_undo(file: &File) {
    use std::sync::atomic::Ordering;
    let fd = file.as_raw_fd();
    for slot in &CLOSE_IN_CHILD {
        let _ = slot.compare_exchange(fd, -1, Ordering::SeqCst, Ordering::SeqCst);
    }
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

//! The operating-system calls of the outside budgets, one file per OS family: the
//! node budget's private files and byte-range locks, and the clock of the token log. The decisions (which byte, when to take,
//! what a header says) stay in `node.rs` and `mod.rs` above, the same on every OS.
//!
//! | OS | node budget | why |
//! |---|---|---|
//! | Linux, macOS and other Unix | yes: classic POSIX `fcntl` locks | the kernel drops a dead process's locks |
//! | Windows | yes: `LockFileEx` (compile-checked only) | the kernel drops a dead process's locks; no holder pid |
//! | others | not supported (an `Unsupported` error, said once) | no crash-released lock known |

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;

#[cfg(not(any(unix, windows)))]
mod other;
#[cfg(not(any(unix, windows)))]
pub(crate) use other::*;

// Linux only (`unix.rs`): the owners of the locks from `/proc`, and the fork table of
// open-file-description locks. Elsewhere the lock query names the holder itself (or
// nobody: Windows), and locks are not shared with a forked child (POSIX) or there is
// no fork (Windows): one set of no-ops for every other OS.

/// The locks on a file by owner: only Linux lists them (see `unix.rs`).
#[cfg(not(target_os = "linux"))]
pub(crate) fn owners(_file: &std::fs::File) -> Option<Vec<(u32, u64, u64)>> {
    None
}

/// Nothing a forked child must close off Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn forget_in_child(_file: &std::fs::File) {}

/// Nothing to undo off Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn forget_in_child_undo(_file: &std::fs::File) {}

/// What a byte-range lock call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lock {
    /// An exclusive (write) lock: a token.
    Exclusive,
    /// A shared (read) lock: the wait byte.
    Shared,
    /// Release what this process holds on the byte.
    Unlock,
}

/// Makes `dir` with `builder` unless it exists, then checks with `ours` that what is
/// there is a directory this user may trust.
#[cfg_attr(not(any(unix, windows)), allow(dead_code))]
fn make_dir(
    builder: &std::fs::DirBuilder,
    dir: &std::path::Path,
    ours: impl Fn(&std::fs::Metadata) -> bool,
) -> std::io::Result<()> {
    match builder.create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || !ours(&meta) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} is not a directory of this user", dir.display()),
        ));
    }
    Ok(())
}

/// Nanoseconds since the Unix epoch, for systems without a monotonic clock shared by
/// processes: comparable between processes, as the token log needs.
#[cfg(not(unix))]
fn epoch_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

//! The operating-system calls of the outside budgets, one file per OS family: the
//! node budget's private files and byte-range locks, the affinity key of its default
//! file, and the clock of the token log. The decisions (which byte, when to take,
//! what a header says) stay in `node.rs` and `mod.rs` above, the same on every OS.
//!
//! | OS | node budget | why |
//! |---|---|---|
//! | Linux, macOS and other Unix | yes: classic POSIX `fcntl` locks | the kernel drops a dead process's locks |
//! | Windows and others | not supported (an `Unsupported` error, said once) | `LockFileEx` would do; not built yet |

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(not(unix))]
mod other;
#[cfg(not(unix))]
pub(crate) use other::*;

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

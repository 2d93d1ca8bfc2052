//! Systems with neither POSIX nor Windows byte-range locks: the node
//! budget is not supported; every call says so with `ErrorKind::Unsupported`, and a
//! process asked to join one (`BUDGET_NODE`) warns once and keeps its own budget.

use std::fs::File;
use std::io;
use std::path::Path;

use super::Lock;

/// Whether [`holder`] also sees this process's own locks (POSIX `F_GETLK` does not).
pub(crate) const HOLDER_SEES_OWN: bool = false;

/// Whether this OS has the node budget.
pub(crate) const NODE_SUPPORTED: bool = false;

/// Whether locks belong to the open file rather than to the process (no locks here).
pub(crate) const PER_OPEN: bool = false;

fn unsupported<T>() -> io::Result<T> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "the node budget is not supported on this OS (it needs POSIX byte-range locks)",
    ))
}

/// No user id here: 0 names the directory.
pub(crate) fn uid() -> u32 {
    0
}

pub(crate) fn private_dir(_dir: &Path) -> io::Result<()> {
    unsupported()
}

pub(crate) fn create_private(_path: &Path) -> io::Result<File> {
    unsupported()
}

pub(crate) fn open_shared(_path: &Path) -> io::Result<File> {
    unsupported()
}

pub(crate) fn read_at(_file: &File, _buf: &mut [u8], _offset: u64) -> io::Result<usize> {
    unsupported()
}

pub(crate) fn lock(_file: &File, _kind: Lock, _at: u64) -> io::Result<()> {
    unsupported()
}

pub(crate) fn holder(_file: &File, _at: u64) -> Option<u32> {
    None
}

pub(crate) fn first_conflict(_file: &File, _at: u64, _len: u64) -> Option<(u64, u64)> {
    None
}

/// Nanoseconds since the Unix epoch (see `epoch_ns`).
pub(crate) fn monotonic_ns() -> u64 {
    super::epoch_ns()
}

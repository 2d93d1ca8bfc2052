//! Python regions in a process that shares an outside budget (a node budget, make's
//! jobserver; `BUDGET_NODE`, `budget run`).
//!
//! Such a process holds one token of its own; its supplier thread brings more only
//! while registered demand wants them (`src/config/external/README.md` in budget-core). A Python
//! region that got less than it asked for there registers what it lacks with
//! [`budget_core::Lease::want`] and starts at once with what it has (its own thread
//! at least): it never waits. The supplier fetches for that demand; tokens that arrive
//! while the block runs are held by its lease (its native width was fixed at entry)
//! and freed at its exit, where the next region of the process takes them, or the
//! supplier gives them back after its linger, or at once while another process waits.
//!
//! [`share`] makes the node budget file of `budget.share_node`.

use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::exceptions::{
    PyFileExistsError, PyOSError, PyOverflowError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;

/// Whether this process joined an outside budget.
pub(crate) fn joined() -> bool {
    !matches!(budget_core::joined(), budget_core::Joined::Local)
}

/// `budget.share_node`'s file: a node budget of `tokens` tokens (this process's total
/// when `None`) at `path` (`python-<pid>.node` in budget's node directory when
/// `None`), made unless one is there; returns its path and the tokens it shares.
///
/// `tokens` is checked before anything is made (1 to [`budget_core::MAX_THREADS`],
/// else `ValueError`). No broken file is left behind: one this call linked into place
/// that does not read back is removed, and a file at this process's default path that
/// it did not make here (a dead process's of the same pid) is replaced. A file at a
/// given `path` that is not a node budget file is left as it is (`FileExistsError`).
/// Every `OSError` names the path.
///
/// One node budget per process: a second call with the same count (and no other
/// `path`) returns the first one's path; with another, `RuntimeError`. Unless
/// `children_only`, the process joins the node itself, which it can only do before
/// its budget starts (`RuntimeError` after).
pub(crate) fn share(
    tokens: Option<&Bound<'_, PyAny>>,
    path: Option<PathBuf>,
    children_only: bool,
) -> PyResult<(PathBuf, usize)> {
    let tokens = match tokens {
        Some(tokens) => checked_tokens(tokens)?,
        // What this process's budget has (or will start with): BUDGET_NUM_THREADS,
        // Slurm's count, the CPU quota, the affinity mask.
        None => budget_core::detect().total,
    };
    // The node this process shares already, if any: (path, tokens, whether this
    // process joined it itself).
    static SHARED: Mutex<Option<(PathBuf, usize, bool)>> = Mutex::new(None);
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((first, n, joined)) = shared.as_ref() {
        let same_path = path
            .as_ref()
            .is_none_or(|p| std::path::absolute(p).ok().as_deref() == Some(first.as_path()));
        if *n != tokens || !same_path {
            return Err(PyRuntimeError::new_err(format!(
                "budget.share_node: this process already shares a node budget of {n} \
                 tokens at {}; a second one ({tokens} tokens{}) would split its \
                 processes between two budgets. Call share_node once, or again with \
                 the same count",
                first.display(),
                path.as_ref()
                    .map(|p| format!(" at {}", p.display()))
                    .unwrap_or_default()
            )));
        }
        if children_only || *joined {
            return Ok((first.clone(), *n));
        }
        return Err(PyRuntimeError::new_err(format!(
            "budget.share_node: this process shares the node budget at {} with the \
             processes it starts only (made with children_only=True, or by the joblib \
             backend, after its budget started); it cannot join it now",
            first.display()
        )));
    }
    if !children_only && budget_core::integration::budget_started() {
        return Err(PyRuntimeError::new_err(
            "budget.share_node: this process's budget has already started (a region, \
             limit, stats() or joined() ran), and a running budget cannot join a node \
             budget. Call share_node before the first of them, or pass \
             children_only=True to share it with the processes started from now on only",
        ));
    }
    if children_only {
        // Start this process's budget now, before BUDGET_NODE names the node: a budget
        // starting later would read the variable and join it.
        let _ = budget_core::stats();
    }
    let (path, own) = match path {
        Some(path) => (
            std::path::absolute(&path)
                .map_err(|e| os_error(&e, format!("cannot use {}: {e}", path.display())))?,
            false,
        ),
        None => {
            let dir = budget_core::node::directory().map_err(|e| {
                os_error(
                    &e,
                    format!("{e} (or pass path= a file in a directory of yours)"),
                )
            })?;
            (
                dir.join(format!("python-{}.node", std::process::id())),
                true,
            )
        }
    };
    // This process has made no node yet (`SHARED` is empty): a file at its default
    // name is a dead process's (same pid), made anew, as `budget run` does.
    if own {
        let _ = std::fs::remove_file(&path);
    }
    let existed = path.symlink_metadata().is_ok();
    match budget_core::node::create(&path, tokens) {
        Ok(size) => {
            *shared = Some((path.clone(), size, !children_only));
            Ok((path, size))
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            if !existed {
                // Linked into place by this call (or a racing one) and unreadable:
                // useless to anyone, and it would break every later call.
                let _ = std::fs::remove_file(&path);
            }
            Err(PyFileExistsError::new_err(format!(
                "budget.share_node: {} is there and is not a budget node file; remove it \
                 or pass another path",
                path.display()
            )))
        }
        Err(e) => Err(os_error(
            &e,
            format!("cannot make the node budget file {}: {e}", path.display()),
        )),
    }
}

/// `tokens` as a node budget's size: a whole number from 1 to
/// [`budget_core::MAX_THREADS`], else `ValueError` naming the limit (`TypeError` for
/// what is not a whole number).
fn checked_tokens(tokens: &Bound<'_, PyAny>) -> PyResult<usize> {
    // `True` is an int to Python, and no count anyone means.
    let is_bool = tokens.is_instance_of::<pyo3::types::PyBool>();
    let n = match tokens.extract::<i128>() {
        Ok(_) if is_bool => None,
        Ok(n) => Some(n),
        Err(e) if e.is_instance_of::<PyOverflowError>(tokens.py()) => None,
        Err(e) => return Err(e),
    };
    match n.and_then(|n| usize::try_from(n).ok()) {
        Some(n) if (1..=budget_core::MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(PyValueError::new_err(format!(
            "budget.share_node: tokens must be a whole number from 1 to {} \
             (budget.MAX_THREADS), not {tokens}",
            budget_core::MAX_THREADS
        ))),
    }
}

/// An `OSError` saying `message` (prefixed with `budget.share_node: `), of the
/// subclass that `e`'s errno maps to (`FileNotFoundError`, `PermissionError`, ...).
fn os_error(e: &io::Error, message: String) -> PyErr {
    let message = format!("budget.share_node: {message}");
    match e.raw_os_error() {
        Some(errno) => PyOSError::new_err((errno, message)),
        None => PyOSError::new_err(message),
    }
}

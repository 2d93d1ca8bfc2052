//! `budget.region(max_threads=None)`: the [`Region`] context manager.

use std::thread::{self, ThreadId};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::{cap, frames};

/// A budget region for a `with` block on the current Python thread.
///
/// At entry it takes a width from the process's budget (`r.width`): the thread's own
/// token plus up to `max_threads - 1` free ones, never waiting. Every loaded BLAS and
/// OpenMP library is set to that width for the block, and everything is given back at
/// exit, also when the block raises. Blocks may exit in any order (generators,
/// coroutines). A region must be exited on the thread that entered it.
#[pyclass(module = "budget._budget", name = "Region")]
pub(crate) struct Region {
    max_threads: Option<usize>,
    open: Option<(u64, ThreadId)>,
    width: Option<usize>,
    requested: Option<usize>,
}

#[pymethods]
impl Region {
    #[new]
    #[pyo3(signature = (max_threads=None))]
    fn new(max_threads: Option<&Bound<'_, PyAny>>) -> PyResult<Region> {
        let max_threads = match max_threads {
            None => None,
            Some(value) if value.is_none() => None,
            Some(value) => Some(thread_count(value, "budget.region", "max_threads")?),
        };
        Ok(Region {
            max_threads,
            open: None,
            width: None,
            requested: None,
        })
    }

    /// The width granted at entry (`None` before the block is entered).
    #[getter]
    fn width(&self) -> Option<usize> {
        self.width
    }

    /// The width asked for at entry: `max_threads`, capped by the budget's total and
    /// by a `threadpoolctl.threadpool_limits` in force (`None` before entry).
    #[getter]
    fn requested(&self) -> Option<usize> {
        self.requested
    }

    /// The `max_threads` given (`None`: the whole budget).
    #[getter]
    fn max_threads(&self) -> Option<usize> {
        self.max_threads
    }

    fn __enter__(mut slf: PyRefMut<'_, Self>) -> PyResult<PyRefMut<'_, Self>> {
        if slf.open.is_some() {
            return Err(PyRuntimeError::new_err(
                "this budget.region is already open: a region object is entered once at a \
                 time; make a new budget.region() for a nested block",
            ));
        }
        let total = budget_core::stats().total;
        // Capped by threadpoolctl's limit, and by a `budget.limit` open on this thread.
        let requested = slf
            .max_threads
            .unwrap_or(total)
            .min(frames::limit_in_force().unwrap_or(usize::MAX))
            .clamp(1, cap::allowed(total));
        // The native settings may wait on budget-native's process-wide lock: never hold
        // the GIL meanwhile (another thread holding the lock may be waiting for it).
        let grant = slf.py().detach(|| frames::open_region(requested));
        slf.open = Some((grant.id, thread::current().id()));
        slf.width = Some(grant.width);
        slf.requested = Some(requested);
        Ok(slf)
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&mut self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        exit(py, &mut self.open, "budget.region")?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let state = state(&self.open);
        match self.width {
            Some(w) => format!("<budget.region width={w} ({state})>"),
            None => format!(
                "<budget.region max_threads={} (not entered)>",
                self.max_threads
                    .map_or_else(|| "None".to_owned(), |n| n.to_string())
            ),
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        drop_open(&mut self.open);
    }
}

/// Closes the frame `open` on the calling thread: an error that says what to do if
/// this is another thread or the block is not open.
pub(crate) fn exit(py: Python<'_>, open: &mut Option<(u64, ThreadId)>, what: &str) -> PyResult<()> {
    let Some((id, owner)) = *open else {
        return Err(PyRuntimeError::new_err(format!(
            "{what} exited without being entered (or exited twice)"
        )));
    };
    if owner != thread::current().id() {
        return Err(PyRuntimeError::new_err(format!(
            "{what} must be exited on the thread that entered it: its thread counts and \
             tokens belong to that thread ({owner:?}), this is {:?}. Enter a new block on \
             this thread instead (a generator holding a block must be resumed and closed \
             on the thread that started it)",
            thread::current().id()
        )));
    }
    *open = None;
    let closed = py.detach(|| frames::close(id));
    debug_assert!(closed, "an open frame is on its thread's stack");
    Ok(())
}

/// "open" or "closed", for a context manager's `__repr__`.
pub(crate) fn state(open: &Option<(u64, ThreadId)>) -> &'static str {
    if open.is_some() {
        "open"
    } else {
        "closed"
    }
}

/// A block object dropped while still open (entered by hand, never exited): closed if
/// this is its thread; otherwise it stays open until its thread ends, which gives its
/// tokens back and restores its settings.
pub(crate) fn drop_open(open: &mut Option<(u64, ThreadId)>) {
    if let Some((id, owner)) = open.take() {
        if owner == thread::current().id() {
            Python::attach(|py| py.detach(|| frames::close(id)));
        }
    }
}

/// A thread count given to `what` as `arg`: a whole number of at least 1 (a `bool` is
/// not one, though Python counts it as an int). `ValueError` names the argument and
/// what is allowed; `TypeError` for what is no whole number at all.
pub(crate) fn thread_count(value: &Bound<'_, PyAny>, what: &str, arg: &str) -> PyResult<usize> {
    let shown = value
        .repr()
        .map_or_else(|_| "?".to_owned(), |r| r.to_string());
    let bad = || {
        PyValueError::new_err(format!(
            "{what}: {arg} must be a whole number of at least 1 (or None), not {shown}"
        ))
    };
    if value.is_instance_of::<pyo3::types::PyBool>() {
        return Err(bad());
    }
    let Ok(n) = value.extract::<i128>() else {
        return Err(PyTypeError::new_err(format!(
            "{what}: {arg} must be a whole number of at least 1 (or None), not {shown}"
        )));
    };
    if n < 1 {
        return Err(bad());
    }
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

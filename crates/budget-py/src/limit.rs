//! `budget.limit(n)`: the [`Limit`] context manager.

use std::thread::ThreadId;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::frames;
use crate::region::{drop_open, exit, state};

/// Every loaded BLAS and OpenMP library limited to `n` threads for a `with` block, as
/// `threadpoolctl.threadpool_limits(n)`, but safe from any number of threads at once:
/// per-thread settings on the calling thread, process-wide ones under one lock (the
/// smallest limit in flight wins), every count restored exactly at exit, also when
/// the block raises. Takes no tokens from the budget.
#[pyclass(module = "budget._budget", name = "Limit")]
pub(crate) struct Limit {
    n: usize,
    open: Option<(u64, ThreadId)>,
}

#[pymethods]
impl Limit {
    #[new]
    fn new(n: usize) -> Limit {
        Limit {
            n: n.max(1),
            open: None,
        }
    }

    /// The thread count this block sets (at least 1).
    #[getter]
    fn width(&self) -> usize {
        self.n
    }

    fn __enter__(mut slf: PyRefMut<'_, Self>) -> PyResult<PyRefMut<'_, Self>> {
        if slf.open.is_some() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "this budget.limit is already open: make a new budget.limit(n) for a nested block",
            ));
        }
        let n = slf.n;
        let id = slf.py().detach(|| frames::open_limit(n));
        slf.open = Some((id, std::thread::current().id()));
        Ok(slf)
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&mut self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        exit(py, &mut self.open, "budget.limit")?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let state = state(&self.open);
        format!("<budget.limit {} ({state})>", self.n)
    }
}

impl Drop for Limit {
    fn drop(&mut self) {
        drop_open(&mut self.open);
    }
}

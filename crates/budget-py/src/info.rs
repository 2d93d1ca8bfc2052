//! What the module reports: the native libraries found (`_libraries`, shaped into
//! threadpoolctl's format by `budget.threadpool_info()` in Python) and the budget's
//! statistics (`budget.stats()`).

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::cap;

/// Every OpenMP/BLAS library loaded in the process now, as budget-native finds it: a
/// list of dicts with `family`, `path`, `symbol_prefix`, `symbol_suffix`, `version`,
/// `threading_layer`, `num_threads` (as the calling thread sees it), `setting`
/// (`per-thread`, `process-wide`, `fixed`) and `unsupported` (why budget leaves it
/// alone, or `None`).
#[pyfunction]
pub(crate) fn _libraries(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    // The scan takes the loader's lock (dl_iterate_phdr): not while holding the GIL.
    let libs = py.detach(budget_native::libraries);
    let out = PyList::empty(py);
    for lib in libs.iter() {
        let d = PyDict::new(py);
        d.set_item("family", lib.family.to_string())?;
        d.set_item("path", lib.path.to_string_lossy().into_owned())?;
        d.set_item("symbol_prefix", &lib.symbols.0)?;
        d.set_item("symbol_suffix", &lib.symbols.1)?;
        d.set_item("version", lib.version.as_deref())?;
        d.set_item("threading_layer", lib.threading_layer.to_string())?;
        d.set_item("num_threads", lib.num_threads)?;
        d.set_item("setting", lib.setting.to_string())?;
        d.set_item("unsupported", lib.unsupported.as_deref())?;
        out.append(d)?;
    }
    Ok(out)
}

/// The budget's statistics as a dict: `total`, `in_use`, `peak_in_use`, `leased`
/// (tokens held by leases, Python regions' among them), `regions`,
/// `grants_below_request` and its causes `narrowed_by_regions`, `narrowed_by_leases`,
/// `narrowed_by_processes`, `tokens_regrown`, `overcommit`, `worker_threads` (Rust
/// regions and Python regions together), and `cap` (the threadpoolctl limit on region
/// widths in force, or `None`).
#[pyfunction]
pub(crate) fn stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let s = py.detach(budget_core::stats);
    let d = PyDict::new(py);
    d.set_item("total", s.total)?;
    d.set_item("in_use", s.in_use)?;
    d.set_item("peak_in_use", s.peak_in_use)?;
    d.set_item("leased", s.leased)?;
    d.set_item("regions", s.regions)?;
    d.set_item("grants_below_request", s.grants_below_request)?;
    d.set_item("narrowed_by_regions", s.narrowed_by_regions)?;
    d.set_item("narrowed_by_leases", s.narrowed_by_leases)?;
    d.set_item("narrowed_by_processes", s.narrowed_by_processes)?;
    d.set_item("tokens_regrown", s.tokens_regrown)?;
    d.set_item("overcommit", s.overcommit)?;
    d.set_item("worker_threads", s.worker_threads)?;
    d.set_item("cap", cap::get())?;
    Ok(d)
}

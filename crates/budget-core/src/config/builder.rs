//! [`Builder`]: setting the budget explicitly before its first use.

use std::fmt;
use std::sync::Arc;

use crate::config::detect::{Source, MAX_THREADS};
use crate::pool::process;
use crate::pool::registry::{self, ThreadSettings};

/// Configures the process-wide budget before anything uses it.
///
/// Without a builder the budget starts on first use with the detected cores, or
/// `BUDGET_NUM_THREADS` when that holds a valid number. An application that knows
/// better (a scheduler gave it 6 of 8 cores, say) sets the total first thing in
/// `main`.
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// match budget::Builder::new().num_threads(3).build_global() {
///     Ok(()) => assert_eq!(budget::stats().total, 3),
///     // Something in this process already used the budget.
///     Err(budget::BuildError::AlreadyRunning { total }) => assert_eq!(budget::stats().total, total),
///     Err(other) => panic!("{other}"),
/// }
/// ```
#[derive(Clone, Default)]
pub struct Builder {
    num_threads: Option<usize>,
    threads: ThreadSettings,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("num_threads", &self.num_threads)
            .field("stack_size", &self.threads.stack_size)
            .field("thread_name", &self.threads.name.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

impl Builder {
    /// A builder with every setting at its default.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// let builder = budget::Builder::new();
    /// # drop(builder);
    /// ```
    pub fn new() -> Self {
        Builder::default()
    }

    /// Sets the total number of cores in the budget, overriding detection and
    /// `BUDGET_NUM_THREADS`. Checked by [`build_global`](Builder::build_global):
    /// it must be from 1 to 4096.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// let builder = budget::Builder::new().num_threads(8);
    /// # drop(builder);
    /// ```
    pub fn num_threads(mut self, total: usize) -> Self {
        self.num_threads = Some(total);
        self
    }

    /// Sets the stack size, in bytes, of the worker threads budget starts: its own
    /// pool's and the rayon pools' that regions lease (as
    /// `rayon::ThreadPoolBuilder::stack_size`). Default: std's (2 MiB, or
    /// `RUST_MIN_STACK`).
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// let builder = budget::Builder::new().stack_size(8 << 20);
    /// # drop(builder);
    /// ```
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.threads.stack_size = Some(bytes);
        self
    }

    /// Names the worker threads budget starts, from their index in their pool (as
    /// `rayon::ThreadPoolBuilder::thread_name`). Default: `budget-worker-{i}` and
    /// `budget-rayon-{width}-{i}`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// let builder = budget::Builder::new().thread_name(|i| format!("solver-{i}"));
    /// # drop(builder);
    /// ```
    pub fn thread_name(mut self, name: impl Fn(usize) -> String + Send + Sync + 'static) -> Self {
        self.threads.name = Some(Arc::new(name));
        self
    }

    /// Starts the process-wide budget with these settings.
    ///
    /// # Errors
    ///
    /// [`BuildError::AlreadyRunning`] if the budget was already used or built in
    /// this process; [`BuildError::InvalidThreads`] for a total of 0 or above 4096.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// let error = budget::Builder::new().num_threads(0).build_global().unwrap_err();
    /// assert_eq!(error, budget::BuildError::InvalidThreads { requested: 0 });
    /// ```
    pub fn build_global(self) -> Result<(), BuildError> {
        let (total, source) = match self.num_threads {
            Some(n) if n == 0 || n > MAX_THREADS => {
                return Err(BuildError::InvalidThreads { requested: n })
            }
            Some(n) => (n, Source::Builder),
            None => crate::config::detect::configured_total_and_source(),
        };
        // Before the registry exists, so its first worker starts with them; a second
        // builder (refused below) changes nothing.
        if !process::started() {
            registry::set_thread_settings(self.threads);
        }
        process::install(Some(total))
            .map_err(|running| BuildError::AlreadyRunning { total: running.0 })?;
        crate::config::detect::record_build(total, source);
        Ok(())
    }
}

/// Why [`Builder::build_global`] failed.
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// let error = budget::BuildError::AlreadyRunning { total: 4 };
/// assert!(error.to_string().contains("already running"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// The budget was already started, by an earlier `build_global` or by the first
    /// region, `stats()` or other use; it keeps `total` cores.
    AlreadyRunning {
        /// The total of the budget that is running.
        total: usize,
    },
    /// The requested total is 0 or larger than 4096.
    InvalidThreads {
        /// The total that was asked for.
        requested: usize,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::AlreadyRunning { total } => write!(
                f,
                "the budget is already running with {total} cores: call \
                 budget::Builder::build_global before any region, stats() or other use of \
                 budget in this process (first thing in main)"
            ),
            BuildError::InvalidThreads { requested } => write!(
                f,
                "a budget of {requested} cores is not possible: choose a total from 1 to \
                 {MAX_THREADS}"
            ),
        }
    }
}

impl std::error::Error for BuildError {}

//! The public description of a native library found in the process: [`Library`],
//! its [`Family`], [`ThreadingLayer`] and [`SettingScope`], and the list
//! [`Libraries`] that prints as a small table.

use std::fmt;
use std::path::PathBuf;

/// Which kind of library a [`Library`] is.
///
/// # Examples
///
/// ```
/// use budget_native::Family;
/// assert_eq!(Family::OpenBlas.to_string(), "openblas");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Family {
    /// OpenBLAS, including the `scipy_openblas` build that NumPy/SciPy wheels ship.
    OpenBlas,
    /// BLIS.
    Blis,
    /// Intel oneMKL through its single dynamic library `libmkl_rt`.
    Mkl,
    /// FlexiBLAS, the BLAS wrapper that switches backends at run time.
    FlexiBlas,
    /// An OpenMP runtime: GNU libgomp, LLVM libomp or Intel libiomp5.
    OpenMp,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Family::OpenBlas => "openblas",
            Family::Blis => "blis",
            Family::Mkl => "mkl",
            Family::FlexiBlas => "flexiblas",
            Family::OpenMp => "openmp",
        })
    }
}

/// How a library runs its threads.
///
/// # Examples
///
/// ```
/// use budget_native::ThreadingLayer;
/// assert_eq!(ThreadingLayer::Pthreads.to_string(), "pthreads");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ThreadingLayer {
    /// Its own pool of POSIX threads (OpenBLAS, BLIS built with pthreads).
    Pthreads,
    /// An OpenMP runtime (an OpenMP runtime itself, or a BLAS built on one; MKL's
    /// `intel`, `gnu` and `pgi` layers).
    OpenMp,
    /// Intel TBB (MKL's `tbb` layer).
    Tbb,
    /// No threads at all.
    Sequential,
    /// The library did not say (FlexiBLAS, MKL before its layer is chosen, or an
    /// unsupported library).
    Unknown,
}

impl fmt::Display for ThreadingLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            ThreadingLayer::Pthreads => "pthreads",
            ThreadingLayer::OpenMp => "openmp",
            ThreadingLayer::Tbb => "tbb",
            ThreadingLayer::Sequential => "sequential",
            ThreadingLayer::Unknown => "unknown",
        })
    }
}

/// Whether a library's thread count belongs to each calling thread or to the process.
///
/// # Examples
///
/// ```
/// use budget_native::SettingScope;
/// assert_eq!(SettingScope::ProcessWide.to_string(), "process-wide");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SettingScope {
    /// Each thread has its own count (`omp_set_num_threads`,
    /// `mkl_set_num_threads_local`): budget sets it on the calling thread, no lock.
    PerThread,
    /// One count for the whole process (OpenBLAS on pthreads or OpenMP, BLIS,
    /// FlexiBLAS): budget changes it under one process-wide lock, and counts the
    /// OpenBLAS pthreads pool as one lease.
    ProcessWide,
    /// Nothing to set: a sequential build, or an unsupported library.
    Fixed,
}

impl fmt::Display for SettingScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            SettingScope::PerThread => "per-thread",
            SettingScope::ProcessWide => "process-wide",
            SettingScope::Fixed => "fixed",
        })
    }
}

/// One OpenMP or BLAS library loaded in the process, as [`libraries`](crate::libraries)
/// found it.
///
/// # Examples
///
/// ```
/// for lib in budget_native::libraries().iter() {
///     println!("{} {} at {}", lib.family, lib.threading_layer, lib.path.display());
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Library {
    /// What kind of library it is.
    pub family: Family,
    /// The file name the loader knows it by (as `dl_iterate_phdr` reports it).
    pub path: PathBuf,
    /// The symbol naming it uses, e.g. `scipy_openblas_*64_`: the prefix and suffix
    /// around the plain names (`""` and `""` for most).
    pub symbols: (String, String),
    /// The library's own version string where it has one (`0.3.21`, `0.9.0`,
    /// `2025.0.1`); OpenMP runtimes expose none.
    pub version: Option<String>,
    /// How it runs its threads.
    pub threading_layer: ThreadingLayer,
    /// Its thread count now, as the calling thread sees it (per-thread settings differ
    /// between threads); `None` if unsupported.
    pub num_threads: Option<usize>,
    /// Whether budget sets its count per thread or process-wide.
    pub setting: SettingScope,
    /// Why budget cannot control it (a missing symbol, say), or `None` if it can.
    pub unsupported: Option<String>,
}

impl Library {
    /// Whether budget controls this library's thread count.
    ///
    /// # Examples
    ///
    /// ```
    /// let all = budget_native::libraries();
    /// let controlled = all.iter().filter(|l| l.is_supported()).count();
    /// assert!(controlled <= all.len());
    /// ```
    pub fn is_supported(&self) -> bool {
        self.unsupported.is_none()
    }
}

/// Every OpenMP and BLAS library found by one scan; derefs to `[Library]` and prints as
/// a table.
///
/// # Examples
///
/// ```
/// let libs = budget_native::libraries();
/// println!("{libs}"); // a header line, then one line per library
/// assert_eq!(libs.is_empty(), libs.len() == 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Libraries(pub(crate) Vec<Library>);

impl Libraries {
    /// The first library of `family`, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// use budget_native::Family;
    /// if let Some(blas) = budget_native::libraries().find(Family::OpenBlas) {
    ///     println!("OpenBLAS {:?}", blas.version);
    /// }
    /// ```
    pub fn find(&self, family: Family) -> Option<&Library> {
        self.0.iter().find(|l| l.family == family)
    }

    /// The libraries, as a vector.
    ///
    /// # Examples
    ///
    /// ```
    /// let v: Vec<budget_native::Library> = budget_native::libraries().into_vec();
    /// # let _ = v;
    /// ```
    pub fn into_vec(self) -> Vec<Library> {
        self.0
    }
}

impl std::ops::Deref for Libraries {
    type Target = [Library];
    fn deref(&self) -> &[Library] {
        &self.0
    }
}

impl IntoIterator for Libraries {
    type Item = Library;
    type IntoIter = std::vec::IntoIter<Library>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Libraries {
    type Item = &'a Library;
    type IntoIter = std::slice::Iter<'a, Library>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for Libraries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<10} {:<12} {:<10} {:>7}  {:<12} path",
            "family", "version", "layer", "threads", "setting"
        )?;
        if self.0.is_empty() {
            return writeln!(f, "(no OpenMP or BLAS library loaded)");
        }
        for l in &self.0 {
            let version = l.version.as_deref().unwrap_or("-");
            let threads = l
                .num_threads
                .map_or_else(|| "-".to_string(), |n| n.to_string());
            let setting = match &l.unsupported {
                Some(_) => "unsupported".to_string(),
                None => l.setting.to_string(),
            };
            write!(
                f,
                "{:<10} {:<12} {:<10} {:>7}  {:<12} {}",
                l.family,
                version,
                l.threading_layer,
                threads,
                setting,
                l.path.display()
            )?;
            if let Some(why) = &l.unsupported {
                write!(f, " ({why})")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

//! One loaded library as budget controls it: the functions resolved through its own
//! handle ([`Control`]), and how they are found for each family ([`Entry::resolve`]).
//!
//! Symbol naming: the plain name, then the `scipy_` prefix and the `64_` / `_64`
//! suffixes that the OpenBLAS of NumPy/SciPy wheels uses
//! (`scipy_openblas_set_num_threads64_`), as threadpoolctl tries them.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};

use crate::dl::Handle;
use crate::library::{Family, Library, SettingScope, ThreadingLayer};

pub(crate) type GetInt = unsafe extern "C" fn() -> c_int;
pub(crate) type SetInt = unsafe extern "C" fn(c_int);
pub(crate) type SetIntRet = unsafe extern "C" fn(c_int) -> c_int;
pub(crate) type GetDim = unsafe extern "C" fn() -> i64;
pub(crate) type SetDim = unsafe extern "C" fn(i64);

/// The functions budget calls on one library.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Control {
    /// An OpenMP runtime: per-thread `omp_set_num_threads`, and `kmp_set_blocktime` in
    /// LLVM libomp and Intel libiomp5.
    OpenMp {
        get: GetInt,
        set: SetInt,
        set_blocktime: Option<SetInt>,
        get_blocktime: Option<GetInt>,
    },
    /// MKL: `mkl_set_num_threads_local` returns the previous thread-local value.
    Mkl { get: GetInt, set_local: SetIntRet },
    /// A process-wide count held as a C `int` (OpenBLAS on pthreads, FlexiBLAS).
    ProcessWideInt {
        get: GetInt,
        set: SetInt,
        /// How long the pool's idle threads spin after a call (OpenBLAS), if they do.
        spin: Option<std::time::Duration>,
    },
    /// A process-wide count held as BLIS's `dim_t` (64-bit).
    ProcessWideDim { get: GetDim, set: SetDim },
    /// OpenBLAS built on OpenMP: one global count (`openblas_get_num_threads`) that
    /// each call re-syncs to the caller's `omp_get_max_threads()` of the OpenMP
    /// runtime it links (`omp_get`/`omp_set`, resolved through OpenBLAS's handle).
    OpenBlasOpenMp {
        get: GetInt,
        set: SetInt,
        omp_get: GetInt,
        omp_set: SetInt,
    },
    /// Nothing budget sets (sequential, or unsupported); `get`
    /// reads the count for the report where there is one.
    Fixed { get: Option<GetInt> },
}

/// A loaded library: its description and its control, kept for the whole process
/// (the handle is never closed).
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) path: PathBuf,
    pub(crate) family: Family,
    pub(crate) symbols: (String, String),
    pub(crate) version: Option<String>,
    pub(crate) layer: ThreadingLayer,
    pub(crate) control: Control,
    pub(crate) unsupported: Option<String>,
    _handle: Option<Handle>,
}

/// The family a loaded object's file name says it is, as threadpoolctl matches them:
/// Linux's `.so`, macOS's `.dylib` (Homebrew's `libomp`, `libopenblas`) and Windows'
/// DLLs (`openblas.dll`, `mkl_rt.2.dll`, MSVC's OpenMP `vcomp140.dll`, `libiomp5md`),
/// whose names are matched without regard to case.
pub(crate) fn family_of(path: &Path) -> Option<Family> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    const PREFIXES: &[(&str, Family)] = &[
        ("libopenblas", Family::OpenBlas),
        ("libscipy_openblas", Family::OpenBlas),
        ("openblas", Family::OpenBlas),
        ("libblis", Family::Blis),
        ("libmkl_rt", Family::Mkl),
        ("mkl_rt", Family::Mkl),
        ("libflexiblas", Family::FlexiBlas),
        ("libgomp", Family::OpenMp),
        ("libomp", Family::OpenMp),
        ("libiomp", Family::OpenMp),
        ("vcomp", Family::OpenMp),
    ];
    PREFIXES
        .iter()
        .find(|(p, _)| name.starts_with(p))
        .map(|&(_, f)| f)
}

const PREFIXES: [&str; 2] = ["", "scipy_"];
const SUFFIXES: [&str; 3] = ["", "64_", "_64"];

struct Lookup<'a> {
    handle: &'a Handle,
    path: &'a Path,
    prefix: &'static str,
    suffix: &'static str,
}

impl Lookup<'_> {
    fn sym(&self, name: &str) -> Option<*mut c_void> {
        let full = format!("{}{}{}", self.prefix, name, self.suffix);
        self.handle.own_symbol(&full, self.path)
    }

    /// `name` as a function pointer of type `F`.
    ///
    /// # Safety
    ///
    /// `F` must be an `unsafe extern "C" fn` type matching the C prototype of `name`.
    unsafe fn func<F: Copy>(&self, name: &str) -> Option<F> {
        debug_assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
        // SAFETY: the caller guarantees `F` is the function's type; a data pointer
        // returned by dlsym for a function symbol is its entry address, and `F` is a
        // pointer-sized fn pointer. The handle is never closed, so it stays valid.
        self.sym(name)
            .map(|p| unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
    }

    /// `name` as this object resolves it, in itself or in a dependency (the OpenMP
    /// runtime an OpenBLAS links), without the naming's prefix and suffix.
    ///
    /// # Safety
    ///
    /// As [`Lookup::func`].
    unsafe fn linked<F: Copy>(&self, name: &str) -> Result<F, String> {
        let p = self
            .handle
            .symbol(name)
            .ok_or_else(|| format!("{name} not found from this library"))?;
        // SAFETY: as in `func`; the caller guarantees `F`.
        Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
    }

    /// `name` (under this naming) as a function pointer of type `F`, or why not.
    ///
    /// # Safety
    ///
    /// The pointer is transmuted to `F` unchecked, so the caller guarantees:
    ///
    /// - `F` is an `unsafe extern "C" fn` pointer type (pointer-sized, as checked in
    ///   debug builds), with exactly the C prototype the library documents for `name`
    ///   (argument and return types, integer widths of an ILP64 build included);
    /// - `name` is a function symbol, not data;
    /// - the result is only called while the library stays loaded, which holds
    ///   because an [`Entry`] keeps its handle for the rest of the process (never
    ///   closed), and by the rules of that function (thread safety included: the
    ///   process-wide setters only under the `process_wide` lock).
    unsafe fn required<F: Copy>(&self, name: &str) -> Result<F, String> {
        // SAFETY: the caller upholds `func`'s contract (this one's first two points).
        unsafe { self.func::<F>(name) }
            .ok_or_else(|| format!("missing symbol {}{}{}", self.prefix, name, self.suffix))
    }
}

fn c_string(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the libraries return pointers to static NUL-terminated strings.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// The first whitespace-separated word that starts with a digit.
fn version_word(s: &str) -> Option<String> {
    s.split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_string()
        })
}

impl Entry {
    /// Looks at the loaded object `path` of `family`. Never fails: what cannot be
    /// controlled is an entry with `unsupported` set and a [`Control::Fixed`].
    pub(crate) fn resolve(path: PathBuf, family: Family) -> Entry {
        let mut entry = Entry {
            path,
            family,
            symbols: (String::new(), String::new()),
            version: None,
            layer: ThreadingLayer::Unknown,
            control: Control::Fixed { get: None },
            unsupported: None,
            _handle: None,
        };
        let Some(handle) = Handle::open_loaded(&entry.path) else {
            entry.unsupported = Some("dlopen(RTLD_NOLOAD) found no such loaded object".into());
            return entry;
        };
        let result = {
            let path = entry.path.clone();
            // The naming that defines the family's key symbol decides the others.
            let key = match family {
                Family::OpenBlas => "openblas_get_config",
                Family::Blis => "bli_thread_set_num_threads",
                Family::Mkl => "MKL_Get_Max_Threads",
                Family::FlexiBlas => "flexiblas_get_num_threads",
                Family::OpenMp => "omp_set_num_threads",
            };
            let naming = PREFIXES
                .iter()
                .flat_map(|&p| SUFFIXES.iter().map(move |&s| (p, s)))
                .find(|&(prefix, suffix)| {
                    Lookup {
                        handle: &handle,
                        path: &path,
                        prefix,
                        suffix,
                    }
                    .sym(key)
                    .is_some()
                });
            match naming {
                None => Err(format!("missing symbol {key}")),
                Some((prefix, suffix)) => {
                    entry.symbols = (prefix.to_string(), suffix.to_string());
                    let l = Lookup {
                        handle: &handle,
                        path: &path,
                        prefix,
                        suffix,
                    };
                    entry.fill(&l)
                }
            }
        };
        if let Err(why) = result {
            entry.unsupported = Some(why);
            entry.control = Control::Fixed { get: None };
        }
        entry._handle = Some(handle);
        entry
    }

    fn fill(&mut self, l: &Lookup<'_>) -> Result<(), String> {
        match self.family {
            Family::OpenMp => {
                self.layer = ThreadingLayer::OpenMp;
                // SAFETY: `void kmp_set_blocktime(int)` is the prototype of this symbol.
                let set_blocktime = unsafe { l.func::<SetInt>("kmp_set_blocktime") };
                // SAFETY: `int kmp_get_blocktime(void)` is the prototype of this symbol.
                let get_blocktime = unsafe { l.func::<GetInt>("kmp_get_blocktime") };
                self.control = Control::OpenMp {
                    // SAFETY: `int omp_get_max_threads(void)`, the type given here.
                    get: unsafe { l.required::<GetInt>("omp_get_max_threads") }?,
                    // SAFETY: `void omp_set_num_threads(int)`, the type given here.
                    set: unsafe { l.required::<SetInt>("omp_set_num_threads") }?,
                    set_blocktime,
                    get_blocktime,
                };
            }
            Family::OpenBlas => {
                // SAFETY: `char *openblas_get_config(void)`, the type given here.
                let config: unsafe extern "C" fn() -> *const c_char =
                    unsafe { l.required("openblas_get_config") }?;
                // SAFETY: `char *openblas_get_config(void)` returns a static string.
                let config = c_string(unsafe { config() }).unwrap_or_default();
                // "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64"
                self.version = version_word(&config);
                // SAFETY: `int openblas_get_parallel(void)`, the type given here.
                let parallel: GetInt = unsafe { l.required("openblas_get_parallel") }?;
                // SAFETY: `int openblas_get_num_threads(void)`, the type given here.
                let get: GetInt = unsafe { l.required("openblas_get_num_threads") }?;
                // SAFETY: `int openblas_get_parallel(void)`: 0 sequential, 1 pthreads,
                // 2 OpenMP.
                match unsafe { parallel() } {
                    0 => {
                        self.layer = ThreadingLayer::Sequential;
                        self.control = Control::Fixed { get: Some(get) };
                    }
                    1 => {
                        self.layer = ThreadingLayer::Pthreads;
                        // SAFETY: `void openblas_set_num_threads(int)`, the type given here.
                        let set: SetInt = unsafe { l.required("openblas_set_num_threads") }?;
                        self.control = Control::ProcessWideInt {
                            get,
                            set,
                            spin: Some(openblas_spin_window()),
                        };
                    }
                    2 => {
                        // Each call re-syncs the library's one global count to the
                        // caller's OpenMP count: budget keeps every caller's count
                        // equal to it while calls are in flight (see `process_wide`).
                        self.layer = ThreadingLayer::OpenMp;
                        self.control = Control::OpenBlasOpenMp {
                            get,
                            // SAFETY: `void openblas_set_num_threads(int)`, the type given here.
                            set: unsafe { l.required("openblas_set_num_threads") }?,
                            // SAFETY: `int omp_get_max_threads(void)`.
                            omp_get: unsafe { l.linked("omp_get_max_threads") }?,
                            // SAFETY: `void omp_set_num_threads(int)`.
                            omp_set: unsafe { l.linked("omp_set_num_threads") }?,
                        };
                    }
                    other => return Err(format!("unknown openblas_get_parallel() = {other}")),
                }
            }
            Family::Blis => {
                // SAFETY: `char *bli_info_get_version_str(void)`, the type given here.
                let version: unsafe extern "C" fn() -> *const c_char =
                    unsafe { l.required("bli_info_get_version_str") }?;
                // SAFETY: `char *bli_info_get_version_str(void)` returns a static string.
                self.version = c_string(unsafe { version() });
                // SAFETY: `gint_t bli_info_get_enable_openmp(void)`, the type given here.
                let omp: GetDim = unsafe { l.required("bli_info_get_enable_openmp") }?;
                // SAFETY: `gint_t bli_info_get_enable_pthreads(void)`, the type given here.
                let pth: GetDim = unsafe { l.required("bli_info_get_enable_pthreads") }?;
                // SAFETY: `gint_t bli_info_get_enable_openmp(void)` and `..._pthreads`.
                self.layer = match unsafe { (omp(), pth()) } {
                    (o, _) if o != 0 => ThreadingLayer::OpenMp,
                    (_, p) if p != 0 => ThreadingLayer::Pthreads,
                    _ => ThreadingLayer::Sequential,
                };
                // SAFETY: `dim_t bli_thread_get_num_threads(void)`, the type given here.
                let get: GetDim = unsafe { l.required("bli_thread_get_num_threads") }?;
                // SAFETY: `void bli_thread_set_num_threads(dim_t)`, the type given here.
                let set: SetDim = unsafe { l.required("bli_thread_set_num_threads") }?;
                // BLIS keeps one global runtime (also when built on OpenMP, where it
                // does not follow omp_set_num_threads), so the count is process-wide.
                self.control = if self.layer == ThreadingLayer::Sequential {
                    Control::Fixed { get: None }
                } else {
                    Control::ProcessWideDim { get, set }
                };
            }
            Family::Mkl => {
                // SAFETY: `void MKL_Get_Version_String(char *, int)`, the type given here.
                let version: unsafe extern "C" fn(*mut c_char, c_int) =
                    unsafe { l.required("MKL_Get_Version_String") }?;
                let mut buf = [0 as c_char; 256];
                // SAFETY: `void MKL_Get_Version_String(char *buf, int len)` writes at
                // most `len` bytes, NUL-terminated.
                unsafe { version(buf.as_mut_ptr(), buf.len() as c_int - 1) };
                let text = c_string(buf.as_ptr()).unwrap_or_default();
                // "Intel(R) oneAPI Math Kernel Library Version 2025.0.1-Product Build ..."
                self.version = text
                    .split("Version ")
                    .nth(1)
                    .and_then(|v| v.split(['-', ' ']).next())
                    .map(str::to_string);
                // `int MKL_Set_Threading_Layer(int)` with an invalid code changes
                // nothing and returns the current layer (threadpoolctl's trick).
                let layer: Option<SetIntRet> =
                    // SAFETY: prototype as above.
                    unsafe { l.func("MKL_Set_Threading_Layer") };
                self.layer = match layer.map(|f| {
                    // SAFETY: prototype as above; -1 is no valid layer.
                    unsafe { f(-1) }
                }) {
                    Some(0 | 2 | 3) => ThreadingLayer::OpenMp, // intel, pgi, gnu
                    Some(1) => ThreadingLayer::Sequential,
                    Some(4) => ThreadingLayer::Tbb,
                    _ => ThreadingLayer::Unknown,
                };
                self.control = Control::Mkl {
                    // SAFETY: `int MKL_Get_Max_Threads(void)`, the type given here.
                    get: unsafe { l.required("MKL_Get_Max_Threads") }?,
                    // SAFETY: `int MKL_Set_Num_Threads_Local(int)`, the type given here.
                    set_local: unsafe { l.required("MKL_Set_Num_Threads_Local") }?,
                };
            }
            Family::FlexiBlas => {
                // SAFETY: `int flexiblas_get_version(int *, int *, int *)`, the type given here.
                let version: unsafe extern "C" fn(*mut c_int, *mut c_int, *mut c_int) -> c_int =
                    unsafe { l.required("flexiblas_get_version") }?;
                let (mut a, mut b, mut c) = (0, 0, 0);
                // SAFETY: `int flexiblas_get_version(int *major, int *minor, int *patch)`.
                unsafe { version(&mut a, &mut b, &mut c) };
                self.version = Some(format!("{a}.{b}.{c}"));
                self.control = Control::ProcessWideInt {
                    // SAFETY: `int flexiblas_get_num_threads(void)`, the type given here.
                    get: unsafe { l.required("flexiblas_get_num_threads") }?,
                    // SAFETY: `void flexiblas_set_num_threads(int)`, the type given here.
                    set: unsafe { l.required("flexiblas_set_num_threads") }?,
                    spin: None,
                };
            }
        }
        Ok(())
    }

    /// Whether this is GNU libgomp (which cannot fork its thread team).
    pub(crate) fn is_libgomp(&self) -> bool {
        self.family == Family::OpenMp
            && self
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libgomp"))
    }

    /// How budget sets this entry.
    pub(crate) fn setting(&self) -> SettingScope {
        match self.control {
            Control::OpenMp { .. } | Control::Mkl { .. } => SettingScope::PerThread,
            Control::ProcessWideInt { .. }
            | Control::ProcessWideDim { .. }
            | Control::OpenBlasOpenMp { .. } => SettingScope::ProcessWide,
            Control::Fixed { .. } => SettingScope::Fixed,
        }
    }

    /// The count now, as the calling thread sees it.
    pub(crate) fn num_threads(&self) -> Option<usize> {
        // SAFETY: each pointer was resolved with its documented prototype and the
        // handle keeps the library loaded; these getters have no preconditions.
        let n = unsafe {
            match self.control {
                Control::OpenMp { get, .. }
                | Control::Mkl { get, .. }
                | Control::ProcessWideInt { get, .. }
                | Control::OpenBlasOpenMp { get, .. } => i64::from(get()),
                // BLIS reports -1 while no count was set: it then runs 1 thread
                // (unless BLIS_NUM_THREADS was read at start, which sets it).
                Control::ProcessWideDim { get, .. } => get().max(1),
                Control::Fixed { get: Some(get) } => i64::from(get()),
                Control::Fixed { get: None } => {
                    return (self.unsupported.is_none() && self.layer == ThreadingLayer::Sequential)
                        .then_some(1)
                }
            }
        };
        usize::try_from(n).ok()
    }

    /// The public description, with the count read now.
    pub(crate) fn describe(&self) -> Library {
        Library {
            family: self.family,
            path: self.path.clone(),
            symbols: self.symbols.clone(),
            version: self.version.clone(),
            threading_layer: self.layer,
            num_threads: self.num_threads(),
            setting: self.setting(),
            unsupported: self.unsupported.clone(),
        }
    }
}

/// How long OpenBLAS's pthreads workers busy-wait after a call before they sleep:
/// `2^OPENBLAS_THREAD_TIMEOUT` cycles (default exponent 28, clamped to 4..=30, read by
/// OpenBLAS once at load), taken at 2 GHz.
fn openblas_spin_window() -> std::time::Duration {
    let exp = ["OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse::<u32>().ok())
        .filter(|&e| e > 0)
        .map_or(28, |e| e.clamp(4, 30));
    std::time::Duration::from_nanos((1u64 << exp) / 2)
}

#[cfg(test)]
mod tests {
    use super::{family_of, Family};
    use std::path::Path;

    #[test]
    fn file_names_of_each_os_name_their_family() {
        let f = |name: &str| family_of(Path::new(name));
        // Linux
        assert_eq!(
            f("/usr/lib/x86_64-linux-gnu/libgomp.so.1"),
            Some(Family::OpenMp)
        );
        assert_eq!(
            f("libscipy_openblas64_-ff651d7f.so"),
            Some(Family::OpenBlas)
        );
        // macOS (Homebrew)
        assert_eq!(
            f("/opt/homebrew/opt/libomp/lib/libomp.dylib"),
            Some(Family::OpenMp)
        );
        assert_eq!(f("libopenblas.0.dylib"), Some(Family::OpenBlas));
        // Windows (bare names: a backslashed path is one file name on Unix)
        assert_eq!(f("libscipy_openblas64_-abc.dll"), Some(Family::OpenBlas));
        assert_eq!(f("OPENBLAS.DLL"), Some(Family::OpenBlas));
        assert_eq!(f("mkl_rt.2.dll"), Some(Family::Mkl));
        assert_eq!(f("VCOMP140.DLL"), Some(Family::OpenMp));
        assert_eq!(f("libiomp5md.dll"), Some(Family::OpenMp));
        // Not ours
        assert_eq!(f("libc.so.6"), None);
        assert_eq!(f("kernel32.dll"), None);
        assert_eq!(f("libSystem.B.dylib"), None);
    }
}

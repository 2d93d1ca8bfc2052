//! The real native libraries: their paths (from the environment or
//! `.cache/native/libs.env`, written by `scripts/setup-native.sh`) and a `dlopen`
//! handle ([`Lib`]).

use std::ffi::{c_int, c_void};
#[cfg(unix)]
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

/// The workspace's root directory.
///
/// # Examples
///
/// ```
/// assert!(budget_testkit::libs::workspace_root().join("Cargo.toml").exists());
/// ```
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `.cache/native/libs.env` of the workspace.
///
/// # Examples
///
/// ```
/// println!("{}", budget_testkit::libs::libs_env().display());
/// ```
pub fn libs_env() -> PathBuf {
    workspace_root().join(".cache/native/libs.env")
}

/// The path of the library named by `key` (e.g. `BUDGET_NATIVE_OPENBLAS_PTHREAD`):
/// from the environment, else from [`libs_env`]. `None` if neither has it (the path
/// may not exist).
///
/// # Examples
///
/// ```
/// if let Some(p) = budget_testkit::libs::lib_path("BUDGET_NATIVE_GOMP") {
///     println!("libgomp at {}", p.display());
/// }
/// ```
pub fn lib_path(key: &str) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(key) {
        return Some(PathBuf::from(p));
    }
    let text = std::fs::read_to_string(libs_env()).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(PathBuf::from))
}

/// [`lib_path`] if that file exists, else `fallback` if it exists (Debian's path, for
/// the demo run without `scripts/setup-native.sh`).
///
/// # Examples
///
/// ```
/// let gomp = budget_testkit::libs::lib_path_or("BUDGET_NATIVE_GOMP", "/no/such/libgomp.so.1");
/// assert!(gomp.map_or(true, |p| p.exists()));
/// ```
pub fn lib_path_or(key: &str, fallback: &str) -> Option<PathBuf> {
    lib_path(key)
        .filter(|p| p.exists())
        .or_else(|| Some(PathBuf::from(fallback)).filter(|p| p.exists()))
}

/// [`lib_path`] for a library the caller cannot do without.
///
/// # Panics
///
/// If the path is unknown or does not exist, saying to run `scripts/setup-native.sh`.
///
/// # Examples
///
/// ```no_run
/// let openblas = budget_testkit::libs::require_path("BUDGET_NATIVE_OPENBLAS_PTHREAD");
/// ```
pub fn require_path(key: &str) -> PathBuf {
    let path = lib_path(key).unwrap_or_else(|| {
        panic!(
            "the native test libraries are not installed ({key} is not in {} or the \
             environment): run scripts/setup-native.sh",
            libs_env().display()
        )
    });
    assert!(
        path.exists(),
        "{} ({key}) does not exist: run scripts/setup-native.sh",
        path.display()
    );
    path
}

/// A library loaded with `dlopen(RTLD_NOW | RTLD_GLOBAL)` (so budget finds it like
/// any other), never closed.
///
/// # Examples
///
/// ```
/// let libc = budget_testkit::Lib::open("libc.so.6".as_ref()).unwrap();
/// // SAFETY: `int getpid(void)`.
/// let getpid = unsafe { libc.func::<unsafe extern "C" fn() -> i32>("getpid") };
/// assert_eq!(unsafe { getpid() } as u32, std::process::id());
/// ```
pub struct Lib {
    /// The path it was loaded from (or the bare file name given).
    pub path: PathBuf,
    #[cfg_attr(not(unix), allow(dead_code))] // never made off Unix
    handle: *mut c_void,
}

// SAFETY: a dlopen handle may be used from any thread (dlsym is thread-safe), and it
// is never closed.
unsafe impl Send for Lib {}
// SAFETY: as above.
unsafe impl Sync for Lib {}

impl std::fmt::Debug for Lib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lib").field("path", &self.path).finish()
    }
}

impl Lib {
    /// Loads the library at `path` (or a bare file name, found as the loader does);
    /// the loader's message on failure.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(budget_testkit::Lib::open("libnot-there.so".as_ref()).is_err());
    /// ```
    #[cfg(not(unix))]
    pub fn open(path: &Path) -> Result<Lib, String> {
        Err(format!(
            "{}: loading a library by path is Unix-only in this test kit",
            path.display()
        ))
    }

    /// Loads the library at `path` (or a bare file name, found as the loader does);
    /// the loader's message on failure.
    #[cfg(unix)]
    pub fn open(path: &Path) -> Result<Lib, String> {
        let c =
            CString::new(path.to_str().ok_or("path is not UTF-8")?).map_err(|e| e.to_string())?;
        // SAFETY: a valid C string; loading runs the library's constructors, as
        // linking it would.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns a valid C string after a failed dlopen.
            let err = unsafe { CStr::from_ptr(libc::dlerror()) };
            return Err(format!(
                "dlopen {}: {}",
                path.display(),
                err.to_string_lossy()
            ));
        }
        Ok(Lib {
            path: path.to_path_buf(),
            handle,
        })
    }

    /// Loads the library named by `key` (see [`require_path`]).
    ///
    /// # Panics
    ///
    /// If it is not installed or cannot be loaded.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let gomp = budget_testkit::Lib::load("BUDGET_NATIVE_GOMP");
    /// ```
    pub fn load(key: &str) -> Lib {
        Lib::open(&require_path(key)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The function `name`, typed as `F`; `None` if the library lacks it.
    ///
    /// # Safety
    ///
    /// `F` must be the function's C prototype (a function pointer type).
    ///
    /// # Examples
    ///
    /// ```
    /// let libc = budget_testkit::Lib::open("libc.so.6".as_ref()).unwrap();
    /// // SAFETY: any fn pointer type will do for a symbol that is not there.
    /// assert!(unsafe { libc.try_func::<unsafe extern "C" fn()>("no_such_fn") }.is_none());
    /// ```
    #[cfg(not(unix))]
    pub unsafe fn try_func<F: Copy>(&self, _name: &str) -> Option<F> {
        None
    }

    /// The function `name`, typed as `F`; `None` if the library lacks it.
    ///
    /// # Safety
    ///
    /// `F` must be the function's C prototype (a function pointer type).
    #[cfg(unix)]
    pub unsafe fn try_func<F: Copy>(&self, name: &str) -> Option<F> {
        assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
        let c = CString::new(name).ok()?;
        // SAFETY: a live handle and a valid C string.
        let p = unsafe { libc::dlsym(self.handle, c.as_ptr()) };
        // SAFETY: the caller guarantees the prototype; fn pointers are pointer-sized
        // (asserted above).
        (!p.is_null()).then(|| unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
    }

    /// The function `name`, typed as `F`.
    ///
    /// # Safety
    ///
    /// As [`Lib::try_func`].
    ///
    /// # Panics
    ///
    /// If the library has no such symbol.
    ///
    /// # Examples
    ///
    /// ```
    /// let libc = budget_testkit::Lib::open("libc.so.6".as_ref()).unwrap();
    /// // SAFETY: `int getpid(void)`.
    /// let _ = unsafe { libc.func::<unsafe extern "C" fn() -> i32>("getpid") };
    /// ```
    pub unsafe fn func<F: Copy>(&self, name: &str) -> F {
        // SAFETY: the caller guarantees the prototype.
        unsafe { self.try_func(name) }
            .unwrap_or_else(|| panic!("{} has no symbol {name}", self.path.display()))
    }

    /// Calls `int name(void)`.
    ///
    /// # Panics
    ///
    /// If the library has no such symbol. The caller names a getter with that
    /// prototype.
    ///
    /// # Examples
    ///
    /// ```
    /// let libc = budget_testkit::Lib::open("libc.so.6".as_ref()).unwrap();
    /// assert_eq!(libc.get_int("getpid") as u32, std::process::id());
    /// ```
    pub fn get_int(&self, name: &str) -> c_int {
        // SAFETY: the getters named by the callers are `int f(void)`.
        unsafe { self.func::<unsafe extern "C" fn() -> c_int>(name)() }
    }
}

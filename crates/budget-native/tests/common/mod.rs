//! Shared by the native tests: where the real libraries are (written by
//! `scripts/setup-native.sh`), loading one by path, and running a test body in a child
//! process of its own so that libraries of different families never meet.
#![allow(dead_code, unreachable_pub)]

use std::ffi::c_int;

#[path = "ffi.rs"]
mod ffi;
use std::path::PathBuf;
use std::process::Command;

/// The variable that marks a child process, holding the test's name.
const CHILD: &str = "BUDGET_NATIVE_TEST_CHILD";

/// The path of the library named by `key` (e.g. `BUDGET_NATIVE_OPENBLAS_PTHREAD`):
/// from the environment, else from `.cache/native/libs.env`.
///
/// # Panics
///
/// If neither has it: the libraries are not installed.
pub fn lib_path(key: &str) -> PathBuf {
    let file = ffi::libs_env(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."));
    let path = ffi::lib_path(key, &file).unwrap_or_else(|| {
        panic!(
            "the native test libraries are not installed ({key} is not in {} or the \
             environment): run scripts/setup-native.sh",
            file.display()
        )
    });
    assert!(
        path.exists(),
        "{} ({key}) does not exist: run scripts/setup-native.sh",
        path.display()
    );
    path
}

/// A library loaded by the test itself, with `dlopen(RTLD_NOW | RTLD_GLOBAL)`.
pub struct Loaded {
    pub path: PathBuf,
    lib: ffi::Lib,
}

impl Loaded {
    /// Loads the library named by `key` (see [`lib_path`]).
    pub fn load(key: &str) -> Loaded {
        Loaded::load_path(lib_path(key))
    }

    /// Loads the library at `path` (or a bare file name, found as the loader does).
    pub fn load_path(path: PathBuf) -> Loaded {
        let lib = ffi::Lib::open(&path).unwrap_or_else(|e| panic!("{e}"));
        Loaded { path, lib }
    }

    /// The function `name` of this library, typed as `F`.
    ///
    /// # Safety
    ///
    /// `F` must be the function's C prototype.
    pub unsafe fn func<F: Copy>(&self, name: &str) -> F {
        // SAFETY: the caller guarantees the prototype.
        unsafe { self.lib.func(name) }
            .unwrap_or_else(|| panic!("{} has no symbol {name}", self.path.display()))
    }

    /// `int name(void)`.
    pub fn get_int(&self, name: &str) -> c_int {
        // SAFETY: the getters named by the tests are `int f(void)`.
        unsafe { self.func::<unsafe extern "C" fn() -> c_int>(name)() }
    }
}

/// Runs `body` in a child process: this test binary again, with only `test` selected,
/// after the child loaded the libraries named by `keys` (in order). The parent fails
/// if the child fails, or if the child did not run exactly that one test.
pub fn in_child(test: &str, keys: &[&str], body: impl FnOnce(&[Loaded])) {
    in_child_env(test, keys, &[], body)
}

/// [`in_child`] with extra environment variables for the child.
pub fn in_child_env(test: &str, keys: &[&str], env: &[(&str, &str)], body: impl FnOnce(&[Loaded])) {
    if std::env::var(CHILD).as_deref() == Ok(test) {
        let loaded: Vec<Loaded> = keys.iter().map(|k| Loaded::load(k)).collect();
        body(&loaded);
        return;
    }
    for k in keys {
        lib_path(k); // a clear message in the parent if a library is missing
    }
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, test);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("cannot start the child test process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child for {test} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "child for {test} did not run the test:\n{stdout}\n{stderr}"
    );
    print!("{stdout}");
}

/// `cblas_dgemm` with 32-bit or 64-bit integers.
#[derive(Clone, Copy)]
pub enum Dgemm {
    Lp64(ffi::Cdgemm),
    Ilp64(
        unsafe extern "C" fn(
            c_int,
            c_int,
            c_int,
            i64,
            i64,
            i64,
            f64,
            *const f64,
            i64,
            *const f64,
            i64,
            f64,
            *mut f64,
            i64,
        ),
    ),
}

impl Dgemm {
    /// `cblas_dgemm` of `lib`, under the naming given (`("", "")` or
    /// `("scipy_", "64_")`).
    pub fn of(lib: &Loaded, ilp64: bool, name: &str) -> Dgemm {
        // SAFETY: the CBLAS prototype, with the integer width of the build.
        unsafe {
            if ilp64 {
                Dgemm::Ilp64(lib.func(name))
            } else {
                Dgemm::Lp64(lib.func(name))
            }
        }
    }

    /// C = A·B for n×n row-major matrices.
    pub fn run(self, n: usize, a: &[f64], b: &[f64], c: &mut [f64]) {
        let f = match self {
            Dgemm::Lp64(f) => return ffi::gemm(f, a, b, c, n),
            Dgemm::Ilp64(f) => f,
        };
        assert!(a.len() >= n * n && b.len() >= n * n && c.len() >= n * n);
        const ROW_MAJOR: c_int = 101;
        const NO_TRANS: c_int = 111;
        let n = n as i64;
        // SAFETY: buffers hold n×n doubles each (checked above), leading dimension n.
        unsafe {
            f(
                ROW_MAJOR,
                NO_TRANS,
                NO_TRANS,
                n,
                n,
                n,
                1.0,
                a.as_ptr(),
                n,
                b.as_ptr(),
                n,
                0.0,
                c.as_mut_ptr(),
                n,
            )
        }
    }
}

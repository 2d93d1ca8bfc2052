//! One budget per process when cargo cannot see two copies of budget-core: two
//! copies of one `cdylib` (crates/budget-copy, each with budget-core inside) opened
//! with `dlopen(RTLD_LOCAL)`, as two Python extension modules would be. The second
//! copy finds the first (the handshake, `external/handshake.rs`) and takes its tokens
//! from it: while the first holds every token, a region of the second runs on its own
//! thread only; once they are free, it gets them. Without the handshake each copy
//! counted the cores as its own (both at full width at once).
#![cfg(target_os = "linux")]

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// The built cdylib: next to this test's `target/<profile>` (scripts/test.sh builds
/// it first; built here into a target directory of its own otherwise).
fn library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let built = profile_dir.join("libbudget_copy.so");
    if built.exists() {
        return built;
    }
    let target = profile_dir.join("two-copies");
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "-p", "budget-copy"])
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(status.success(), "building crates/budget-copy");
    target.join("debug/libbudget_copy.so")
}

struct Copy {
    total: extern "C" fn() -> usize,
    hold: extern "C" fn(usize) -> usize,
    release: extern "C" fn(),
    width: extern "C" fn() -> usize,
}

fn open(path: &Path) -> Copy {
    let c = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid path of a library built from this workspace; RTLD_LOCAL keeps
    // its symbols (and its budget-core) to itself.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen {}", path.display());
    let sym = |name: &str| {
        let n = CString::new(name).unwrap();
        // SAFETY: a handle from dlopen and a valid symbol name.
        let p = unsafe { libc::dlsym(handle, n.as_ptr()) };
        assert!(!p.is_null(), "{name} in {}", path.display());
        p
    };
    // SAFETY: each symbol is an `extern "C" fn` of the signature given here
    // (crates/budget-copy/src/lib.rs).
    unsafe {
        Copy {
            total: std::mem::transmute::<*mut libc::c_void, extern "C" fn() -> usize>(sym(
                "budget_copy_total",
            )),
            hold: std::mem::transmute::<*mut libc::c_void, extern "C" fn(usize) -> usize>(sym(
                "budget_copy_hold",
            )),
            release: std::mem::transmute::<*mut libc::c_void, extern "C" fn()>(sym(
                "budget_copy_release",
            )),
            width: std::mem::transmute::<*mut libc::c_void, extern "C" fn() -> usize>(sym(
                "budget_copy_width",
            )),
        }
    }
}

#[test]
fn two_copies_in_one_process_share_one_budget() {
    let dir = std::env::temp_dir().join(format!("budget-two-copies-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lib = library();
    // Two files: one library loaded twice by one path would be one copy.
    let (a_path, b_path) = (dir.join("a.so"), dir.join("b.so"));
    std::fs::copy(&lib, &a_path).unwrap();
    std::fs::copy(&lib, &b_path).unwrap();
    let a = open(&a_path);
    let b = open(&b_path);

    let total = (a.total)();
    assert_eq!(
        (b.total)(),
        total,
        "the second copy counts the first's total"
    );
    assert!(total >= 2, "this test needs a budget of 2 or more");
    // The first copy holds every token...
    assert_eq!((a.hold)(total), total);
    // ...so a region of the second runs on its own thread only (it was `total`: the
    // cores counted twice).
    assert_eq!((b.width)(), 1, "the second copy made a budget of its own");
    (a.release)();
    // Free again: the second copy takes them from the first at its region's entry.
    assert_eq!((b.width)(), total);
    // And the other way round: the second holds them, the first is narrow.
    assert_eq!((b.hold)(total), total);
    assert_eq!((a.width)(), 1);
    (b.release)();
    let _ = std::fs::remove_dir_all(&dir);
}

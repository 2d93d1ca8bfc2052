//! Discovery of each real library family, each in a child process that loads it by
//! path: family, threading layer, version, setting scope, naming and thread count.

use budget_native::{Family, Library, SettingScope, ThreadingLayer};
use budget_testkit::libs::require_path as lib_path;
use budget_testkit::{in_child, Lib};

fn found(family: Family, key: &str) -> Library {
    let libs = budget_native::libraries();
    println!("{libs}");
    let want = lib_path(key);
    libs.iter()
        .find(|l| l.family == family && l.path == want)
        .cloned()
        .unwrap_or_else(|| panic!("{family} at {} not found in\n{libs}", want.display()))
}

#[test]
fn openblas_pthreads() {
    in_child(
        "openblas_pthreads",
        &["BUDGET_NATIVE_OPENBLAS_PTHREAD"],
        |l| {
            let lib = found(Family::OpenBlas, "BUDGET_NATIVE_OPENBLAS_PTHREAD");
            assert!(lib.is_supported(), "{lib:?}");
            assert_eq!(lib.threading_layer, ThreadingLayer::Pthreads);
            assert_eq!(lib.setting, SettingScope::ProcessWide);
            assert_eq!(lib.version.as_deref(), Some("0.3.21"));
            assert_eq!(lib.symbols, (String::new(), String::new()));
            let own = l[0].get_int("openblas_get_num_threads");
            assert_eq!(lib.num_threads, Some(own as usize));
        },
    );
}

#[test]
fn openblas_openmp() {
    in_child(
        "openblas_openmp",
        &["BUDGET_NATIVE_OPENBLAS_OPENMP"],
        |_| {
            let lib = found(Family::OpenBlas, "BUDGET_NATIVE_OPENBLAS_OPENMP");
            assert!(lib.is_supported(), "{lib:?}");
            assert_eq!(lib.threading_layer, ThreadingLayer::OpenMp);
            // One global count that every call re-syncs to the caller's OpenMP count:
            // budget treats it as process-wide.
            assert_eq!(lib.setting, SettingScope::ProcessWide);
            assert_eq!(lib.version.as_deref(), Some("0.3.21"));
            let libs = budget_native::libraries();
            let omp = libs
                .find(Family::OpenMp)
                .expect("libgomp is loaded with it");
            assert!(omp.path.to_string_lossy().contains("libgomp"), "{libs}");
            assert_eq!(omp.setting, SettingScope::PerThread);
        },
    );
}

#[test]
fn scipy_openblas64() {
    in_child(
        "scipy_openblas64",
        &["BUDGET_NATIVE_SCIPY_OPENBLAS64"],
        |l| {
            let lib = found(Family::OpenBlas, "BUDGET_NATIVE_SCIPY_OPENBLAS64");
            assert!(lib.is_supported(), "{lib:?}");
            assert_eq!(lib.symbols, ("scipy_".to_string(), "64_".to_string()));
            assert_eq!(lib.threading_layer, ThreadingLayer::Pthreads);
            assert_eq!(lib.setting, SettingScope::ProcessWide);
            let v = lib.version.clone().unwrap();
            assert!(v.starts_with("0.3."), "{v}");
            let own = l[0].get_int("scipy_openblas_get_num_threads64_");
            assert_eq!(lib.num_threads, Some(own as usize));
        },
    );
}

#[test]
fn blis_pthreads() {
    in_child("blis_pthreads", &["BUDGET_NATIVE_BLIS_PTHREAD"], |_| {
        let lib = found(Family::Blis, "BUDGET_NATIVE_BLIS_PTHREAD");
        assert!(lib.is_supported(), "{lib:?}");
        assert_eq!(lib.threading_layer, ThreadingLayer::Pthreads);
        assert_eq!(lib.setting, SettingScope::ProcessWide);
        assert_eq!(lib.version.as_deref(), Some("0.9.0"));
        assert_eq!(
            lib.num_threads,
            Some(1),
            "BLIS runs 1 thread until told otherwise"
        );
    });
}

fn openmp_runtime(key: &str) {
    let lib = found(Family::OpenMp, key);
    assert!(lib.is_supported(), "{lib:?}");
    assert_eq!(lib.threading_layer, ThreadingLayer::OpenMp);
    assert_eq!(lib.setting, SettingScope::PerThread);
    assert_eq!(lib.version, None, "OpenMP runtimes expose no version");
    assert!(lib.num_threads.unwrap() >= 1);
}

#[test]
fn libgomp_found_when_loaded_later() {
    in_child("libgomp_found_when_loaded_later", &[], |_| {
        assert!(budget_native::libraries().find(Family::OpenMp).is_none());
        let _gomp = Lib::load("BUDGET_NATIVE_GOMP");
        openmp_runtime("BUDGET_NATIVE_GOMP");
    });
}

#[test]
fn llvm_libomp() {
    in_child("llvm_libomp", &["BUDGET_NATIVE_LLVM_OMP"], |_| {
        openmp_runtime("BUDGET_NATIVE_LLVM_OMP")
    });
}

#[test]
fn intel_libiomp5() {
    in_child("intel_libiomp5", &["BUDGET_NATIVE_IOMP5"], |_| {
        openmp_runtime("BUDGET_NATIVE_IOMP5")
    });
}

#[test]
fn mkl_rt() {
    in_child(
        "mkl_rt",
        &["BUDGET_NATIVE_IOMP5", "BUDGET_NATIVE_MKL_RT"],
        |_| {
            let lib = found(Family::Mkl, "BUDGET_NATIVE_MKL_RT");
            assert!(lib.is_supported(), "{lib:?}");
            assert_eq!(lib.setting, SettingScope::PerThread);
            let v = lib.version.clone().unwrap();
            assert!(v.starts_with("20"), "{v}");
            assert_eq!(lib.threading_layer, ThreadingLayer::OpenMp); // MKL's default: intel
            assert!(lib.num_threads.unwrap() >= 1);
        },
    );
}

/// A real library whose name matches a family prefix (`libiomp`) but which has none of
/// its symbols (Intel's OpenMP debugger support library): listed, unsupported, and
/// `limit` leaves it alone.
#[test]
fn unsupported_library_is_reported_not_called() {
    in_child("unsupported_library_is_reported_not_called", &[], |_| {
        let db = lib_path("BUDGET_NATIVE_IOMP5").with_file_name("libiomp5_db.so");
        let _cxx = Lib::open("libstdc++.so.6".as_ref()).unwrap(); // what it links against
        let _db = Lib::open(&db).unwrap();
        let libs = budget_native::libraries();
        println!("{libs}");
        let lib = libs.iter().find(|l| l.path == db).expect("listed");
        assert_eq!(lib.family, Family::OpenMp);
        let why = lib.unsupported.as_deref().expect("unsupported");
        assert!(why.contains("omp_set_num_threads"), "{why}");
        assert_eq!(lib.num_threads, None);
        assert!(libs.to_string().contains("unsupported"));
        assert_eq!(budget_native::limit(3).changed(), 0);
    });
}

#[test]
fn table_lists_every_family() {
    in_child(
        "table_lists_every_family",
        &[
            "BUDGET_NATIVE_OPENBLAS_PTHREAD",
            "BUDGET_NATIVE_BLIS_PTHREAD",
            "BUDGET_NATIVE_GOMP",
        ],
        |_| {
            let table = budget_native::libraries().to_string();
            println!("{table}");
            let lines: Vec<&str> = table.lines().collect();
            assert!(lines[0].starts_with("family"), "{table}");
            assert_eq!(lines.len(), 4, "{table}");
            assert!(lines
                .iter()
                .any(|l| l.starts_with("openblas") && l.contains("process-wide")));
            assert!(lines
                .iter()
                .any(|l| l.starts_with("blis") && l.contains("0.9.0")));
            assert!(lines
                .iter()
                .any(|l| l.starts_with("openmp") && l.contains("per-thread")));
        },
    );
}

//! With no OpenMP/BLAS library loaded, every call is a cheap no-op (in a child process,
//! so that no other test's library is loaded).

use std::time::Instant;

use budget_native::NativeExt;
use budget_testkit::in_child;

#[test]
fn nothing_loaded_is_a_cheap_no_op() {
    in_child("nothing_loaded_is_a_cheap_no_op", &[], |_| {
        let libs = budget_native::libraries();
        assert!(libs.is_empty(), "{libs}");
        assert!(libs
            .to_string()
            .contains("no OpenMP or BLAS library loaded"));
        let g = budget_native::limit(8);
        assert_eq!(g.changed(), 0);
        drop(g);
        const CALLS: u32 = 100_000;
        let start = Instant::now();
        for _ in 0..CALLS {
            let g = budget_native::limit(4);
            std::hint::black_box(&g);
        }
        let per_call = start.elapsed() / CALLS;
        println!("limit() with nothing loaded: {per_call:?} per call");
        // A loader-generation check and a cached snapshot: well under a microsecond on
        // an idle machine; 20 µs leaves room for a loaded CI box and debug builds.
        assert!(per_call.as_micros() < 20, "{per_call:?} per call");
        let r = budget_core::scope(|s| s.native(|| 7));
        assert_eq!(r, 7);
        assert_eq!(budget_core::stats().in_use, 0);
    });
}

//! `fork()` while native calls are in flight: the child never hangs on budget's
//! process-wide lock, and OpenMP code in a child runs at width 1 where libgomp cannot
//! fork its team. Each test in a child process of its own (the harness), which then
//! forks grandchildren that a watchdog in the parent kills if they hang.
#![cfg(unix)]

use std::time::{Duration, Instant};

use budget_native::limit;
use budget_testkit::blas::Dgemm;
use budget_testkit::{in_child, Lib};

/// Waits for `pid` up to `timeout`; its exit code, or `None` (then killed) if it hung.
fn wait_or_kill(pid: libc::pid_t, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child, `status` is writable.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            });
        }
        if Instant::now() > deadline {
            // SAFETY: our own child; reap it after the kill.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Forks; the child runs `f` and exits with its code (without unwinding or running
/// the parent's atexit handlers).
fn fork_with(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child only calls budget-native and async-signal-unsafe code that
    // glibc makes safe after fork (malloc), then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Another thread enters and leaves process-wide calls (the lock) without pause while
/// this one forks: every child must be able to make its own call. BLIS (process-wide,
/// no thread pool kept between calls) rather than OpenBLAS: OpenBLAS 0.3.21's own
/// prefork handler, which shuts its pool down, hangs now and then in the parent when
/// another thread keeps calling `openblas_set_num_threads` (seen without budget's
/// handlers too), which is not what this test is about.
#[test]
fn fork_while_another_thread_holds_the_lock() {
    in_child(
        "fork_while_another_thread_holds_the_lock",
        &["BUDGET_NATIVE_BLIS_PTHREAD"],
        |l| {
            // SAFETY: `dim_t bli_thread_get_num_threads(void)`, dim_t = int64_t.
            let get =
                unsafe { l[0].func::<unsafe extern "C" fn() -> i64>("bli_thread_get_num_threads") };
            // SAFETY: no preconditions.
            let read = || unsafe { get() };
            let before = read();
            let stop = std::sync::atomic::AtomicBool::new(false);
            let (mut hung, mut failed) = (0, 0);
            std::thread::scope(|t| {
                t.spawn(|| {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        drop(limit(3));
                    }
                });
                for _ in 0..30 {
                    let pid = fork_with(|| {
                        let _one = limit(1);
                        i32::from(read() != 1)
                    });
                    match wait_or_kill(pid, Duration::from_secs(5)) {
                        None => hung += 1,
                        Some(0) => {}
                        Some(_) => failed += 1,
                    }
                }
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            assert_eq!((hung, failed), (0, 0), "children hung, failed (of 30)");
            assert_eq!(read(), before);
        },
    );
}

/// libgomp does not re-create its thread pool in a forked child: once the parent ran
/// a parallel region, a wider region in the child would wait for threads that do not
/// exist. Through budget, the child's OpenMP count is 1 (and a BLAS call completes).
#[test]
fn libgomp_runs_at_width_1_in_a_forked_child() {
    in_child(
        "libgomp_runs_at_width_1_in_a_forked_child",
        &["BUDGET_NATIVE_OPENBLAS_OPENMP"],
        |l| {
            let gomp = Lib::load("BUDGET_NATIVE_GOMP");
            let omp = || gomp.get_int("omp_get_max_threads");
            let dgemm = Dgemm::of(&l[0], false, "cblas_dgemm");
            let n = 256;
            let (a, mut c) = (vec![1.0; n * n], vec![0.0; n * n]);
            {
                let _two = limit(2);
                assert_eq!(omp(), 2);
                dgemm.run(n, &a, &a, &mut c); // the parent's team exists now
            }
            let pid = fork_with(|| {
                let _two = limit(2);
                if omp() != 1 {
                    return 2;
                }
                let mut c = vec![0.0; n * n];
                dgemm.run(n, &a, &a, &mut c);
                i32::from(c[0] != n as f64)
            });
            let code = wait_or_kill(pid, Duration::from_secs(20));
            assert_eq!(
                code,
                Some(0),
                "the child (None: hung and killed; 2: width was not 1)"
            );
            let _two = limit(2);
            assert_eq!(omp(), 2, "the parent is not narrowed");
        },
    );
}

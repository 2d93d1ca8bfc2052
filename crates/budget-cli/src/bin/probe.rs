//! `budget-probe`: a budget-enabled test program for the process tests. It opens
//! regions of pure computation and logs, with CLOCK_MONOTONIC nanoseconds, the
//! widths its regions reach (set `BUDGET_TOKEN_LOG` to the same file to add the
//! tokens the process holds).
//!
//! ```text
//! budget-probe regions R TASKS TASK_US LOG [panic|exit]
//!                       R regions of TASKS spins of TASK_US µs; a task of the middle
//!                       region panics, or the last region exits the process at width > 1
//! budget-probe hold READY                            one region kept at full width forever
//! budget-probe grow WIDTH LOG                        one region of short tasks until WIDTH
//! budget-probe fixed N GAP_MS                        N regions GAP_MS apart, each with one
//!                       `s.native` call (a 256² dgemm of the OpenBLAS named by
//!                       BUDGET_PROBE_OPENBLAS, if set); prints each region's width and
//!                       `openblas_get_num_threads()` inside its call (0 without OpenBLAS)
//! budget-probe spinhold                              one region with a wide `s.native` dgemm
//!                       (BUDGET_PROBE_OPENBLAS), then prints for how many ms the process
//!                       kept 2 or more tokens of its outside budget, and the width of a
//!                       region opened meanwhile
//! budget-probe entry N                               the cost of entering and leaving a
//!                       region: N regions 10 ms apart (past the linger: each must take
//!                       its outside tokens again), then N back to back (tokens held);
//!                       prints the median and slowest, in µs, and the widths seen
//! budget-probe forks N                               N children forked one after another
//!                       while four threads enter and leave regions; in each child two
//!                       threads open a region at once, then it gives its outside
//!                       tokens back and `_exit`s; prints `forks N hung H failed F` (a
//!                       child alive after 5 s is killed and counted; one that exits
//!                       non-zero or by a signal fails)
//! ```

// The probe drives the process tests, which are Unix-only (make, signals, dlopen).
#![cfg_attr(not(unix), allow(dead_code, unused_imports))]

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use std::time::{Duration, Instant};

#[cfg(not(unix))]
fn main() {
    eprintln!("budget-probe: the process tests' probe runs on Unix only");
    std::process::exit(2);
}

#[cfg(unix)]
fn now_ns() -> u64 {
    // SAFETY: timespec is plain data; clock_gettime writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn spin(us: u64) {
    let start = Instant::now();
    let mut x = 1u64;
    while start.elapsed() < Duration::from_micros(us) {
        for _ in 0..100 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
    }
    std::hint::black_box(x);
}

fn log_line(file: &std::fs::File, line: &str) {
    // One write per line, O_APPEND: lines of several processes never interleave.
    let mut f = file;
    let _ = f.write_all(format!("{line}\n").as_bytes());
}

fn open_log(path: &str) -> &'static std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the log");
    Box::leak(Box::new(file))
}

#[cfg(unix)]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let num = |i: usize| arg(i).parse::<u64>().expect("a number");
    let pid = std::process::id();
    match arg(0).as_str() {
        "regions" => {
            let (regions, tasks, task_us) = (num(1), num(2), num(3));
            let log = open_log(&arg(4));
            let panic_at = (arg(5) == "panic").then_some(regions / 2);
            let exit_in_region = arg(5) == "exit";
            if panic_at.is_some() {
                std::panic::set_hook(Box::new(|_| eprintln!("probe: a task panicked on purpose")));
            }
            log_line(
                log,
                &format!("{} {pid} start {:?}", now_ns(), budget_core::joined()),
            );
            let mut widths = Vec::new();
            for r in 0..regions {
                let result = std::panic::catch_unwind(|| {
                    budget_core::scope(|s| {
                        let widest = AtomicUsize::new(0);
                        s.for_each(0..tasks as usize, |_| {
                            widest.fetch_max(s.width(), Ordering::Relaxed);
                            spin(task_us);
                            if Some(r) == panic_at {
                                panic!("probe: a task panics on purpose");
                            }
                            if exit_in_region && r + 1 == regions && s.width() > 1 {
                                // Exits while the region holds its tokens.
                                log_line(
                                    log,
                                    &format!("{} {pid} exit width {}", now_ns(), s.width()),
                                );
                                std::process::exit(0);
                            }
                        });
                        widest.into_inner().max(s.width())
                    })
                });
                match result {
                    Ok(width) => widths.push(width),
                    Err(_) => log_line(log, &format!("{} {pid} panicked", now_ns())),
                }
            }
            // Let the linger pass, then say what the process holds. A token asked for
            // while the regions ran may still arrive just after they ended (a jobserver
            // request cannot be withdrawn): it goes back after the linger, so wait for
            // that, up to 5 s (the test then sees the tokens still held).
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            std::thread::sleep(Duration::from_millis(50));
            while budget_core::joined() != budget_core::Joined::Local
                && budget_core::held_tokens() > 1
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            let widest = widths.iter().max().copied().unwrap_or(0);
            log_line(
                log,
                &format!(
                    "{} {pid} done widest {widest} held {} in_use {}",
                    now_ns(),
                    budget_core::held_tokens(),
                    budget_core::stats().in_use
                ),
            );
            println!("widths {widths:?}");
        }
        "hold" => {
            let ready = arg(1);
            let said = AtomicBool::new(false);
            budget_core::scope(|s| {
                s.for_each(0..1_000_000usize, |_| {
                    if s.width() == s.requested() && !said.swap(true, Ordering::SeqCst) {
                        std::fs::write(&ready, format!("{}\n", s.width())).expect("ready file");
                    }
                    spin(1_000);
                })
            });
        }
        "grow" => {
            let want = num(1) as usize;
            let log = open_log(&arg(2));
            let last = AtomicUsize::new(0);
            let reached = AtomicBool::new(false);
            budget_core::scope(|s| {
                s.for_each(0..10_000_000usize, |_| {
                    if reached.load(Ordering::Relaxed) {
                        return;
                    }
                    let w = s.width();
                    if last.swap(w, Ordering::SeqCst) != w {
                        log_line(log, &format!("{} {pid} width {w}", now_ns()));
                    }
                    if w >= want {
                        reached.store(true, Ordering::Relaxed);
                    }
                    spin(200);
                })
            });
        }
        "fixed" => {
            let (regions, gap) = (num(1), num(2));
            let blas = std::env::var("BUDGET_PROBE_OPENBLAS")
                .ok()
                .map(|p| Blas::open(&p));
            let n = 256;
            let (a, mut c) = (vec![1.0f64; n * n], vec![0.0f64; n * n]);
            let mut seen = Vec::new();
            for _ in 0..regions {
                let w = budget_core::scope(|s| {
                    use budget_native::NativeExt;
                    s.native(|| {
                        let threads = blas.as_ref().map_or(0, |b| b.gemm(n, &a, &mut c));
                        (s.width(), threads)
                    })
                });
                seen.push(w);
                std::thread::sleep(Duration::from_millis(gap));
            }
            println!("fixed {seen:?}");
            println!("joined {:?}", budget_core::joined());
            println!("stats {:?}", budget_core::stats());
        }
        "spinhold" => {
            let blas = Blas::open(&std::env::var("BUDGET_PROBE_OPENBLAS").expect("a BLAS"));
            let n = 512;
            let (a, mut c) = (vec![1.0f64; n * n], vec![0.0f64; n * n]);
            use budget_native::NativeExt;
            let used = budget_core::scope(|s| s.native(|| blas.gemm(n, &a, &mut c)));
            let end = Instant::now();
            let width = budget_core::scope(|s| s.width());
            let mut kept = Duration::ZERO;
            while end.elapsed() < Duration::from_millis(600) {
                if budget_core::held_tokens() >= 2 {
                    kept = end.elapsed();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            println!(
                "spinhold call {used} threads, next region width {width}, kept 2+ tokens for \
                 {} ms",
                kept.as_millis()
            );
        }
        #[cfg(unix)]
        "forks" => {
            let n = num(1) as usize;
            let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
            let churn: Vec<_> = (0..4)
                .map(|_| {
                    std::thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            budget_core::scope(|s| {
                                s.for_each(0..8usize, |_| spin(20));
                            });
                        }
                    })
                })
                .collect();
            let (mut hung, mut failed) = (0, 0);
            for _ in 0..n {
                // SAFETY: the child only opens a region (budget handles a fork of a
                // process whose other threads use it: that is what is tested), then
                // leaves with `_exit`.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // Two threads start the child's budget at once (each may make a
                    // registry; one wins).
                    let region = || {
                        budget_core::scope(|s| {
                            s.for_each(0..4usize, |_| spin(10));
                            s.width()
                        })
                    };
                    let width = std::thread::scope(|t| {
                        let other = t.spawn(region);
                        region().min(other.join().unwrap_or(0))
                    });
                    budget_core::release_outside_tokens();
                    // SAFETY: ends the child at once, as multiprocessing's workers do.
                    unsafe { libc::_exit(if width >= 1 { 0 } else { 1 }) };
                }
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let mut status = 0;
                    // SAFETY: `pid` is our child; WNOHANG never blocks.
                    let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                    if done == pid {
                        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                            failed += 1;
                            eprintln!("child {pid}: status {status:#x}");
                        }
                        break;
                    }
                    if Instant::now() > deadline {
                        hung += 1;
                        // Its stacks, for the report (gdb where there is one).
                        let _ = std::process::Command::new("gdb")
                            .args(["-p", &pid.to_string(), "-batch", "-ex"])
                            .arg("thread apply all bt")
                            .stdout(std::process::Stdio::inherit())
                            .status();
                        // SAFETY: as above; kill then reap the hung child.
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                            libc::waitpid(pid, &mut status, 0);
                        }
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            stop.store(true, Ordering::Relaxed);
            for t in churn {
                t.join().unwrap();
            }
            println!("forks {n} hung {hung} failed {failed}");
        }
        "entry" => {
            let count = num(1) as usize;
            let time = |gap: u64| {
                let mut us = Vec::with_capacity(count);
                let mut widths = std::collections::BTreeSet::new();
                for _ in 0..count {
                    std::thread::sleep(Duration::from_millis(gap));
                    let t = Instant::now();
                    let w = budget_core::scope(|s| s.width());
                    us.push(t.elapsed().as_secs_f64() * 1e6);
                    widths.insert(w);
                }
                us.sort_by(f64::total_cmp);
                (us[us.len() / 2], us[us.len() - 1], widths)
            };
            let _ = budget_core::scope(|s| s.width()); // start the budget
            let (med, max, widths) = time(10);
            println!(
                "entry after the linger (takes outside tokens): median {med:.2} us, slowest \
                 {max:.2} us, widths {widths:?}"
            );
            let (med, max, widths) = time(0);
            println!(
                "entry back to back (tokens held): median {med:.2} us, slowest {max:.2} us, \
                 widths {widths:?}"
            );
            println!("joined {:?}", budget_core::joined());
        }
        other => {
            eprintln!("budget-probe: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}

/// CBLAS `cblas_dgemm` (32-bit integers).
type Cdgemm = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f64,
    *const f64,
    i32,
    *const f64,
    i32,
    f64,
    *mut f64,
    i32,
);

/// `int openblas_get_num_threads(void)`.
type GetThreads = unsafe extern "C" fn() -> i32;

/// An OpenBLAS loaded by path: `cblas_dgemm` and `openblas_get_num_threads`.
#[cfg(unix)]
struct Blas {
    gemm: Cdgemm,
    threads: GetThreads,
}

#[cfg(unix)]
impl Blas {
    fn open(path: &str) -> Blas {
        let c = std::ffi::CString::new(path).expect("a path");
        // SAFETY: a valid NUL-terminated path; the handle is never closed.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!handle.is_null(), "budget-probe: cannot load {path}");
        let sym = |name: &str| {
            let n = std::ffi::CString::new(name).expect("a name");
            // SAFETY: a live handle and a NUL-terminated name.
            let f = unsafe { libc::dlsym(handle, n.as_ptr()) };
            assert!(!f.is_null(), "budget-probe: {name} missing in {path}");
            f
        };
        // SAFETY: the CBLAS and OpenBLAS prototypes of these two symbols; the library
        // stays loaded for the rest of the process.
        unsafe {
            Blas {
                gemm: std::mem::transmute::<*mut libc::c_void, Cdgemm>(sym("cblas_dgemm")),
                threads: std::mem::transmute::<*mut libc::c_void, GetThreads>(sym(
                    "openblas_get_num_threads",
                )),
            }
        }
    }

    /// `c = a · a` (n×n, row-major); returns OpenBLAS's thread count during the call.
    fn gemm(&self, n: usize, a: &[f64], c: &mut [f64]) -> i32 {
        let ni = n as i32;
        // SAFETY: row-major (101), no transposes (111); `a` and `c` hold n×n values.
        unsafe {
            (self.gemm)(
                101,
                111,
                111,
                ni,
                ni,
                ni,
                1.0,
                a.as_ptr(),
                ni,
                a.as_ptr(),
                ni,
                0.0,
                c.as_mut_ptr(),
                ni,
            );
            (self.threads)()
        }
    }
}

//! What a native library's spinning workers cost a neighbour that computes.
//!
//! After a multi-threaded call, several native libraries keep their worker threads
//! busy-waiting for a while before they sleep: OpenBLAS on pthreads (about
//! `2^OPENBLAS_THREAD_TIMEOUT` = 2^28 TSC cycles, ~0.1 s), libgomp (`GOMP_SPINCOUNT`,
//! 300,000 `pause`s when `OMP_WAIT_POLICY` is unset), LLVM libomp and Intel libiomp5
//! (`KMP_BLOCKTIME`, 200 ms), MKL (through libiomp5). BLIS on pthreads joins its
//! threads at the end of each call. This bench measures what that costs code that
//! runs right after the call, to decide whether budget should count the spinning
//! workers as busy cores.
//!
//! For each library found through `budget_testkit::libs` (`.cache/native/libs.env`,
//! written by `scripts/setup-native.sh`; a missing one is skipped), a child process of
//! its own (this binary again, `--child NAME`) times, interleaved A B A B … for
//! `--pairs` pairs (default 15):
//!
//! - **A, right after**: one wide call (all cores: `dgemm` 512² for a BLAS, one
//!   OpenMP parallel region over 2^20 elements of real work for a runtime), then at
//!   once the *neighbour*: one plain `std` thread per core, each running the same
//!   fixed floating-point loop (calibrated once, in the parent, to ~30 ms alone);
//! - **B, after the window**: the same wide call, 400 ms of sleep (past every spin
//!   window; the process's CPU time during it is the *spin CPU* column: what the
//!   idle workers burned), then the same neighbour.
//!
//! The table gives per library the median of the pair ratios A/B, their min–max,
//! the medians of A and B, and the median of the pair differences A − B (the
//! neighbour's loss in ms). A ratio near 1.00 means the spinning workers cost the
//! neighbour nothing; 2.00 on 2 cores means the neighbour ran on one core for all of
//! its time (its two threads stacked on one CPU while a spinning worker held the
//! other, which is what Linux's placement does with a spinner, yielding or not, see
//! `--pin`). While the neighbour fits in the window the loss is about its whole
//! length; a longer one loses at most about half the window.
//!
//! The default rows leave every `OPENBLAS_*`, `OMP_*`, `GOMP_*`, `KMP_*` variable as
//! the user has it; the rows marked `control` set the spin off in the child's
//! environment (`OPENBLAS_THREAD_TIMEOUT=4`, `OMP_WAIT_POLICY=passive`,
//! `KMP_BLOCKTIME=0`) to show what the ratio is without it.
//!
//! ```sh
//! scripts/setup-native.sh
//! cargo bench -p budget-threads-native --bench spin               # all, ~2 min on 2 cores
//! cargo bench -p budget-threads-native --bench spin -- openblas   # rows whose name has it
//! cargo bench -p budget-threads-native --bench spin -- --pairs 25 # more pairs per row
//! cargo bench -p budget-threads-native --bench spin -- --no-control  # default rows only
//! cargo bench -p budget-threads-native --bench spin -- --pin      # neighbour i on CPU i
//! ```
//!
//! `--pin` is a diagnostic: with each neighbour thread bound to a CPU of its own, a
//! spinning worker must share a CPU with one of them, so the ratio shows what the
//! spin loop itself (`sched_yield` or not) gives back, apart from where the
//! scheduler places the threads.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::hint::black_box;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use budget_testkit::blas::Dgemm;
use budget_testkit::kernels::Omp;
use budget_testkit::libs::lib_path;
use budget_testkit::Lib;

/// Past every spin window (the longest, `KMP_BLOCKTIME`, is 200 ms).
const SETTLE: Duration = Duration::from_millis(400);
/// The neighbour's target time per thread, alone.
const NEIGHBOUR_MS: f64 = 30.0;
/// The BLAS call: `dgemm` of this size.
const GEMM_N: usize = 512;
/// The OpenMP call: one parallel region over this many elements (~6 ms on one core).
const OMP_LEN: usize = 1 << 20;
/// A child that runs longer than this is killed and its row reported as such.
const CHILD_LIMIT: Duration = Duration::from_secs(120);

/// How a library's wide call is made.
#[derive(Clone, Copy)]
enum Call {
    /// OpenBLAS: its `set_num_threads` and `cblas_dgemm` symbols, ILP64 or not.
    OpenBlas {
        set: &'static str,
        dgemm: &'static str,
        ilp64: bool,
    },
    /// BLIS: `bli_thread_set_num_threads` and `cblas_dgemm`.
    Blis,
    /// MKL (`libmkl_rt`, after `libiomp5`): `MKL_Set_Num_Threads` and `cblas_dgemm`.
    Mkl,
    /// The OpenMP C kernel of `budget_testkit::kernels::Omp`, its `GOMP_*` calls
    /// served by the runtime of the case's key (loaded before the kernel).
    Omp,
}

/// One library to measure.
struct Case {
    /// The row's name (and `--child` argument).
    name: &'static str,
    /// The `libs.env` key of the library measured.
    key: &'static str,
    /// Keys loaded before it (MKL needs libiomp5).
    preload: &'static [&'static str],
    call: Call,
    /// The environment that turns its spin off (the control row); empty: no control.
    spin_off: &'static [(&'static str, &'static str)],
    /// Where the spin-wait is, in one line.
    spin: &'static str,
}

const OPENBLAS_OFF: &[(&str, &str)] = &[("OPENBLAS_THREAD_TIMEOUT", "4")];
const GOMP_OFF: &[(&str, &str)] = &[("OMP_WAIT_POLICY", "passive")];
const KMP_OFF: &[(&str, &str)] = &[("KMP_BLOCKTIME", "0")];

const CASES: &[Case] = &[
    Case {
        name: "openblas-0.3.21-pthread",
        key: "BUDGET_NATIVE_OPENBLAS_PTHREAD",
        preload: &[],
        call: Call::OpenBlas {
            set: "openblas_set_num_threads",
            dgemm: "cblas_dgemm",
            ilp64: false,
        },
        spin_off: OPENBLAS_OFF,
        spin: "blas_thread_server: sched_yield() + rdtsc, 2^28 cycles",
    },
    Case {
        name: "scipy-openblas64",
        key: "BUDGET_NATIVE_SCIPY_OPENBLAS64",
        preload: &[],
        call: Call::OpenBlas {
            set: "scipy_openblas_set_num_threads64_",
            dgemm: "scipy_cblas_dgemm64_",
            ilp64: true,
        },
        spin_off: OPENBLAS_OFF,
        spin: "blas_thread_server: 8 nops + rdtsc, 2^28 cycles",
    },
    Case {
        name: "openblas-0.3.21-openmp",
        key: "BUDGET_NATIVE_OPENBLAS_OPENMP",
        preload: &[],
        call: Call::OpenBlas {
            set: "openblas_set_num_threads",
            dgemm: "cblas_dgemm",
            ilp64: false,
        },
        spin_off: GOMP_OFF,
        spin: "libgomp do_spin: pause x 300k, then futex",
    },
    Case {
        name: "blis-pthread",
        key: "BUDGET_NATIVE_BLIS_PTHREAD",
        preload: &[],
        call: Call::Blis,
        spin_off: &[],
        spin: "none after the call: threads joined per call",
    },
    Case {
        name: "libgomp",
        key: "BUDGET_NATIVE_GOMP",
        preload: &[],
        call: Call::Omp,
        spin_off: GOMP_OFF,
        spin: "do_spin: pause x 300k, then futex",
    },
    Case {
        name: "llvm-libomp",
        key: "BUDGET_NATIVE_LLVM_OMP",
        preload: &[],
        call: Call::Omp,
        spin_off: KMP_OFF,
        spin: "__kmp_wait_template: pause, sched_yield every 256, 200 ms",
    },
    Case {
        name: "intel-libiomp5",
        key: "BUDGET_NATIVE_IOMP5",
        preload: &[],
        call: Call::Omp,
        spin_off: KMP_OFF,
        spin: "as libomp (KMP_BLOCKTIME 200 ms)",
    },
    Case {
        name: "mkl",
        key: "BUDGET_NATIVE_MKL_RT",
        preload: &["BUDGET_NATIVE_IOMP5"],
        call: Call::Mkl,
        spin_off: KMP_OFF,
        spin: "libiomp5's (KMP_BLOCKTIME)",
    },
];

/// The command line: `--child NAME`, `--control`, `--iters N`, `--pairs N`,
/// `--no-control`, `--pin`, and name filters (any other word; cargo's `--bench` is ignored).
struct Args {
    child: Option<String>,
    control: bool,
    no_control: bool,
    pin: bool,
    iters: Option<u64>,
    pairs: usize,
    filters: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        child: None,
        control: false,
        no_control: false,
        pin: false,
        iters: None,
        pairs: 15,
        filters: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--child" => args.child = it.next(),
            "--control" => args.control = true,
            "--no-control" => args.no_control = true,
            "--pin" => args.pin = true,
            "--iters" => args.iters = it.next().and_then(|s| s.parse().ok()),
            "--pairs" => {
                args.pairs = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--pairs N (N >= 1)")
            }
            s if s.starts_with('-') => {} // --bench and other harness flags
            s => args.filters.push(s.to_string()),
        }
    }
    args
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The neighbour's unit of work: a dependent floating-point chain the optimiser
/// cannot remove (one multiply-add per iteration).
fn fp_work(iters: u64) -> f64 {
    let mut x = 1.0f64;
    for _ in 0..iters {
        x = black_box(x * 0.999_999_9 + 1e-7);
    }
    x
}

/// Binds the calling thread to CPU `cpu` (the `--pin` diagnostic; Linux only).
#[cfg(not(target_os = "linux"))]
fn pin_to(_cpu: usize) {
    panic!("--pin needs Linux's sched_setaffinity");
}

/// Binds the calling thread to CPU `cpu` (the `--pin` diagnostic).
#[cfg(target_os = "linux")]
fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below the number of CPUs, well inside the set's capacity.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; a valid set of the size given.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
}

/// The neighbour: one plain thread per core, each running `fp_work(iters)` (thread
/// `i` bound to CPU `i` with `pin`); its wall-clock time in ms.
fn neighbour(iters: u64, pin: bool) -> f64 {
    let t = Instant::now();
    let handles: Vec<_> = (0..cores())
        .map(|i| {
            std::thread::spawn(move || {
                if pin {
                    pin_to(i);
                }
                fp_work(iters)
            })
        })
        .collect();
    for h in handles {
        black_box(h.join().expect("neighbour thread"));
    }
    t.elapsed().as_secs_f64() * 1e3
}

/// Iterations of [`fp_work`] that take [`NEIGHBOUR_MS`] on one thread alone (median
/// of 5 timings).
fn calibrate() -> u64 {
    let probe = 2_000_000u64;
    let mut per_iter: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            black_box(fp_work(probe));
            t.elapsed().as_secs_f64() * 1e3 / probe as f64
        })
        .collect();
    (NEIGHBOUR_MS / median(&mut per_iter)) as u64
}

fn median(v: &mut [f64]) -> f64 {
    budget_testkit::measure::median(v)
}

/// This process's CPU time (all threads), in ms.
fn process_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out-pointer to a timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// The file of the library that serves `GOMP_parallel` for code loaded now (which
/// OpenMP runtime the kernel really runs on).
fn gomp_provider() -> String {
    // SAFETY: dlsym with RTLD_DEFAULT and a valid C string; a null result is handled.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"GOMP_parallel".as_ptr()) };
    if sym.is_null() {
        return "GOMP_parallel not found".into();
    }
    // SAFETY: Dl_info is plain old data; all-zero is a valid value for it.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: `sym` is an address inside a loaded object; `info` is a valid out-pointer.
    if unsafe { libc::dladdr(sym as *const c_void, &mut info) } == 0 || info.dli_fname.is_null() {
        return "unknown".into();
    }
    // SAFETY: dladdr set dli_fname to a NUL-terminated path owned by the loader.
    unsafe { CStr::from_ptr(info.dli_fname) }
        .to_string_lossy()
        .into_owned()
}

/// A library's `const char *f(void)` getter of a static string.
type Getter = unsafe extern "C" fn() -> *const c_char;

/// The string a [`Getter`] returns (empty for null).
fn static_str(getter: Getter) -> String {
    // SAFETY: the getters named by the callers take no argument and return a static
    // NUL-terminated string or null.
    let p = unsafe { getter() };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null, NUL-terminated and static (above).
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The wide call of `case` at `width` threads, ready to repeat, and a note on what
/// runs it.
fn wide_call(case: &Case, libs: &[Lib], width: usize) -> (Box<dyn FnMut()>, String) {
    let lib = libs.last().expect("the case's library");
    let gemm = |dgemm: Dgemm| -> Box<dyn FnMut()> {
        let n = GEMM_N;
        let a: Vec<f64> = (0..n * n).map(|i| (i % 97) as f64 / 97.0 + 0.5).collect();
        let b = a.clone();
        let mut c = vec![0.0; n * n];
        Box::new(move || {
            dgemm.run(n, &a, &b, &mut c);
            black_box(&c);
        })
    };
    match case.call {
        Call::OpenBlas { set, dgemm, ilp64 } => {
            // SAFETY: OpenBLAS's `void openblas_set_num_threads(int)` (the ILP64 build
            // of scipy-openblas takes an int too), called while no BLAS call runs.
            unsafe { lib.func::<unsafe extern "C" fn(c_int)>(set)(width as c_int) };
            let config = ["openblas_get_config", "scipy_openblas_get_config64_"]
                .iter()
                // SAFETY: `char *openblas_get_config(void)`.
                .find_map(|s| unsafe { lib.try_func::<Getter>(s) })
                .map(static_str)
                .unwrap_or_default();
            (gemm(Dgemm::of(lib, ilp64, dgemm)), config)
        }
        Call::Blis => {
            // SAFETY: `void bli_thread_set_num_threads(dim_t)`, dim_t = int64_t.
            unsafe {
                lib.func::<unsafe extern "C" fn(i64)>("bli_thread_set_num_threads")(width as i64)
            };
            // SAFETY: `char *bli_info_get_version_str(void)`.
            let version = unsafe { lib.try_func::<Getter>("bli_info_get_version_str") }
                .map(static_str)
                .unwrap_or_default();
            (
                gemm(Dgemm::of(lib, false, "cblas_dgemm")),
                format!("BLIS {version}"),
            )
        }
        Call::Mkl => {
            // SAFETY: `void MKL_Set_Num_Threads(int)`, called while no MKL call runs.
            unsafe {
                lib.func::<unsafe extern "C" fn(c_int)>("MKL_Set_Num_Threads")(width as c_int)
            };
            let max = lib.get_int("MKL_Get_Max_Threads");
            (
                gemm(Dgemm::of(lib, false, "cblas_dgemm")),
                format!("MKL_Get_Max_Threads {max}"),
            )
        }
        Call::Omp => {
            let omp = Omp::load().unwrap_or_else(|e| panic!("{e}"));
            omp.set_threads(width);
            let mut x: Vec<f64> = (0..OMP_LEN).map(|i| i as f64).collect();
            let call = Box::new(move || {
                omp.call(&mut x);
                black_box(&x);
            });
            (call, format!("GOMP_parallel from {}", gomp_provider()))
        }
    }
}

/// In the child: load the case's libraries, run the A/B pairs, print one `ROW` line
/// (A median, B median, ratio median, min, max, spin CPU median, median of A − B) and
/// one `INFO` line.
fn child(name: &str, iters: u64, pairs: usize, pin: bool) {
    let case = CASES
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name}"));
    let libs: Vec<Lib> = case
        .preload
        .iter()
        .chain([&case.key])
        .map(|k| Lib::load(k))
        .collect();
    let width = cores();
    let (mut call, info) = wide_call(case, &libs, width);

    // Warm-up: threads created, pages touched, caches and clocks settled.
    for _ in 0..2 {
        call();
        std::thread::sleep(SETTLE);
        black_box(neighbour(iters, pin));
    }

    let (mut a, mut b, mut ratio, mut extra, mut spin_cpu) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..pairs {
        call();
        let ta = neighbour(iters, pin);

        call();
        let cpu0 = process_cpu_ms();
        std::thread::sleep(SETTLE);
        spin_cpu.push(process_cpu_ms() - cpu0);
        let tb = neighbour(iters, pin);

        a.push(ta);
        b.push(tb);
        ratio.push(ta / tb);
        extra.push(ta - tb);
    }
    let (lo, hi) = ratio
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &r| (l.min(r), h.max(r)));
    println!(
        "ROW\t{:.1}\t{:.1}\t{:.3}\t{:.3}\t{:.3}\t{:.0}\t{:.1}",
        median(&mut a),
        median(&mut b),
        median(&mut ratio),
        lo,
        hi,
        median(&mut spin_cpu),
        median(&mut extra)
    );
    println!("INFO\t{width} threads; {info}");
}

/// Runs this binary as `--child NAME`, with `env` added; its stdout, or why not.
fn run_child(case: &Case, iters: u64, args: &Args, env: &[(&str, &str)]) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["--child", case.name, "--iters", &iters.to_string()])
        .args(["--pairs", &args.pairs.to_string()])
        .args(args.pin.then_some("--pin"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if matches!(case.call, Call::Omp) {
        // The kernel's GOMP_* calls go to the runtime loaded first: this case's.
        let path = lib_path(case.key).ok_or("no path")?;
        cmd.env("BUDGET_NATIVE_GOMP", path);
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let mut out_pipe = child.stdout.take().expect("piped");
    let mut err_pipe = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + CHILD_LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        None => Err(format!("killed after {CHILD_LIMIT:?}")),
        Some(s) if !s.success() => Err(format!(
            "child failed ({s}): {}",
            err.lines().last().unwrap_or("")
        )),
        Some(_) => Ok(out),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub(crate) fn main() {
    let args = parse_args();
    let iters = args.iters.unwrap_or_else(calibrate);
    if let Some(name) = args.child {
        child(&name, iters, args.pairs.max(1), args.pin);
        return;
    }

    println!(
        "spin: what a library's spinning workers cost a computing neighbour \
         ({} cores; load {} at start)",
        cores(),
        loadavg()
    );
    println!(
        "neighbour: {} threads x {iters} fp iterations (~{NEIGHBOUR_MS} ms alone); \
         {} A/B pairs per row; B sleeps {SETTLE:?} first{}",
        cores(),
        args.pairs,
        if args.pin {
            "; neighbour threads pinned (--pin)"
        } else {
            ""
        }
    );
    println!(
        "A = neighbour right after the wide call, B = after {SETTLE:?}; \
         spin CPU = process CPU ms burned during B's sleep; load = 1-min load \
         average after the row (B far above {NEIGHBOUR_MS} ms: the machine was busy)\n"
    );
    println!(
        "{:<24} {:<8} {:>7} {:>7} {:>7} {:>6} {:>13} {:>8} {:>5}  spin loop (source)",
        "library", "mode", "A ms", "B ms", "A-B ms", "A/B", "A/B min-max", "spin CPU", "load",
    );
    let mut notes = Vec::new();
    for case in CASES {
        if !args.filters.is_empty() && !args.filters.iter().any(|f| case.name.contains(f)) {
            continue;
        }
        if !lib_path(case.key).is_some_and(|p| p.exists())
            || case
                .preload
                .iter()
                .any(|k| !lib_path(k).is_some_and(|p| p.exists()))
        {
            println!(
                "{:<24} skipped: not installed (scripts/setup-native.sh)",
                case.name
            );
            continue;
        }
        let mut modes: Vec<(&str, &[(&str, &str)])> = vec![("default", &[])];
        if !case.spin_off.is_empty() && !args.no_control {
            modes.push(("control", case.spin_off));
        }
        for (mode, env) in modes {
            match run_child(case, iters, &args, env) {
                Ok(out) => {
                    let row = out.lines().find_map(|l| l.strip_prefix("ROW\t"));
                    let f: Vec<&str> = row.map(|r| r.split('\t').collect()).unwrap_or_default();
                    if f.len() < 7 {
                        println!("{:<24} {mode:<8} no result: {out}", case.name);
                        continue;
                    }
                    let what = if mode == "control" {
                        case.spin_off
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    } else {
                        case.spin.to_string()
                    };
                    println!(
                        "{:<24} {mode:<8} {:>7} {:>7} {:>7} {:>6} {:>13} {:>8} {:>5}  {what}",
                        case.name,
                        f[0],
                        f[1],
                        f[6],
                        f[2],
                        format!("{}-{}", f[3], f[4]),
                        f[5],
                        loadavg().split(' ').next().unwrap_or("?").to_string()
                    );
                    if mode == "default" {
                        if let Some(info) = out.lines().find_map(|l| l.strip_prefix("INFO\t")) {
                            notes.push(format!("{}: {info}", case.name));
                        }
                    }
                }
                Err(e) => println!("{:<24} {mode:<8} failed: {e}", case.name),
            }
        }
    }
    println!("\nload {} at end", loadavg());
    for n in notes {
        println!("  {n}");
    }
}

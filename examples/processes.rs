//! Three processes at once, each the demo's rayon × OpenBLAS QR loop (128 `dgeqrf`
//! of 256², in a rayon loop), on this machine's cores:
//!
//! - **default**: each process sizes rayon and OpenBLAS to every core;
//! - **best static**: the best of the static per-process settings tried (rayon
//!   threads × BLAS threads = 1×1 and 2×1);
//! - **budget run**: `budget run -j <cores>` over the three, each process running the
//!   demo's budget QR loop (a budget region around rayon, each QR in `s.native`).
//!
//! Strategies are interleaved within each repetition; the makespan is measured
//! from the moment all three processes are ready (matrices made) until the last
//! exits. Prints the median and spread (min–max) of each and the ratios.
//!
//! ```text
//! cargo build --release -p budget-threads-cli          # the `budget` binary
//! cargo run --release --example processes -- [REPS (default 5)] [LOOPS (default 2)]
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use budget::prelude::*;
use rayon::prelude::*;

const QR_N: usize = 256;
const PROCESSES: usize = 3;

use budget_testkit::blas::matrices;

/// One worker process: make the matrices, say ready, wait for go, run the loops.
fn worker(strategy: &str, loops: usize, ready: &Path, go: &Path) {
    let blas = budget_testkit::kernels::Blas::load().unwrap_or_else(|e| {
        eprintln!("processes: {e}");
        std::process::exit(2)
    });
    let mats = matrices(128, QR_N);
    let cores = budget::stats().total;
    let run: Box<dyn Fn()> = match strategy {
        "default" => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(cores)
                .build()
                .unwrap();
            Box::new(move || pool.install(|| mats.par_iter().for_each(|m| blas.qr(m, QR_N))))
        }
        "static-1x1" | "static-2x1" => {
            let threads = if strategy == "static-1x1" { 1 } else { 2 };
            blas.set_threads(1);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            Box::new(move || pool.install(|| mats.par_iter().for_each(|m| blas.qr(m, QR_N))))
        }
        "budget" => Box::new(move || {
            budget::scope(|s| {
                s.install(|| {
                    mats.par_iter()
                        .for_each(|m| budget::scope(|i| i.native(|| blas.qr(m, QR_N))))
                })
            })
        }),
        other => panic!("unknown strategy {other}"),
    };
    std::fs::write(ready, b"").unwrap();
    while !go.exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    for _ in 0..loops {
        run();
    }
}

/// The `budget` binary next to this example's target directory.
fn budget_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("budget");
    path.exists().then_some(path)
}

/// Runs the three processes under `strategy`; returns the makespan in seconds.
fn makespan(strategy: &str, loops: usize, dir: &Path) -> f64 {
    let exe = std::env::current_exe().unwrap();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let go = dir.join("go");
    let readies: Vec<PathBuf> = (0..PROCESSES)
        .map(|i| dir.join(format!("ready{i}")))
        .collect();
    let worker_args = |i: usize| {
        vec![
            "--worker".to_owned(),
            strategy.to_owned(),
            loops.to_string(),
            readies[i].display().to_string(),
            go.display().to_string(),
        ]
    };
    let mut children: Vec<Child> = Vec::new();
    if strategy == "budget" {
        let budget = budget_binary()
            .expect("build the budget binary first: cargo build --release -p budget-threads-cli");
        let script = (0..PROCESSES)
            .map(|i| format!("'{}' {} &", exe.display(), worker_args(i).join(" ")))
            .collect::<Vec<_>>()
            .join(" ")
            + " wait";
        let cores = budget::stats().total.to_string();
        children.push(
            Command::new(budget)
                .args(["run", "-j", &cores, "--", "sh", "-c", &script])
                .spawn()
                .unwrap(),
        );
    } else {
        for i in 0..PROCESSES {
            children.push(
                Command::new(&exe)
                    .args(worker_args(i))
                    .env_remove("BUDGET_NODE")
                    .spawn()
                    .unwrap(),
            );
        }
    }
    while !readies.iter().all(|r| r.exists()) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let start = Instant::now();
    std::fs::write(&go, b"").unwrap();
    for mut child in children {
        assert!(child.wait().unwrap().success(), "{strategy} failed");
    }
    start.elapsed().as_secs_f64()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        let loops = args[2].parse().unwrap();
        worker(&args[1], loops, Path::new(&args[3]), Path::new(&args[4]));
        return;
    }
    let reps: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(5);
    let loops: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    if budget_binary().is_none() {
        eprintln!(
            "processes: build the budget binary first: cargo build --release -p budget-threads-cli"
        );
        std::process::exit(2);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{PROCESSES} processes × rayon × OpenBLAS QR loop ({loops} × 128 QR of {QR_N}²), {} cores, \
         {reps} repetitions, load average {}",
        budget::stats().total,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let strategies = ["default", "static-1x1", "static-2x1", "budget"];
    let dir = std::env::temp_dir().join(format!("budget-processes-{}", std::process::id()));
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); strategies.len()];
    for rep in 0..reps {
        // Interleaved, in a rotating order: drift in the machine's load hits all.
        for k in 0..strategies.len() {
            let i = (k + rep) % strategies.len();
            times[i].push(makespan(strategies[i], loops, &dir));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let med: Vec<f64> = times.iter().map(|t| median(t)).collect();
    for (i, name) in strategies.iter().enumerate() {
        let (lo, hi) = times[i]
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), &t| (lo.min(t), hi.max(t)));
        println!(
            "{name:<12} median {:>8.1} ms   spread {:>8.1}–{:<8.1} ms",
            med[i] * 1e3,
            lo * 1e3,
            hi * 1e3
        );
    }
    let best_static = med[1].min(med[2]);
    println!(
        "budget run / best static = {:.2}× (goal ≤ 1.10)   default / budget run = {:.2}× (goal ≥ 2)",
        med[3] / best_static,
        med[0] / med[3]
    );
}

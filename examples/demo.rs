//! The main demo of `budget`: one parallelism budget for the whole process.
//!
//! Run: `cargo run --release --example demo` (a few seconds; `BUDGET_NUM_THREADS=N`
//! changes the budget).
//!
//! It shows, on whatever machine it runs:
//!
//! 1. **Nested regions shrink.** A region alone gets every core. An outer region on
//!    every core whose tasks each open an inner region: the inner regions get width 1
//!    (the outer one holds every token), so no thread is added. An outer region that
//!    asked for 1 core leaves the rest to the region nested in it.
//! 2. **Regions grow back.** A region opened while another region holds the other
//!    cores starts at width 1; when that region ends and releases its tokens, the
//!    waiting region is handed them and its queued tasks start on a new thread.
//! 3. **What it buys.** A nested workload (outer tasks, each calling a library whose
//!    loop is parallel inside) run three ways: with budget regions at both levels,
//!    "naive nested" (each level starts one `std::thread` per core, as a library with
//!    its own pool does), and serially. Times are compared to the ideal,
//!    `serial / cores`.
//!
//! It ends with `budget::stats()`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

fn main() {
    let cores = budget::stats().total;
    println!(
        "budget demo: {cores} cores in the budget (machine: {} available{})\n",
        thread::available_parallelism().map_or(1, |n| n.get()),
        load_average().map_or(String::new(), |load| format!(
            ", load average {load}: the timings assume an otherwise idle machine"
        ))
    );
    nested_widths(cores);
    grow_back(cores);
    nested_workload(cores);
    println!("\n{}", budget::stats());
}

// ---------------------------------------------------------------------------
// 1. Nested regions shrink

fn nested_widths(cores: usize) {
    println!("1. Nested regions take what is free; they never wait and never oversubscribe");
    println!(
        "   {:<56} {:>11}  inner widths seen",
        "situation", "outer width"
    );

    let alone = budget::scope(|s| s.width());
    println!(
        "   {:<56} {alone:>11}  -",
        "one region, nothing else running"
    );

    let seen = Mutex::new(BTreeMap::new());
    let outer = budget::scope(|outer| {
        outer.for_each(0..8, |_| {
            budget::scope(|inner| {
                *seen.lock().unwrap().entry(inner.width()).or_insert(0) += 1;
                inner.for_each(0..1_000, |i| {
                    black_box(spin(black_box(i as u64)));
                });
            });
        });
        outer.width()
    });
    println!(
        "   {:<56} {outer:>11}  {}",
        format!("outer on all {cores} cores, 8 tasks each open a region"),
        widths(&seen.into_inner().unwrap())
    );

    let (outer, inner) = budget::scope_with(1, |outer| {
        (outer.width(), budget::scope(|inner| inner.width()))
    });
    println!(
        "   {:<56} {outer:>11}  {inner} ×1",
        "outer asked for 1 core, one inner region in it"
    );
    println!();
}

fn widths(seen: &BTreeMap<usize, usize>) -> String {
    seen.iter()
        .map(|(width, count)| format!("{width} ×{count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------
// 2. Regions grow back

fn grow_back(cores: usize) {
    println!("2. A region grows back when another region releases its tokens");
    if cores < 2 {
        println!("   (one core in the budget: there is nothing to grow into)\n");
        return;
    }
    const TASKS: usize = 40;
    let task_spin = iterations_per_us() * 1_000; // ~1 ms each
    let (opened_tx, opened_rx) = mpsc::channel();
    let (close_tx, close_rx) = mpsc::channel::<()>();
    let opener = thread::current().id();
    let on_opener = AtomicUsize::new(0);
    thread::scope(|t| {
        // Region B, on another thread, holds every core but one until told to end.
        t.spawn(move || {
            budget::scope_with(cores - 1, |b| {
                opened_tx.send(b.width()).unwrap();
                close_rx.recv().ok();
            })
        });
        let b_width = opened_rx.recv().unwrap();

        // Region A asks for every core; it gets the one left, and queues its work.
        let (before, after, grew_in) = budget::scope(|a| {
            for _ in 0..TASKS {
                a.spawn(|_| {
                    black_box(spin(task_spin));
                    if thread::current().id() == opener {
                        on_opener.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            let before = a.width();
            let released = Instant::now();
            close_tx.send(()).unwrap(); // region B ends and releases its tokens
            while a.width() == before && released.elapsed() < Duration::from_secs(2) {
                thread::yield_now();
            }
            (before, a.width(), released.elapsed())
        });
        let on_opener = on_opener.load(Ordering::Relaxed);
        println!("   {:<48} {:>7} {:>7}", "region", "asked", "width");
        println!(
            "   {:<48} {:>7} {b_width:>7}",
            "B, on another thread",
            cores - 1
        );
        println!(
            "   {:<48} {cores:>7} {before:>7}",
            "A, on this thread, at entry (B holds the rest)"
        );
        println!(
            "   {:<48} {cores:>7} {after:>7}",
            format!("A, {:.0} µs after B ended", grew_in.as_secs_f64() * 1e6)
        );
        println!(
            "   A's {TASKS} tasks of ~1 ms: {} ran on the worker(s) it grew into, {on_opener} on its own thread",
            TASKS - on_opener
        );
    });
    println!();
}

// ---------------------------------------------------------------------------
// 3. A nested workload, three ways

/// Outer tasks; each calls the library this many times; each call loops over ITEMS.
const OUTER: usize = 16;
const CALLS: usize = 150;
const ITEMS: usize = 32;
/// Work per item, in µs.
const ITEM_US: u64 = 5;

/// The library's work on one item: about `ITEM_US` µs of arithmetic.
fn item(call: usize, i: usize) -> u64 {
    spin(iterations_per_us() * ITEM_US + ((call * ITEMS + i) & 7) as u64)
}

/// The library written with budget: a region around its parallel loop.
fn library_budget(call: usize) -> u64 {
    let sum = AtomicU64::new(0);
    budget::scope(|s| {
        s.for_each(0..ITEMS, |i| {
            sum.fetch_add(item(call, i), Ordering::Relaxed);
        })
    });
    sum.into_inner()
}

/// The library sized to "all cores" on its own: one new thread per core per call.
fn library_naive(call: usize, cores: usize, started: &AtomicUsize) -> u64 {
    let sum = AtomicU64::new(0);
    naive_for(ITEMS, cores, started, |i| {
        sum.fetch_add(item(call, i), Ordering::Relaxed);
    });
    sum.into_inner()
}

/// A parallel loop on `threads` new threads taking indices dynamically.
fn naive_for(n: usize, threads: usize, started: &AtomicUsize, f: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    thread::scope(|s| {
        for _ in 0..threads {
            started.fetch_add(1, Ordering::Relaxed);
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                f(i);
            });
        }
    });
}

fn run_serial() -> u64 {
    (0..OUTER * CALLS)
        .map(|call| (0..ITEMS).map(|i| item(call, i)).fold(0, u64::wrapping_add))
        .fold(0, u64::wrapping_add)
}

fn run_budget() -> u64 {
    let sum = AtomicU64::new(0);
    budget::scope(|outer| {
        outer.for_each(0..OUTER, |task| {
            for call in task * CALLS..(task + 1) * CALLS {
                sum.fetch_add(library_budget(call), Ordering::Relaxed);
            }
        })
    });
    sum.into_inner()
}

fn run_naive(cores: usize, started: &AtomicUsize) -> u64 {
    let sum = AtomicU64::new(0);
    naive_for(OUTER, cores, started, |task| {
        for call in task * CALLS..(task + 1) * CALLS {
            sum.fetch_add(library_naive(call, cores, started), Ordering::Relaxed);
        }
    });
    sum.into_inner()
}

/// Best of three runs: (seconds, checksum).
fn best_of_3(mut run: impl FnMut() -> u64) -> (f64, u64) {
    let mut best = f64::INFINITY;
    let mut checksum = 0;
    for _ in 0..3 {
        let start = Instant::now();
        checksum = black_box(run());
        best = best.min(start.elapsed().as_secs_f64());
    }
    (best, checksum)
}

fn nested_workload(cores: usize) {
    println!(
        "3. Nested workload: {OUTER} outer tasks × {CALLS} library calls × a parallel loop of \
         {ITEMS} items of ~{ITEM_US} µs (best of 3)"
    );
    let (serial, expected) = best_of_3(run_serial);
    let ideal = serial / cores as f64;

    let (budget_time, budget_sum) = best_of_3(run_budget);
    let budget_threads = budget::stats().worker_threads;

    let started = AtomicUsize::new(0);
    let (naive_time, naive_sum) = best_of_3(|| run_naive(cores, &started));
    let naive_threads = started.load(Ordering::Relaxed) / 3;
    assert_eq!(budget_sum, expected, "budget computed the same result");
    assert_eq!(
        naive_sum, expected,
        "naive nesting computed the same result"
    );

    println!(
        "   {:<42} {:>10} {:>10} {:>26}",
        "variant", "time", "/ ideal", "threads started"
    );
    let row = |name: &str, time: f64, threads: String| {
        println!(
            "   {name:<42} {:>7.1} ms {:>9.2}× {threads:>26}",
            time * 1e3,
            time / ideal
        );
    };
    row(
        "budget (regions at both levels)",
        budget_time,
        format!("{budget_threads} pool worker(s), reused"),
    );
    row(
        "naive nested (threads per core per level)",
        naive_time,
        format!("{naive_threads} per run"),
    );
    row("serial", serial, "0".into());
    println!(
        "   {:<42} {:>7.1} ms {:>9.2}×",
        format!("ideal = serial / {cores}"),
        ideal * 1e3,
        1.0
    );
    println!(
        "   naive nesting takes {:.2}× budget's time; serial takes {:.2}×",
        naive_time / budget_time,
        serial / budget_time
    );
}

/// The 1-minute load average (Linux), so busy-machine timings can be recognised.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next().map(str::to_owned)
}

// ---------------------------------------------------------------------------
// CPU work

/// `iterations` steps of an LCG: work the optimiser cannot remove.
fn spin(iterations: u64) -> u64 {
    let mut x = iterations;
    for _ in 0..iterations {
        x = black_box(
            x.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        );
    }
    x
}

/// Spin iterations per µs on this machine (median of a few short calibrations).
fn iterations_per_us() -> u64 {
    static RATE: OnceLock<u64> = OnceLock::new();
    *RATE.get_or_init(|| {
        let probe = 100_000;
        let mut rates: Vec<f64> = (0..5)
            .map(|_| {
                let start = Instant::now();
                black_box(spin(black_box(probe)));
                probe as f64 / (start.elapsed().as_secs_f64() * 1e6)
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        (rates[2] as u64).max(1)
    })
}

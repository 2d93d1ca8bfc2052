//! The main demo of `budget`: one parallelism budget for the whole process.
//!
//! Run: `cargo run --release --example demo` (about a minute on 2 idle cores: each
//! strategy runs 10 times; `BUDGET_NUM_THREADS=N` changes the budget). Options:
//! `--quick` (a reduced run, about 20 s), `--json PATH` (the results, schema `budget-demo/2`), `--svg PATH` (a bar
//! chart; docs/demo.svg is one), `--scale X` (work scale, 1 = full), `--reps N` (timed
//! rounds, 9 by default, 5 with `--quick`).
//!
//! Every strategy of a scenario runs once per round, interleaved (in a Williams order:
//! each follows each other one equally often), after one untimed warm-up round; the tables give the median, the spread (fastest
//! and slowest round) and, for budget against the best static setting, the range of
//! the per-round ratios and a call: a winner only when every round agrees (at least
//! 5 rounds), "too close to call" otherwise.
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
//! 3. **The problem and the fix.** Five nested scenarios (rayon × OpenBLAS QR,
//!    rayon × an OpenMP kernel, nested rayon, imbalanced nested, one big BLAS call and
//!    many small ones) and one of processes (three processes at once, each a rayon ×
//!    OpenBLAS QR loop, budget being a node budget the three share), each run with
//!    every layer at all cores, the best static setting (several measured, the
//!    fastest kept) and budget, against the ideal `serial / cores`, with the peak
//!    number of busy threads seen (sampled from /proc during the warm-up round, the
//!    worker processes' threads included). Rows that need OpenBLAS or OpenMP say what
//!    to install where they are missing.
//!
//! The processes scenario re-runs this executable as its worker processes, with a
//! hidden first argument `--worker` that `main` handles before anything else.
//!
//! It ends with `budget::stats()`.

mod probe;
pub(crate) mod processes;
mod qr;
mod report;
mod scenarios;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use budget_testkit::workloads::spin;
pub(crate) use report::Row;

/// What to run and where to write the results.
#[derive(Clone, Debug, Default)]
pub(crate) struct Options {
    /// A reduced run (scale 0.5, 5 rounds).
    pub(crate) quick: bool,
    /// Work scale (1 = full); overrides the one `quick` implies.
    pub(crate) scale: Option<f64>,
    /// Timed rounds (each runs every strategy once); overrides the default (9, or 5
    /// with `quick`).
    pub(crate) reps: Option<usize>,
    /// Where to write the JSON results.
    pub(crate) json: Option<PathBuf>,
    /// Where to write the SVG chart.
    pub(crate) svg: Option<PathBuf>,
    /// Print a progress line on stderr.
    pub(crate) progress: bool,
    /// How the processes scenario starts its workers; `None`: this executable with
    /// `--worker` ([`processes::this_executable`]).
    pub(crate) worker: Option<processes::Launcher>,
}

impl Options {
    /// Parses the command line (without the program name).
    pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
        let mut o = Options {
            progress: true,
            ..Options::default()
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = |what: &str| args.next().ok_or(format!("{arg} needs {what}"));
            match arg.as_str() {
                "--quick" => o.quick = true,
                "--json" => o.json = Some(value("a path")?.into()),
                "--svg" => o.svg = Some(value("a path")?.into()),
                "--scale" => {
                    o.scale = Some(
                        value("a number")?
                            .parse()
                            .ok()
                            .filter(|s: &f64| *s > 0.0)
                            .ok_or("--scale needs a positive number")?,
                    )
                }
                "--reps" => {
                    o.reps = Some(
                        value("a count")?
                            .parse()
                            .ok()
                            .filter(|&n: &usize| n > 0)
                            .ok_or("--reps needs a positive count")?,
                    )
                }
                "--no-progress" => o.progress = false,
                "-h" | "--help" => {
                    return Err(
                        "usage: demo [--quick] [--json PATH] [--svg PATH] [--scale X] \
                                [--reps N] [--no-progress]"
                            .into(),
                    )
                }
                other => return Err(format!("unknown argument {other:?} (try --help)")),
            }
        }
        Ok(o)
    }
}

/// Runs the six scenarios, prints the table, writes the JSON and SVG files asked for,
/// and returns the rows.
pub(crate) fn run(opts: &Options) -> std::io::Result<Vec<Row>> {
    let cores = budget::stats().total;
    let plan = scenarios::Plan {
        cores,
        scale: opts.scale.unwrap_or(if opts.quick { 0.5 } else { 1.0 }),
        reps: opts.reps.unwrap_or(if opts.quick { 5 } else { 9 }),
        worker: opts.worker.unwrap_or(processes::this_executable),
    };
    let names = scenarios::NAMES;
    let mut rows = Vec::new();
    let tty = std::io::stderr().is_terminal();
    if opts.progress {
        eprintln!(
            "3. timing {} scenarios: a warm-up round, then {} rounds of every strategy, \
             interleaved{}",
            names.len(),
            plan.reps,
            if tty { "" } else { " (one line per scenario)" }
        );
    }
    for (i, name) in names.iter().enumerate() {
        let started = Instant::now();
        let progress = |round: usize, what: &str| {
            if !opts.progress {
                return;
            }
            let mut err = std::io::stderr().lock();
            if tty {
                let round = match round {
                    0 => "warm-up".to_owned(),
                    r => format!("round {r}/{}", plan.reps),
                };
                let _ = write!(
                    err,
                    "\r\x1b[2K[{}/{}] {name}: {round}: {what} …",
                    i + 1,
                    names.len()
                );
                let _ = err.flush();
            }
        };
        let outcome = scenarios::run(i, &plan, &progress);
        if opts.progress && !tty {
            let status = match &outcome {
                Ok(_) => format!("{:.1} s", started.elapsed().as_secs_f64()),
                Err(_) => "skipped".to_owned(),
            };
            eprintln!("[{}/{}] {name}: {status}", i + 1, names.len());
        }
        rows.extend(report::rows(name, &outcome, cores));
    }
    if opts.progress && tty {
        eprint!("\r\x1b[2K");
    }
    println!(
        "3. The problem and the fix: median time of each strategy over {} interleaved rounds \
         (scale {}), ratio to\n   the ideal serial / {cores}, and the peak busy threads seen \
         (all cores / best static / budget)\n",
        plan.reps, plan.scale
    );
    println!("{}", report::table(&names, &rows, cores));
    println!(
        "   Spread over the rounds, and budget against the best static setting round by \
         round\n   (a call needs every round to agree; ranges that straddle 1 are noise):\n"
    );
    println!("{}", report::spread(&names, &rows, plan.reps));
    println!("{}", report::verdict(&names, &rows));
    if let Some(path) = &opts.json {
        std::fs::write(
            path,
            report::json(&rows, cores, opts.quick, plan.scale, plan.reps),
        )?;
        println!("results written to {}", path.display());
    }
    if let Some(path) = &opts.svg {
        std::fs::write(path, report::svg(&names, &rows, cores))?;
        println!("chart written to {}", path.display());
    }
    Ok(rows)
}

fn main() {
    // A worker process of the processes scenario: nothing else of the demo runs.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        processes::worker(&args[1..]);
        return;
    }
    let opts = match Options::parse(args) {
        Ok(o) => o,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let cores = budget::stats().total;
    println!(
        "budget demo: {cores} cores in the budget, from {} (machine: {} available{})\n",
        budget::detect().source,
        thread::available_parallelism().map_or(1, |n| n.get()),
        load_average().map_or(String::new(), |load| format!(
            ", load average {load}: the timings assume an otherwise idle machine"
        ))
    );
    nested_widths(cores);
    grow_back(cores);
    if let Err(e) = run(&opts) {
        eprintln!("cannot write the results: {e}");
        std::process::exit(1);
    }
    let stats = budget::stats();
    println!("\n{stats}");
    println!("demo ran in {:.1} s", started.elapsed().as_secs_f64());
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

/// The 1-minute load average (Linux), so busy-machine timings can be recognised.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next().map(str::to_owned)
}

// ---------------------------------------------------------------------------
// CPU work

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

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
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use std::time::{Duration, Instant};

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
        other => {
            eprintln!("budget-probe: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}

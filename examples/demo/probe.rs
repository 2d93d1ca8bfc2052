//! Timing (best of N) and the peak number of busy threads, sampled from
//! `/proc/self/task/*/stat` every ~1 ms by a sampler thread (Linux).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// One strategy's measurement.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Measured {
    /// Best wall time of the runs, in seconds.
    pub(crate) seconds: f64,
    /// Most threads of this process seen running or runnable at once (`R`), without
    /// the sampler itself; `None` where /proc is not readable.
    pub(crate) peak_busy: Option<usize>,
}

/// Runs `f` `reps` times (at least once): the best time, and the peak busy threads
/// sampled during the first run (the sampler costs a little CPU, so the best time
/// usually comes from a later run).
pub(crate) fn measure(reps: usize, mut f: impl FnMut()) -> Measured {
    let mut best = f64::INFINITY;
    let mut peak_busy = None;
    for rep in 0..reps.max(1) {
        let sampler = (rep == 0).then(Sampler::start);
        let start = Instant::now();
        f();
        best = best.min(start.elapsed().as_secs_f64());
        if let Some(sampler) = sampler {
            peak_busy = sampler.stop();
        }
    }
    Measured {
        seconds: best.max(1e-9),
        peak_busy,
    }
}

struct Sampler {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Option<usize>>,
}

impl Sampler {
    fn start() -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let me = own_tid();
            let mut peak = None;
            loop {
                if let Some(n) = busy_threads(&me) {
                    peak = Some(peak.unwrap_or(0).max(n));
                }
                if flag.load(Ordering::Relaxed) {
                    return peak;
                }
                thread::sleep(Duration::from_millis(1));
            }
        });
        Sampler { stop, handle }
    }

    fn stop(self) -> Option<usize> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().ok().flatten()
    }
}

/// The calling thread's id as /proc names it.
fn own_tid() -> String {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// Threads of this process in state `R`, except `me`.
fn busy_threads(me: &str) -> Option<usize> {
    let mut busy = 0;
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        if entry.file_name().to_string_lossy() == me {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // the thread ended
        };
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next());
        busy += usize::from(state == Some("R"));
    }
    Some(busy)
}

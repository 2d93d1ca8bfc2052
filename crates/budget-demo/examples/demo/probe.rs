//! Timing: strategies interleaved round by round, every sample kept; and the peak
//! number of busy threads, sampled from `/proc/self/task/*/stat` every ~1 ms by a
//! sampler thread (Linux) during an untimed warm-up round, with the threads of the
//! worker processes the demo started ([`watch`]) counted too.
//!
//! Interleaving puts every strategy under the same drift (another process starting,
//! a frequency change), so the medians compare like with like and the per-round
//! ratios cancel slow drift. The order within a round follows a Williams design, so
//! that what a strategy leaves behind (OpenBLAS threads still spinning from a wide
//! call, a warm cache) falls on every other strategy alike: over a full cycle of
//! rounds (`n` rounds for an even number `n` of strategies, `2n` for an odd one) each
//! strategy runs right after each other one equally often. A plain rotation
//! (A B C, B C A, …) would not: B would always follow A.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One strategy's measurement.
#[derive(Clone, Debug)]
pub(crate) struct Measured {
    /// Wall time of each timed round, in seconds, in round order (round `i` of every
    /// strategy of a scenario ran back to back).
    pub(crate) samples: Vec<f64>,
    /// Most threads of this process and of the watched worker processes seen running
    /// or runnable at once (`R`), without the sampler itself, during the warm-up
    /// round; `None` where /proc is not readable.
    pub(crate) peak_busy: Option<usize>,
}

impl Measured {
    /// The median time (the mean of the middle two for an even count).
    pub(crate) fn median(&self) -> f64 {
        quantile(&self.samples, 0.5)
    }

    /// The fastest round.
    pub(crate) fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// The slowest round.
    pub(crate) fn max(&self) -> f64 {
        self.samples.iter().copied().fold(0.0, f64::max)
    }
}

/// The `q` quantile of `values` (linear between the two nearest ranks).
pub(crate) fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// A strategy to time: a label (for progress and for the static setting's name) and
/// the run. Each run sets up what it changes (thread counts) and restores it, so the
/// order of the strategies does not matter.
pub(crate) struct Strategy<'a> {
    /// The label.
    pub(crate) label: String,
    /// The run.
    pub(crate) run: Box<dyn FnMut() + 'a>,
}

impl<'a> Strategy<'a> {
    /// A strategy named `label`.
    pub(crate) fn new(label: impl Into<String>, run: impl FnMut() + 'a) -> Strategy<'a> {
        Strategy {
            label: label.into(),
            run: Box::new(run),
        }
    }
}

/// The order of the `n` strategies in round `round`: row `round` of a Williams
/// design. The first row is `0, 1, n-1, 2, n-2, …`; row `k` adds `k` to each entry
/// (mod `n`); for odd `n`, rows `n..2n` are the first `n` reversed.
pub(crate) fn order(round: usize, n: usize) -> Vec<usize> {
    let mut base = Vec::with_capacity(n);
    let (mut low, mut high) = (1, n);
    for j in 0..n {
        if j == 0 {
            base.push(0);
        } else if j % 2 == 1 {
            base.push(low);
            low += 1;
        } else {
            high -= 1;
            base.push(high);
        }
    }
    let cycle = if n % 2 == 0 { n } else { 2 * n };
    let k = round % cycle.max(1);
    if k >= n {
        base.reverse();
    }
    base.into_iter().map(|x| (x + k) % n).collect()
}

/// Runs every strategy once untimed (the warm-up, sampling busy threads), then
/// `rounds` timed rounds, each in the order [`order`] gives. `progress` gets the round
/// (0 = warm-up) and the strategy's label. Returns one [`Measured`] per strategy, in
/// the order given.
pub(crate) fn interleave(
    rounds: usize,
    strategies: &mut [Strategy<'_>],
    progress: &dyn Fn(usize, &str),
) -> Vec<Measured> {
    let n = strategies.len();
    let mut out: Vec<Measured> = (0..n)
        .map(|_| Measured {
            samples: Vec::with_capacity(rounds),
            peak_busy: None,
        })
        .collect();
    for (s, m) in strategies.iter_mut().zip(out.iter_mut()) {
        progress(0, &s.label);
        let sampler = Sampler::start();
        (s.run)();
        m.peak_busy = sampler.stop();
    }
    for round in 0..rounds.max(1) {
        for i in order(round, n) {
            progress(round + 1, &strategies[i].label);
            let start = Instant::now();
            (strategies[i].run)();
            out[i].samples.push(start.elapsed().as_secs_f64().max(1e-9));
        }
    }
    out
}

struct Sampler {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Option<usize>>,
}

impl Sampler {
    /// Starts sampling; returns once the sampler runs, so that its first look falls
    /// inside the strategy's run (a short run on a busy machine could otherwise end
    /// before the sampler's thread was first scheduled).
    fn start() -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let ready = Arc::new(std::sync::Barrier::new(2));
        let go = Arc::clone(&ready);
        let handle = thread::spawn(move || {
            let me = own_tid();
            go.wait();
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
        ready.wait();
        Sampler { stop, handle }
    }

    /// The most threads seen running at once; `None` when no look saw any (the run
    /// was over between two looks): a running strategy has at least its own thread.
    fn stop(self) -> Option<usize> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().ok().flatten().filter(|&n| n > 0)
    }
}

/// Worker processes whose threads the sampler counts with this process's.
static WATCHED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Counts the threads of process `pid` (a worker the demo started) in the peak.
pub(crate) fn watch(pid: u32) {
    WATCHED.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

/// Stops counting process `pid`.
pub(crate) fn unwatch(pid: u32) {
    WATCHED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|&p| p != pid);
}

/// The calling thread's id as /proc names it.
fn own_tid() -> String {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// Threads of this process in state `R`, except `me`, plus those of the watched
/// processes.
fn busy_threads(me: &str) -> Option<usize> {
    let watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let others = watched
        .iter()
        .filter_map(|pid| busy_in(&format!("/proc/{pid}/task"), ""))
        .sum::<usize>();
    Some(busy_in("/proc/self/task", me)? + others)
}

/// Threads in state `R` among the tasks listed in `dir`, except `me`.
fn busy_in(dir: &str, me: &str) -> Option<usize> {
    let mut busy = 0;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn rounds_interleave_after_a_warm_up() {
        let log = RefCell::new(String::new());
        let mut strategies: Vec<Strategy<'_>> = ["A", "B", "C"]
            .into_iter()
            .map(|name| Strategy::new(name, || log.borrow_mut().push_str(name)))
            .collect();
        let seen = RefCell::new(Vec::new());
        let measured = interleave(3, &mut strategies, &|round, label| {
            seen.borrow_mut().push((round, label.to_owned()))
        });
        drop(strategies);
        // Warm-up in order, then each round in the design's order.
        assert_eq!(log.into_inner(), "ABC".to_owned() + "ABC" + "BCA" + "CAB");
        assert_eq!(seen.borrow()[0], (0, "A".to_owned()));
        assert_eq!(seen.borrow()[3], (1, "A".to_owned()));
        assert_eq!(seen.borrow()[6], (2, "B".to_owned()));
        assert_eq!(measured.len(), 3);
        assert!(measured.iter().all(|m| m.samples.len() == 3));
    }

    #[test]
    fn each_strategy_follows_each_other_equally_often() {
        for n in 2..=7 {
            let cycle = if n % 2 == 0 { n } else { 2 * n };
            let mut follows = vec![vec![0; n]; n];
            for round in 0..cycle {
                let row = order(round, n);
                let mut sorted = row.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "a permutation");
                for pair in row.windows(2) {
                    follows[pair[0]][pair[1]] += 1;
                }
            }
            let want = cycle * (n - 1) / (n * (n - 1));
            for (a, row) in follows.iter().enumerate() {
                for (b, &count) in row.iter().enumerate() {
                    if a != b {
                        assert_eq!(count, want, "n = {n}: {b} after {a}");
                    }
                }
            }
        }
        // Every round of the five-strategy scenarios is a permutation, also past a cycle.
        assert_eq!(order(10, 5), order(0, 5));
    }

    #[test]
    fn median_and_spread() {
        let m = Measured {
            samples: vec![3.0, 1.0, 10.0, 2.0],
            peak_busy: None,
        };
        assert_eq!(m.median(), 2.5);
        assert_eq!((m.min(), m.max()), (1.0, 10.0));
        assert_eq!(quantile(&[5.0, 1.0, 3.0], 0.5), 3.0);
        assert_eq!(quantile(&[4.0], 0.25), 4.0);
    }
}

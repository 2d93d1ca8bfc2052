//! Stress: 64 threads × 200 random region trees on a budget of 4 tokens (so there is
//! real contention on a 2-core machine): nesting up to depth 4, random `scope_with`
//! requests, spawn / join / for_each inside, and panics injected at random points.
//!
//! Every tree's outcome is checked: it panics exactly when a panic was injected in it,
//! with one of the injected payloads; every spawned task ran; every `for_each` saw
//! each element; widths stay within `1..=requested`. At the end every token is back.
//!
//! A watchdog turns a deadlock into a failure: the workload runs on its own thread
//! and the test waits for it with a timeout, printing the budget's statistics and
//! each thread's progress before exiting the process (a hung thread cannot be joined).
//!
//! Deterministic: a seeded xorshift drives every choice; set `BUDGET_STRESS_SEED` to
//! replay another seed (the seed in use is printed on failure). Thread interleavings
//! still vary from run to run.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

const TOTAL: usize = 4;
const THREADS: usize = 64;
const TREES_PER_THREAD: usize = 200;
const MAX_DEPTH: u64 = 4;
const WATCHDOG: Duration = Duration::from_secs(120);

/// xorshift64*: tiny, deterministic, good enough for choosing operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Mix the seed so that nearby seeds give unrelated streams; never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The payload of an injected panic.
#[derive(Debug, PartialEq, Eq)]
struct Injected(u64);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What one tree records, to check its outcome.
#[derive(Default)]
struct Tree {
    injected: Mutex<Vec<u64>>,
    spawned: AtomicUsize,
    ran: AtomicUsize,
}

impl Tree {
    /// Records and throws a new injected panic.
    fn boom(&self) {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        self.injected.lock().unwrap().push(id);
        panic::panic_any(Injected(id));
    }
}

/// One region with random contents; recurses while `depth > 0`.
fn node(rng: &mut Rng, depth: u64, tree: &Tree) {
    let max = rng.below(7) as usize; // 0 is taken as 1, above 4 as 4
    budget_core::scope_with(max, |s| {
        let width = s.width();
        assert_eq!(s.requested(), max.clamp(1, TOTAL));
        assert!(
            (1..=s.requested()).contains(&width),
            "width {width} of {}",
            s.requested()
        );
        for _ in 0..1 + rng.below(3) {
            if rng.below(100) == 0 {
                inject(rng, s, tree);
            }
            match rng.below(4) {
                0 => {
                    for _ in 0..rng.below(4) {
                        let seed = rng.next();
                        tree.spawned.fetch_add(1, Ordering::SeqCst);
                        s.spawn(move |_| {
                            tree.ran.fetch_add(1, Ordering::SeqCst);
                            if depth > 0 {
                                node(&mut Rng::new(seed), depth - 1, tree);
                            } else {
                                // Let other threads in while this task holds its slot.
                                thread::yield_now();
                            }
                        });
                    }
                }
                1 => {
                    let (a, b) = (rng.next(), rng.next());
                    let (x, y) = s.join(
                        || {
                            if depth > 0 {
                                node(&mut Rng::new(a), depth - 1, tree);
                            }
                            1
                        },
                        || {
                            if depth > 0 {
                                node(&mut Rng::new(b), depth - 1, tree);
                            }
                            2
                        },
                    );
                    assert_eq!((x, y), (1, 2));
                }
                2 => {
                    let n = rng.below(300) as usize;
                    let seed = rng.next();
                    let hits = AtomicUsize::new(0);
                    s.for_each(0..n, |i| {
                        hits.fetch_add(1, Ordering::Relaxed);
                        if i % 64 == 0 {
                            thread::yield_now();
                        }
                        if depth > 0 && i % 97 == 13 {
                            node(&mut Rng::new(seed ^ i as u64), depth - 1, tree);
                        }
                    });
                    assert_eq!(hits.into_inner(), n, "for_each skipped elements");
                }
                _ => {
                    if depth > 0 {
                        node(rng, depth - 1, tree);
                    }
                }
            }
        }
    });
}

/// Throws an injected panic from a random place in region `s`.
fn inject<'a>(rng: &mut Rng, s: &budget_core::Scope<'a>, tree: &'a Tree) {
    match rng.below(5) {
        0 => tree.boom(),
        1 => {
            // In a task, from inside a nested region; the scope resumes it at its end.
            tree.spawned.fetch_add(1, Ordering::SeqCst);
            s.spawn(move |_| {
                tree.ran.fetch_add(1, Ordering::SeqCst);
                budget_core::scope_with(2, |_| tree.boom());
            });
        }
        2 => {
            s.join(|| tree.boom(), || ());
        }
        3 => {
            s.join(|| (), || budget_core::scope_with(3, |_| tree.boom()));
        }
        _ => {
            let at = rng.below(100) as usize;
            s.for_each(0..100, |i| {
                if i == at {
                    tree.boom();
                }
            });
        }
    }
}

fn workload(seed: u64, progress: &[AtomicUsize]) {
    thread::scope(|t| {
        let handles: Vec<_> = progress
            .iter()
            .enumerate()
            .map(|(index, done)| {
                t.spawn(move || {
                    let mut rng = Rng::new(seed ^ (index as u64).wrapping_mul(0x1000_0001));
                    for round in 0..TREES_PER_THREAD {
                        let depth = rng.below(MAX_DEPTH + 1);
                        let tree = Tree::default();
                        let mut tree_rng = Rng::new(rng.next());
                        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                            node(&mut tree_rng, depth, &tree)
                        }));
                        let injected = tree.injected.lock().unwrap();
                        let what = format!("seed {seed:#x}, thread {index}, tree {round}");
                        match outcome {
                            Ok(()) => assert!(
                                injected.is_empty(),
                                "{what}: panics {injected:?} were injected but none surfaced"
                            ),
                            Err(payload) => match payload.downcast_ref::<Injected>() {
                                Some(Injected(id)) => assert!(
                                    injected.contains(id),
                                    "{what}: payload {id} is not one of {injected:?}"
                                ),
                                None => panic::resume_unwind(payload),
                            },
                        }
                        assert_eq!(
                            tree.ran.load(Ordering::SeqCst),
                            tree.spawned.load(Ordering::SeqCst),
                            "{what}: a spawned task never ran"
                        );
                        let stats = budget_core::stats();
                        assert!(stats.in_use <= stats.total, "{what}: {stats}");
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for handle in handles {
            if let Err(payload) = handle.join() {
                panic::resume_unwind(payload);
            }
        }
    });
}

#[test]
fn many_threads_random_trees_with_panics_conserve_tokens() {
    budget_core::Builder::new()
        .num_threads(TOTAL)
        .build_global()
        .expect("this test binary builds the budget first");
    let default = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<Injected>().is_none() {
            default(info);
        }
    }));
    let seed = std::env::var("BUDGET_STRESS_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0x00C0_FFEE_D15E_A5E5);

    let progress: &'static [AtomicUsize] =
        Vec::leak((0..THREADS).map(|_| AtomicUsize::new(0)).collect());
    let done = budget_testkit::watch::exit_unless_done(
        format!("stress (deadlock?), seed {seed:#x}"),
        WATCHDOG,
        1,
        move || {
            let done: Vec<usize> = progress.iter().map(|p| p.load(Ordering::Relaxed)).collect();
            format!("trees finished per thread (of {TREES_PER_THREAD}): {done:?}")
        },
    );
    if let Err(payload) = panic::catch_unwind(|| workload(seed, progress)) {
        eprintln!(
            "stress: failed with seed {seed:#x}; {}",
            budget_core::stats()
        );
        panic::resume_unwind(payload);
    }
    done.set();
    let stats = budget_core::stats();
    assert_eq!(stats.in_use, 0, "tokens leaked: {stats}");
    assert!(stats.peak_in_use <= stats.total, "{stats}");
    assert!(stats.worker_threads <= stats.total, "{stats}");
    assert!(
        stats.regions >= (THREADS * TREES_PER_THREAD) as u64,
        "{stats}"
    );
}

//! Leased rayon pools: built once per capacity, handed to one region at a time,
//! and returned to the cache when the region ends.
//!
//! The bound on OS threads: a pool of capacity `c` has `c` threads, and a pool is
//! only built when every pool of that capacity is leased. So the threads started
//! are at most `total` for each top-level rayon region running at the same time
//! (nested regions never lease: they run in place). At most
//! [`IDLE_POOLS_PER_CAPACITY`] idle pools of each capacity are kept; more are shut
//! down when returned.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

/// How many idle pools of one capacity the cache keeps for reuse.
pub const IDLE_POOLS_PER_CAPACITY: usize = 2;

thread_local! {
    /// True on the threads of budget's rayon pools.
    static ON_POOL: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is a worker of one of budget's rayon pools.
pub(crate) fn on_pool() -> bool {
    ON_POOL.with(Cell::get)
}

/// Counts for tests and reports: see [`stats`](crate::stats).
#[derive(Debug, Default)]
struct Counters {
    built: AtomicUsize,
    threads: AtomicUsize,
    leases: AtomicUsize,
}

struct Cache {
    /// Idle pools, indexed by capacity.
    idle: Mutex<Vec<Vec<Arc<rayon::ThreadPool>>>>,
    counters: Counters,
}

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Cache {
        idle: Mutex::new(Vec::new()),
        counters: Counters::default(),
    })
}

/// A pool leased to one region; goes back to the cache on drop.
pub(crate) struct PoolLease {
    pool: Option<Arc<rayon::ThreadPool>>,
    capacity: usize,
}

impl PoolLease {
    /// Leases an idle pool of `capacity` threads, building one if none is idle.
    pub(crate) fn take(capacity: usize) -> PoolLease {
        let cache = cache();
        cache.counters.leases.fetch_add(1, Ordering::Relaxed);
        let reused = cache
            .idle
            .lock()
            .get_mut(capacity)
            .and_then(|list| list.pop());
        let pool = reused.unwrap_or_else(|| build(capacity));
        PoolLease {
            pool: Some(pool),
            capacity,
        }
    }

    pub(crate) fn pool(&self) -> &rayon::ThreadPool {
        self.pool
            .as_ref()
            .expect("a lease holds its pool until drop")
    }
}

impl Drop for PoolLease {
    fn drop(&mut self) {
        let Some(pool) = self.pool.take() else { return };
        let cache = cache();
        let mut idle = cache.idle.lock();
        if idle.len() <= self.capacity {
            idle.resize_with(self.capacity + 1, Vec::new);
        }
        let list = &mut idle[self.capacity];
        if list.len() < IDLE_POOLS_PER_CAPACITY {
            list.push(pool);
        } else {
            drop(idle);
            cache
                .counters
                .threads
                .fetch_sub(self.capacity, Ordering::Relaxed);
            drop(pool); // rayon shuts its threads down in the background
        }
    }
}

fn build(capacity: usize) -> Arc<rayon::ThreadPool> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(capacity)
        .thread_name(move |i| format!("budget-rayon-{capacity}-{i}"))
        .start_handler(|_| {
            ON_POOL.with(|c| c.set(true));
            // This thread only ever runs work of the region that leased its pool,
            // within that region's width: regions it opens take no token for it.
            budget_core::integration::RegionThread::mark_for_life();
        })
        .build()
        .unwrap_or_else(|error| {
            panic!(
                "budget: could not start a rayon pool of {capacity} threads ({error}); the \
                 process may be at its thread limit (ulimit -u) — lower BUDGET_NUM_THREADS"
            )
        });
    let counters = &cache().counters;
    counters.built.fetch_add(1, Ordering::Relaxed);
    counters.threads.fetch_add(capacity, Ordering::Relaxed);
    Arc::new(pool)
}

/// Counts of budget's rayon pools, from [`stats`].
///
/// # Examples
///
/// ```
/// let stats = budget_rayon::stats();
/// assert!(stats.pools_built <= stats.leases.max(stats.pools_built));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RayonStats {
    /// Pools built since start (each once, then reused).
    pub pools_built: usize,
    /// Threads in pools that are alive now (leased or idle).
    pub threads: usize,
    /// Regions that leased a pool (top-level `install` calls).
    pub leases: usize,
}

/// A snapshot of budget's rayon pools.
///
/// # Examples
///
/// ```
/// use budget_rayon::RayonExt;
///
/// budget_core::scope(|s| s.install(|| ()));
/// let built = budget_rayon::stats().pools_built;
/// budget_core::scope(|s| s.install(|| ()));
/// assert_eq!(budget_rayon::stats().pools_built, built); // reused, not rebuilt
/// ```
pub fn stats() -> RayonStats {
    let counters = &cache().counters;
    RayonStats {
        pools_built: counters.built.load(Ordering::Relaxed),
        threads: counters.threads.load(Ordering::Relaxed),
        leases: counters.leases.load(Ordering::Relaxed),
    }
}

//! Leased rayon pools: built once per capacity, handed to one region at a time,
//! and returned to the cache when the region ends.
//!
//! The bound on OS threads: a pool of capacity `c` has `c` threads, and a pool is
//! only built when every pool of that capacity is leased. So the threads started
//! are at most `total` for each leasing rayon region running at the same time
//! (top-level regions, and nested ones that hold a token beyond their own thread;
//! the others run in place). At most
//! [`IDLE_POOLS_PER_CAPACITY`] idle pools of each capacity are kept; more are shut
//! down when returned.
//!
//! After `fork()` the child has none of the parent's pool threads: a pool from the
//! parent would take jobs that no thread ever runs. The cache therefore belongs to
//! one *fork generation* (budget-core's `integration::PerFork`); in a child the parent's cache,
//! its idle pools and any pool still leased from it are leaked, never joined or
//! shut down (their locks may have been held by threads that are gone), and the
//! child builds fresh pools.

use std::cell::OnceCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use budget_core::integration::PerFork;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// How many idle pools of one capacity the cache keeps for reuse.
pub const IDLE_POOLS_PER_CAPACITY: usize = 2;

thread_local! {
    /// On the threads of budget's rayon pools: their pool's [`Pool::region`].
    static ON_POOL: OnceCell<Arc<AtomicUsize>> = const { OnceCell::new() };
}

/// `None` off budget's pools; on a worker of one of them, the region that leases
/// its pool now ([`region_id`]; 0 between leases).
pub(crate) fn pool_region() -> Option<usize> {
    // Acquire pairs with the Release store in `LentPool::lease_to`: the store comes
    // before the region's work is handed to the pool, and rayon's queues order that
    // hand-off, so a worker running the region's work sees its id either way.
    ON_POOL.with(|region| region.get().map(|r| r.load(Ordering::Acquire)))
}

/// A region's identity, as a pool's slot holds it (0 is no region):
/// budget-core's opaque `RegionId`, never reused.
pub(crate) fn region_id(scope: &budget_core::Scope<'_>) -> usize {
    budget_core::integration::ScopeHooks::id(scope).get().get()
}

/// A cached pool: rayon's pool, and which region leases it now.
pub(crate) struct Pool {
    threads: rayon::ThreadPool,
    /// The [`region_id`] of the region that leases the pool, 0 while idle. Lets a
    /// region's own handle, used inside its `install`, run in place (install.rs).
    region: Arc<AtomicUsize>,
}

/// Counts for tests and reports: see [`stats`](crate::stats).
#[derive(Debug, Default)]
struct Counters {
    built: AtomicUsize,
    threads: AtomicUsize,
    leases: AtomicUsize,
}

/// The pools of one process: a forked child starts a cache of its own.
struct Cache {
    /// Idle pools, indexed by capacity.
    idle: Mutex<Vec<Vec<Arc<Pool>>>>,
    counters: Counters,
}

impl Cache {
    /// The idle pools, locked (std's lock: see the `gate` module on fork). Nothing
    /// under the lock panics, so a poisoned lock still guards a consistent list.
    fn idle(&self) -> MutexGuard<'_, Vec<Vec<Arc<Pool>>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// False in a forked child for the parent's cache: its threads are gone.
    fn is_current(&self) -> bool {
        CACHE.holds(self)
    }
}

/// The cache of this process. Caches are leaked: a `&'static Cache` stays valid
/// after a fork replaced it, so a lease taken before the fork can still see that
/// its pool is stale.
static CACHE: PerFork<Cache> = PerFork::new();

fn cache() -> &'static Cache {
    CACHE.get(|| Cache {
        idle: Mutex::new(Vec::new()),
        counters: Counters::default(),
    })
}

/// A pool lent to one region (no token lease: the region holds the tokens); goes back
/// to the cache on drop.
pub(crate) struct LentPool {
    pool: Option<Arc<Pool>>,
    capacity: usize,
    /// Built for this lease: no earlier lease left work on it.
    fresh: bool,
    /// The cache it came from (a stale one after a fork).
    cache: &'static Cache,
}

impl LentPool {
    /// Leases an idle pool of `capacity` threads, building one if none is idle.
    pub(crate) fn take(capacity: usize) -> LentPool {
        let cache = cache();
        cache.counters.leases.fetch_add(1, Ordering::Relaxed);
        let reused = cache.idle().get_mut(capacity).and_then(|list| list.pop());
        let fresh = reused.is_none();
        let pool = reused.unwrap_or_else(|| build(cache, capacity));
        LentPool {
            pool: Some(pool),
            capacity,
            fresh,
            cache,
        }
    }

    /// Leases a newly built pool of `capacity` threads (for a region that found
    /// the cached one busy: see [`retire`](LentPool::retire)).
    pub(crate) fn build(capacity: usize) -> LentPool {
        let cache = cache();
        LentPool {
            pool: Some(build(cache, capacity)),
            capacity,
            fresh: true,
            cache,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether the pool was built for this lease (no earlier lease's work on it).
    pub(crate) fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Shuts the pool down instead of returning it to the cache: for a pool still
    /// busy with work an earlier lease left running (`rayon::spawn`). Its threads
    /// finish that work, then exit.
    pub(crate) fn retire(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.region.store(0, Ordering::Release);
            self.cache
                .counters
                .threads
                .fetch_sub(self.capacity, Ordering::Relaxed);
            if self.cache.is_current() {
                drop(pool);
            } else {
                std::mem::forget(pool); // see `Drop`
            }
        }
    }

    pub(crate) fn pool(&self) -> &rayon::ThreadPool {
        &self
            .pool
            .as_ref()
            .expect("a lease holds its pool until drop")
            .threads
    }

    /// Records the region that runs on the pool (see [`pool_region`]).
    pub(crate) fn lease_to(&self, region: usize) {
        if let Some(pool) = &self.pool {
            pool.region.store(region, Ordering::Release);
        }
    }
}

impl Drop for LentPool {
    fn drop(&mut self) {
        let Some(pool) = self.pool.take() else { return };
        pool.region.store(0, Ordering::Release);
        let cache = self.cache;
        if !cache.is_current() {
            // Leased before a fork, returned in the child: its threads are gone.
            // Dropping it would wake them through locks a gone thread may hold.
            std::mem::forget(pool);
            return;
        }
        let mut idle = cache.idle();
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

fn build(cache: &Cache, capacity: usize) -> Arc<Pool> {
    let region = Arc::new(AtomicUsize::new(0));
    let mark = region.clone();
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(bytes) = budget_core::integration::worker_stack_size() {
        builder = builder.stack_size(bytes);
    }
    let threads = builder
        .num_threads(capacity)
        .thread_name(move |i| {
            budget_core::integration::worker_thread_name(i)
                .unwrap_or_else(|| format!("budget-rayon-{capacity}-{i}"))
        })
        .start_handler(move |_| {
            ON_POOL.with(|c| {
                c.get_or_init(|| mark.clone());
            });
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
    let counters = &cache.counters;
    counters.built.fetch_add(1, Ordering::Relaxed);
    counters.threads.fetch_add(capacity, Ordering::Relaxed);
    Arc::new(Pool { threads, region })
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
    /// Pools built since start (each once, then reused). A forked child counts
    /// from 0: it builds pools of its own.
    pub pools_built: usize,
    /// Threads in pools that are alive now (leased or idle).
    pub threads: usize,
    /// Regions that leased a pool (top-level `install` calls, and nested ones
    /// that found free tokens).
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

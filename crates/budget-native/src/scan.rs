//! The process's native libraries, rescanned only when the loader's list changed.
//!
//! [`entries`] reads the loader's `(adds, subs)` generation (one `dl_iterate_phdr`
//! step) and returns the cached entries when it is unchanged, so a call with nothing
//! loaded costs a loader lock round-trip, a read lock and a reference count. A library
//! loaded later changes the generation, and the next call rescans: entries already
//! known are kept (their handles, and the process-wide state keyed by them), new ones
//! are resolved.

#[cfg(unix)]
use std::cell::RefCell;
#[cfg(unix)]
use std::sync::RwLockWriteGuard;
use std::sync::{Arc, PoisonError, RwLock};

use crate::control::{family_of, Entry};
use crate::dl;

struct Snapshot {
    generation: (u64, u64),
    entries: Arc<[Arc<Entry>]>,
}

static CACHE: RwLock<Option<Snapshot>> = RwLock::new(None);

/// Every OpenMP/BLAS library loaded now, in load order.
pub(crate) fn entries() -> Arc<[Arc<Entry>]> {
    // The generation is read before the list: an object loaded in between makes the
    // cached generation stale, so the next call rescans (never a missed library).
    // Every walk of the loader's list happens with `CACHE` held (read or write): the
    // `fork` prepare handler takes it for writing, so no fork happens while one of
    // our walks holds the loader's lock, which a child would never see released.
    {
        let cache = CACHE.read().unwrap_or_else(PoisonError::into_inner);
        let generation = dl::generation();
        if let Some(s) = cache.as_ref() {
            if s.generation == generation {
                return Arc::clone(&s.entries);
            }
        }
    }
    let mut cache = CACHE.write().unwrap_or_else(PoisonError::into_inner);
    let generation = dl::generation();
    if let Some(s) = cache.as_ref() {
        if s.generation == generation {
            return Arc::clone(&s.entries);
        }
    }
    let old: Vec<Arc<Entry>> = cache
        .as_ref()
        .map(|s| s.entries.to_vec())
        .unwrap_or_default();
    let entries: Arc<[Arc<Entry>]> = dl::loaded_objects()
        .into_iter()
        .filter_map(|path| {
            let family = family_of(&path)?;
            if let Some(known) = old.iter().find(|e| e.path == path) {
                return Some(Arc::clone(known));
            }
            Some(Arc::new(Entry::resolve(path, family)))
        })
        .collect();
    *cache = Some(Snapshot {
        generation,
        entries: Arc::clone(&entries),
    });
    entries
}

#[cfg(unix)]
thread_local! {
    /// The cache's lock, held across a `fork` by the forking thread.
    static HELD_FOR_FORK: RefCell<Option<RwLockWriteGuard<'static, Option<Snapshot>>>> =
        const { RefCell::new(None) };
}

#[cfg(unix)]
/// Takes the cache's lock for a `fork` (the `fork` module's prepare handler); released
/// by [`unlock_after_fork`] in both processes. A std lock: its whole state is in the
/// lock, so releasing the guard in the child leaves it usable there.
pub(crate) fn lock_for_fork() {
    let guard = CACHE.write().unwrap_or_else(PoisonError::into_inner);
    HELD_FOR_FORK.with(|h| *h.borrow_mut() = Some(guard));
}

#[cfg(unix)]
/// Releases the lock [`lock_for_fork`] took.
pub(crate) fn unlock_after_fork() {
    drop(HELD_FOR_FORK.with(|h| h.borrow_mut().take()));
}

//! Loom models of the token protocol (`README.md` beside this file) and of the
//! park/wake protocol of [`Event`].
//!
//! Run with `RUSTFLAGS="--cfg budget_loom"` (see `scripts/test.sh`). Every model
//! checks its invariant at the end of each interleaving loom explores; a lost
//! wake-up shows up as a loom deadlock. All models but the three-thread
//! acquire/release one (preemption bound 4) explore every interleaving; the whole
//! suite takes a few seconds in release mode.
//!
//! **A loom limitation and how the models handle it.** Loom treats `SeqCst` loads
//! and stores as `AcqRel`, except that a `SeqCst` load never returns a `SeqCst` store
//! older than another `SeqCst` store to the same atomic. The value an atomic is
//! created with is recorded as a plain `Release` store, so a `SeqCst` load may still
//! return it after a newer `SeqCst` store: a false alarm against the C11 model, where
//! the initial value happens-before that store and so cannot be read past it. Each
//! model therefore rewrites (with `SeqCst`, before any thread starts) the initial
//! value of every atomic that a Dekker pair reads: `prime` and `prime_flag` for the
//! models' own atomics, `prime_tokens` and `prime_event` through the public
//! operations. This changes no value and, in C11, no possible outcome. (Without it
//! the hand-off and event models fail on the unchanged protocol.)

use std::sync::Arc;

use loom::model::Builder;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use loom::thread;

use super::{Grower, Tokens, Wanted};
use crate::regions::event::Event;

/// A loom model builder. `None` explores every interleaving; `Some(n)` bounds the
/// preemptions per execution, for the models too large to explore whole.
/// `LOOM_MAX_PREEMPTIONS` in the environment overrides both.
fn builder(preemption_bound: Option<usize>) -> Builder {
    let mut builder = Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = preemption_bound;
    }
    builder
}

/// Rewrites an atomic's value with `SeqCst` (see the module docs).
fn prime(atomic: &AtomicUsize) {
    atomic.store(atomic.load(SeqCst), SeqCst);
}

/// Rewrites `growers_len` with `SeqCst` through `register` / `unregister` of a grower
/// that wants nothing (see the module docs).
fn prime_tokens(tokens: &Tokens) {
    let idle: Arc<dyn Grower> = Arc::new(TestGrower::new(0, 0, 0));
    tokens.register(Arc::clone(&idle));
    tokens.unregister(&idle);
}

/// Rewrites the event's `sleepers` with `SeqCst`: a wait whose condition turns true
/// at the re-check announces itself and leaves again (see the module docs).
fn prime_event(event: &Event) {
    let mut checks = 0;
    event.wait_until(|| {
        checks += 1;
        checks > 1
    });
}

/// Rewrites a flag's value with `SeqCst` (see the module docs).
fn prime_flag(flag: &AtomicBool) {
    flag.store(flag.load(SeqCst), SeqCst);
}

/// A region, reduced to what the hand-off reads and writes.
#[derive(Debug)]
struct TestGrower {
    /// The width the region asked for.
    requested: usize,
    /// Tokens it holds (its own thread's included).
    width: AtomicUsize,
    /// Queued tasks; with none it wants nothing.
    queued: AtomicUsize,
    /// Set after `unregister` returned: no grant may arrive after it.
    gone: AtomicBool,
}

impl TestGrower {
    /// A grower with its atomics primed (see the module docs).
    fn new(requested: usize, width: usize, queued: usize) -> Self {
        let grower = TestGrower {
            requested,
            width: AtomicUsize::new(width),
            queued: AtomicUsize::new(queued),
            gone: AtomicBool::new(false),
        };
        prime(&grower.width);
        prime(&grower.queued);
        prime_flag(&grower.gone);
        grower
    }

    fn width(&self) -> usize {
        self.width.load(SeqCst)
    }
}

impl Grower for TestGrower {
    fn wants(&self) -> usize {
        if self.queued.load(SeqCst) == 0 {
            return 0;
        }
        self.requested.saturating_sub(self.width.load(SeqCst))
    }

    fn grant(&self, n: usize) {
        assert!(!self.gone.load(SeqCst), "a grant arrived after unregister");
        assert!(n >= 1, "an empty grant");
        let width = self.width.fetch_add(n, SeqCst) + n;
        assert!(
            width <= self.requested,
            "granted up to width {width}, more than the {} asked for",
            self.requested
        );
    }
}

// ---------------------------------------------------------------------------------
// 1. Acquire / release: conservation.
// ---------------------------------------------------------------------------------

/// Three threads take what they can of a budget of two and give it back. No
/// `try_acquire` returns more than asked or more than is free; the tokens held at
/// once never exceed the total; at the end every token is free again. Bounded to 4
/// preemptions (bound 5 takes about a minute; unbounded, far longer).
#[test]
fn loom_acquire_release_conserves_tokens() {
    builder(Some(4)).check(|| {
        const TOTAL: usize = 2;
        let tokens = Arc::new(Tokens::new(TOTAL));
        // Tokens held by the threads: raised after a take, lowered before a release,
        // so it never runs ahead of what `free` lost.
        let held = Arc::new(AtomicUsize::new(0));

        let threads: Vec<_> = [2, 1, 1]
            .into_iter()
            .map(|ask| {
                let tokens = Arc::clone(&tokens);
                let held = Arc::clone(&held);
                thread::spawn(move || {
                    let got = tokens.try_acquire(ask);
                    assert!(got <= ask, "asked for {ask}, got {got}");
                    let now = held.fetch_add(got, SeqCst) + got;
                    assert!(now <= TOTAL, "{now} tokens held of {TOTAL}");
                    // Nobody can free a token this thread holds.
                    assert!(tokens.free() + got <= TOTAL, "free counts a held token");
                    held.fetch_sub(got, SeqCst);
                    tokens.release(got);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }

        assert_eq!(held.load(SeqCst), 0);
        assert_eq!(tokens.free(), TOTAL, "a token was lost or made up");
    });
}

/// A thread that already holds a token takes more while another takes and gives
/// back: conservation holds and nothing is taken beyond the total.
#[test]
fn loom_acquire_more_while_holding() {
    builder(None).check(|| {
        const TOTAL: usize = 3;
        let tokens = Arc::new(Tokens::new(TOTAL));

        let other = {
            let tokens = Arc::clone(&tokens);
            thread::spawn(move || {
                let got = tokens.try_acquire(2);
                assert!(got <= 2);
                tokens.release(got);
                got
            })
        };

        let first = tokens.try_acquire(1);
        let more = tokens.try_acquire(3);
        assert!(first <= 1 && more <= 3);
        assert!(tokens.free() + first + more <= TOTAL);
        tokens.release(first + more);

        let got = other.join().unwrap();
        assert!(
            first + more + got >= 1,
            "someone must have found a free token"
        );
        assert_eq!(tokens.free(), TOTAL, "a token was lost or made up");
    });
}

// ---------------------------------------------------------------------------------
// 2. Hand-off to a growing region.
// ---------------------------------------------------------------------------------

/// Budget 2: a region runs at width 1 of the 2 it asked for, with queued work; a
/// second holder has the other token. Returns `(tokens, grower, grower as dyn)`.
fn short_region(queued: usize) -> (Arc<Tokens>, Arc<TestGrower>, Arc<dyn Grower>) {
    let tokens = Arc::new(Tokens::new(2));
    prime_tokens(&tokens);
    assert_eq!(tokens.try_acquire(1), 1, "the region's own token");
    assert_eq!(tokens.try_acquire(1), 1, "the other holder's token");
    let grower = Arc::new(TestGrower::new(2, 1, queued));
    let dyn_grower: Arc<dyn Grower> = Arc::clone(&grower) as Arc<dyn Grower>;
    (tokens, grower, dyn_grower)
}

/// The region's exit: unregister, then release exactly its width.
fn exit(tokens: &Tokens, grower: &TestGrower, dyn_grower: &Arc<dyn Grower>) {
    tokens.unregister(dyn_grower);
    grower.gone.store(true, SeqCst);
    tokens.release(grower.width());
    assert_eq!(tokens.free(), tokens.total(), "a token was lost or made up");
}

/// `register` (README step 2) races the other holder's `release` (step 1): the
/// released token must reach the region, never stay in `free`.
#[test]
fn loom_register_races_release() {
    builder(None).check(|| {
        let (tokens, grower, dyn_grower) = short_region(1);

        let releaser = {
            let tokens = Arc::clone(&tokens);
            thread::spawn(move || tokens.release(1))
        };
        tokens.register(Arc::clone(&dyn_grower));
        releaser.join().unwrap();

        assert_eq!(grower.width(), 2, "the released token was not handed on");
        assert_eq!(tokens.free(), 0, "a token stranded in free");
        assert_eq!(tokens.free() + grower.width(), tokens.total());
        exit(&tokens, &grower, &dyn_grower);
    });
}

/// A registered region with nothing queued raises its demand (queues work with a
/// SeqCst write, then `poke`s, README step 3) while the other holder releases.
#[test]
fn loom_poke_races_release() {
    builder(None).check(|| {
        let (tokens, grower, dyn_grower) = short_region(0);
        tokens.register(Arc::clone(&dyn_grower));
        assert_eq!(grower.width(), 1, "no demand yet, no grant");

        let releaser = {
            let tokens = Arc::clone(&tokens);
            thread::spawn(move || tokens.release(1))
        };
        grower.queued.fetch_add(1, SeqCst);
        tokens.poke();
        releaser.join().unwrap();

        assert_eq!(grower.width(), 2, "the released token was not handed on");
        assert_eq!(tokens.free(), 0, "a token stranded in free");
        assert_eq!(tokens.free() + grower.width(), tokens.total());
        exit(&tokens, &grower, &dyn_grower);
    });
}

/// Budget 3, a region at width 1 of 3 with queued work; two holders release their
/// tokens at once, one of them while the region registers. Both tokens reach it.
#[test]
fn loom_two_releases_race_register() {
    builder(None).check(|| {
        let tokens = Arc::new(Tokens::new(3));
        prime_tokens(&tokens);
        assert_eq!(tokens.try_acquire(3), 3);
        let grower = Arc::new(TestGrower::new(3, 1, 1));
        let dyn_grower: Arc<dyn Grower> = Arc::clone(&grower) as Arc<dyn Grower>;

        let releasers: Vec<_> = (0..2)
            .map(|_| {
                let tokens = Arc::clone(&tokens);
                thread::spawn(move || tokens.release(1))
            })
            .collect();
        tokens.register(Arc::clone(&dyn_grower));
        for releaser in releasers {
            releaser.join().unwrap();
        }

        assert_eq!(grower.width(), 3, "a released token was not handed on");
        assert_eq!(tokens.free(), 0, "a token stranded in free");
        exit(&tokens, &grower, &dyn_grower);
    });
}

/// `unregister` races a release that may grant to the region: once `unregister`
/// returned no grant arrives (`TestGrower::grant` asserts it), and the region's
/// final width plus `free` is the total.
#[test]
fn loom_unregister_races_release() {
    builder(None).check(|| {
        let (tokens, grower, dyn_grower) = short_region(1);
        tokens.register(Arc::clone(&dyn_grower));

        let releaser = {
            let tokens = Arc::clone(&tokens);
            thread::spawn(move || tokens.release(1))
        };
        tokens.unregister(&dyn_grower);
        grower.gone.store(true, SeqCst);
        let width = grower.width();
        releaser.join().unwrap();

        assert_eq!(grower.width(), width, "the width changed after unregister");
        assert_eq!(
            tokens.free() + width,
            tokens.total(),
            "a token was lost or made up"
        );
        tokens.release(width);
        assert_eq!(tokens.free(), tokens.total());
    });
}

/// A lease's demand (`Lease::want`: the real [`Wanted`] grower) registers while the
/// other holder releases: the token reaches the lease, never stays in `free`.
#[test]
fn loom_lease_want_races_release() {
    builder(None).check(|| {
        let tokens = Arc::new(Tokens::new(2));
        prime_tokens(&tokens);
        assert_eq!(tokens.try_acquire(2), 2, "another holder has both tokens");
        let wanted = Arc::new(Wanted::new(1));
        let dyn_wanted: Arc<dyn Grower> = Arc::clone(&wanted) as Arc<dyn Grower>;

        let releaser = {
            let tokens = Arc::clone(&tokens);
            thread::spawn(move || tokens.release(1))
        };
        tokens.register(Arc::clone(&dyn_wanted));
        releaser.join().unwrap();

        assert_eq!(wanted.granted(), 1, "the released token was not handed on");
        assert_eq!(wanted.wants(), 0);
        assert_eq!(tokens.free(), 0, "a token stranded in free");
        // The lease's drop: unregister, close, release what it was granted.
        tokens.unregister(&dyn_wanted);
        wanted.close();
        tokens.release(wanted.take_granted());
        tokens.release(1);
        assert_eq!(tokens.free(), tokens.total(), "a token was lost or made up");
    });
}

/// `Lease::stop_wanting` races a release: whatever was granted before the
/// unregister is folded into the lease, nothing after, and conservation holds.
#[test]
fn loom_lease_stop_wanting_races_release() {
    builder(None).check(|| {
        let tokens = Arc::new(Tokens::new(2));
        prime_tokens(&tokens);
        assert_eq!(tokens.try_acquire(2), 2);
        let wanted = Arc::new(Wanted::new(1));
        let dyn_wanted: Arc<dyn Grower> = Arc::clone(&wanted) as Arc<dyn Grower>;
        tokens.register(Arc::clone(&dyn_wanted));

        let releaser = {
            let tokens = Arc::clone(&tokens);
            thread::spawn(move || tokens.release(1))
        };
        tokens.unregister(&dyn_wanted);
        wanted.close();
        let kept = wanted.take_granted();
        releaser.join().unwrap();

        assert_eq!(wanted.granted(), 0, "a grant arrived after unregister");
        assert_eq!(
            tokens.free() + kept + 1,
            tokens.total(),
            "a token was lost or made up"
        );
        tokens.release(kept + 1);
        assert_eq!(tokens.free(), tokens.total());
    });
}

// ---------------------------------------------------------------------------------
// 3. Park / wake: no lost wake-up (loom reports one as a deadlock).
// ---------------------------------------------------------------------------------

/// One waiter, one notifier.
#[test]
fn loom_event_wakes_one_waiter() {
    builder(None).check(|| {
        let event = Arc::new(Event::new());
        prime_event(&event);
        let flag = Arc::new(AtomicBool::new(false));
        prime_flag(&flag);

        let notifier = {
            let event = Arc::clone(&event);
            let flag = Arc::clone(&flag);
            thread::spawn(move || {
                flag.store(true, SeqCst);
                event.notify();
            })
        };
        event.wait_until(|| flag.load(SeqCst));
        assert!(flag.load(SeqCst));
        notifier.join().unwrap();
    });
}

/// Two waiters, one notifier: both wake.
#[test]
fn loom_event_wakes_two_waiters() {
    builder(None).check(|| {
        let event = Arc::new(Event::new());
        prime_event(&event);
        let flag = Arc::new(AtomicBool::new(false));
        prime_flag(&flag);

        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let event = Arc::clone(&event);
                let flag = Arc::clone(&flag);
                thread::spawn(move || {
                    event.wait_until(|| flag.load(SeqCst));
                    assert!(flag.load(SeqCst));
                })
            })
            .collect();
        flag.store(true, SeqCst);
        event.notify();
        for waiter in waiters {
            waiter.join().unwrap();
        }
    });
}

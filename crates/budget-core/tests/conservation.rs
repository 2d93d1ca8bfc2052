//! The conservation invariant, checked from outside after every step of random
//! programs: `budget_core::stats().in_use` equals the tokens the open regions hold by the
//! model (`width - 1`, plus 1 for a region opened outside every region that found a
//! free token), and never exceeds `total`. A region opened outside every region when
//! no token was free runs unpaid (overcommit) and may be handed its own token later
//! (the first token it is granted pays for its thread, without widening it): the
//! model counts such a region as holding 0 or 1 for its thread, so `in_use` must lie
//! between the sum with 0 and the sum with 1 for each of them (equal to the sum
//! when there are none, the usual case).
//!
//! A program is a tree of operations run by a recursive interpreter: regions
//! (`scope_with` of a random request, nested in the current one), spawned tasks that
//! open a nested region of their own, joins, `for_each`, std threads that enter
//! regions, and panics injected inside regions, tasks, joins and threads (each caught
//! where it was injected and checked to carry its own payload).
//!
//! Exactness: a check is exact (`==`) only where no other thread can move tokens: the
//! thread's own regions have no spawned task still running, and every thread that
//! holds an open region outside this thread's chain is blocked (a parent waiting in
//! `join` for the std thread that runs this interpreter). Elsewhere (inside tasks and
//! joins, or while tasks run) the check is a lower bound: widths only grow while a
//! region is open, so `in_use`, read after the widths, is at least their sum.
//! Runs with a budget of 8 tokens so that nesting has room on a 2-core machine.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, MutexGuard, Once};

use budget_core::Scope;
use proptest::prelude::*;
use proptest::test_runner::Config;

const TOTAL: usize = 8;

/// Builds the budget once; the tests of this binary run one at a time.
fn setup() -> MutexGuard<'static, ()> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // Injected panics carry an `Injected` payload: keep them off stderr.
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<Injected>().is_none() {
                default(info);
            }
        }));
    });
    budget_testkit::budget::exclusive_budget(TOTAL)
}

/// The payload of an injected panic: a unique id.
#[derive(Debug, PartialEq, Eq)]
struct Injected(u64);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Clone, Copy, Debug)]
enum Site {
    /// In the region's own closure, with earlier tasks possibly still running.
    Body,
    /// In a spawned task, inside a nested region on the task's thread.
    Task,
    /// In `join`'s first closure.
    JoinLeft,
    /// In `join`'s second closure, inside a nested region.
    JoinRight,
    /// In one `for_each` element.
    ForEach,
    /// In a std thread started inside the region, inside a region of its own;
    /// resumed by the region's closure after joining it.
    Thread,
}

#[derive(Clone, Debug)]
enum Op {
    /// `scope_with(max)` on this thread, running `body` inside.
    Region { max: usize, body: Vec<Op> },
    /// Inside a region: spawn a task that opens `scope_with(max)` and runs `body`.
    /// Outside a region: as `Region`.
    Spawn { max: usize, body: Vec<Op> },
    /// Inside a region: `join(left, right)`. Outside: `left`, then `right`.
    Join { left: Vec<Op>, right: Vec<Op> },
    /// Inside a region: `for_each(0..n)`. Outside: nothing.
    ForEach { n: usize },
    /// `catch_unwind` of a region `scope_with(max)` that runs `body[..at]`, then
    /// panics at `site`, then (if still running) `body[at..]`.
    Panic {
        max: usize,
        body: Vec<Op>,
        at: usize,
        site: Site,
    },
    /// A std thread, outside every region, running `body`; joined at once.
    Thread { body: Vec<Op> },
}

/// What the interpreter knows about its thread.
#[derive(Clone, Copy, Debug)]
struct Ctx {
    /// Tokens held by regions of other threads that stay open while this runs:
    /// exact when `exact` (up to `base_unpaid`), a lower bound otherwise.
    base: usize,
    /// Overcommitted regions among those: each may hold one more token.
    base_unpaid: usize,
    /// No thread outside this thread's chain can move tokens meanwhile.
    exact: bool,
    /// The thread is inside a region before any frame of this chain (a worker, a
    /// join's second closure): its regions take no token for the thread.
    in_region: bool,
}

/// An open region on this thread.
struct Frame<'a> {
    width: &'a (dyn Fn() -> usize + Sync),
    /// The token for the region's own thread: 1 or 0 (0 also when unknown, in an
    /// inexact context, which keeps the lower bound valid).
    own: usize,
    /// Opened outside every region with no token free: it may have been handed
    /// its own token since (0 or 1 more than `own` says).
    unpaid: bool,
    /// Tasks spawned into this region that have not finished yet (their nested
    /// region included).
    outstanding: Arc<AtomicUsize>,
    parent: Option<&'a Frame<'a>>,
}

#[derive(Clone, Copy)]
struct Env<'f, 'p> {
    ctx: Ctx,
    frames: Option<&'f Frame<'f>>,
    /// The innermost region, to spawn into.
    cur: Option<(&'f Scope<'p>, &'f Arc<AtomicUsize>)>,
}

impl Env<'_, '_> {
    fn chain(&self) -> impl Iterator<Item = &Frame<'_>> {
        std::iter::successors(self.frames, |f| f.parent)
    }

    fn in_region(&self) -> bool {
        self.ctx.in_region || self.frames.is_some()
    }

    /// Whether a check here is exact. Read before the widths and `in_use`: nothing
    /// but this thread can make it false again.
    fn quiet(&self) -> bool {
        self.ctx.exact
            && self
                .chain()
                .all(|f| f.outstanding.load(Ordering::SeqCst) == 0)
    }

    /// Tokens the open regions hold at least.
    fn held(&self) -> usize {
        self.ctx.base + self.chain().map(|f| (f.width)() - 1 + f.own).sum::<usize>()
    }

    /// Overcommitted open regions: each may hold one token more than `held` counts.
    fn unpaid(&self) -> usize {
        self.ctx.base_unpaid + self.chain().filter(|f| f.unpaid).count()
    }

    fn check(&self, at: &str) {
        let exact = self.quiet();
        let (held, unpaid) = (self.held(), self.unpaid());
        let stats = budget_core::stats();
        assert!(stats.in_use <= stats.total, "{at}: {stats}");
        if exact && unpaid == 0 {
            assert_eq!(
                stats.in_use, held,
                "{at}: in_use differs from the tokens the open regions hold ({stats})"
            );
        } else if exact {
            assert!(
                (held..=held + unpaid).contains(&stats.in_use),
                "{at}: in_use {} outside {held}..={} (with {unpaid} unpaid regions)",
                stats.in_use,
                held + unpaid
            );
        } else {
            assert!(
                stats.in_use >= held,
                "{at}: in_use {} below the {held} tokens the open regions hold at least",
                stats.in_use
            );
        }
    }
}

/// Decrements a region's outstanding count when a task ends, on unwind too.
struct Done(Arc<AtomicUsize>);
impl Drop for Done {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn run<'p>(ops: &'p [Op], env: Env<'_, 'p>) {
    for op in ops {
        step(op, env);
        env.check("after an operation");
    }
}

fn step<'p>(op: &'p Op, env: Env<'_, 'p>) {
    match (op, env.cur) {
        (Op::Region { max, body }, _) | (Op::Spawn { max, body }, None) => {
            region(*max, body, env, None);
        }
        (Op::Spawn { max, body }, Some((s, outstanding))) => {
            let max = *max;
            let ctx = Ctx {
                base: env.held(),
                base_unpaid: 0,
                exact: false,
                in_region: true,
            };
            outstanding.fetch_add(1, Ordering::SeqCst);
            let done = Done(outstanding.clone());
            s.spawn(move |_| {
                let _done = done;
                let env = Env {
                    ctx,
                    frames: None,
                    cur: None,
                };
                region(max, body, env, None);
                env.check("at the end of a task");
            });
        }
        (Op::Join { left, right }, Some((s, _))) => {
            let left_env = Env {
                ctx: Ctx {
                    exact: false,
                    ..env.ctx
                },
                ..env
            };
            let right_env = Env {
                ctx: Ctx {
                    base: env.held(),
                    base_unpaid: 0,
                    exact: false,
                    in_region: true,
                },
                frames: None,
                cur: None,
            };
            s.join(|| run(left, left_env), || run(right, right_env));
        }
        (Op::Join { left, right }, None) => {
            run(left, env);
            run(right, env);
        }
        (Op::ForEach { n }, Some((s, _))) => {
            let hits = AtomicUsize::new(0);
            let inner = Env {
                ctx: Ctx {
                    exact: false,
                    ..env.ctx
                },
                frames: env.frames,
                cur: None,
            };
            s.for_each(0..*n, |_| {
                if hits.fetch_add(1, Ordering::Relaxed) % 64 == 0 {
                    // On whichever thread runs the element; the chain stays open.
                    inner.check("inside for_each (lower bound)");
                }
            });
            assert_eq!(hits.into_inner(), *n, "for_each skipped elements");
            inner.check("after for_each (lower bound)");
        }
        (Op::ForEach { .. }, None) => {}
        (
            Op::Panic {
                max,
                body,
                at,
                site,
            },
            _,
        ) => {
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                region(*max, body, env, Some((*at, *site, id)));
            }));
            let payload = match outcome {
                Ok(()) => panic!("the panic injected at {site:?} did not surface"),
                Err(payload) => payload,
            };
            match payload.downcast_ref::<Injected>() {
                Some(got) => assert_eq!(*got, Injected(id), "wrong payload from {site:?}"),
                None => panic::resume_unwind(payload), // a failed assertion: report it
            }
        }
        (Op::Thread { body }, _) => {
            let ctx = Ctx {
                base: env.held(),
                base_unpaid: env.unpaid(),
                exact: env.quiet(),
                in_region: false,
            };
            let joined = std::thread::scope(|t| {
                t.spawn(|| {
                    let env = Env {
                        ctx,
                        frames: None,
                        cur: None,
                    };
                    env.check("at the start of a thread");
                    run(body, env);
                    env.check("at the end of a thread");
                })
                .join()
            });
            if let Err(payload) = joined {
                panic::resume_unwind(payload);
            }
        }
    }
}

/// Opens `scope_with(max)` here and runs `body` in it, checking the grant on entry
/// (exactly, where nothing else runs) and conservation on entry, inside and after.
fn region<'p>(max: usize, body: &'p [Op], env: Env<'_, 'p>, inject: Option<(usize, Site, u64)>) {
    let in_region = env.in_region();
    let exact = env.quiet();
    let before = budget_core::stats();
    let requested = max.clamp(1, TOTAL);
    budget_core::scope_with(max, |s: &Scope<'p>| {
        let width = s.width();
        assert_eq!(s.requested(), requested);
        assert!(
            width >= 1 && width <= requested,
            "width {width} of {requested}"
        );
        let own = usize::from(!in_region && exact && before.in_use < TOTAL);
        let unpaid = !in_region && exact && before.in_use == TOTAL;
        if exact {
            // Nothing else runs: the grant is exactly what the rule says.
            let free = TOTAL - before.in_use - own;
            assert_eq!(
                width,
                1 + (requested - 1).min(free),
                "grant of a region asking {requested} with {free} free ({before})"
            );
        }
        let outstanding = Arc::new(AtomicUsize::new(0));
        let width_now = || s.width();
        let frame = Frame {
            width: &width_now,
            own,
            unpaid,
            outstanding: outstanding.clone(),
            parent: env.frames,
        };
        let inner = Env {
            ctx: env.ctx,
            frames: Some(&frame),
            cur: Some((s, &outstanding)),
        };
        inner.check("on entering a region");
        match inject {
            None => run(body, inner),
            Some((at, site, id)) => {
                run(&body[..at], inner);
                inject_panic(site, id, inner);
                run(&body[at..], inner);
            }
        }
        inner.check("at the end of a region's closure");
    });
}

/// Panics with the injected payload `id`; returns `()` for the type checker.
fn boom(id: u64) {
    panic::panic_any(Injected(id))
}

fn inject_panic(site: Site, id: u64, env: Env<'_, '_>) {
    let (s, outstanding) = env.cur.expect("panics are injected inside a region");
    match site {
        Site::Body => panic::panic_any(Injected(id)),
        Site::Task => {
            outstanding.fetch_add(1, Ordering::SeqCst);
            let done = Done(outstanding.clone());
            s.spawn(move |_| {
                let _done = done;
                budget_core::scope_with(2, |_| panic::panic_any(Injected(id)));
            });
        }
        Site::JoinLeft => {
            s.join(|| boom(id), || ());
        }
        Site::JoinRight => {
            s.join(|| (), || budget_core::scope_with(3, |_| boom(id)));
        }
        Site::ForEach => s.for_each(0..64, |i| {
            if i == 37 {
                panic::panic_any(Injected(id));
            }
        }),
        Site::Thread => {
            let joined =
                std::thread::scope(|t| t.spawn(|| budget_core::scope_with(2, |_| boom(id))).join());
            if let Err(payload) = joined {
                panic::resume_unwind(payload);
            }
        }
    }
}

fn site() -> impl Strategy<Value = Site> {
    prop_oneof![
        Just(Site::Body),
        Just(Site::Task),
        Just(Site::JoinLeft),
        Just(Site::JoinRight),
        Just(Site::ForEach),
        Just(Site::Thread),
    ]
}

fn program() -> impl Strategy<Value = Vec<Op>> {
    let max = 0..=10usize; // 0 is taken as 1, above 8 as 8
    let leaf = prop_oneof![
        max.clone().prop_map(|max| Op::Region { max, body: vec![] }),
        max.clone().prop_map(|max| Op::Spawn { max, body: vec![] }),
        (0..200usize).prop_map(|n| Op::ForEach { n }),
        (max.clone(), site()).prop_map(|(max, site)| Op::Panic {
            max,
            body: vec![],
            at: 0,
            site
        }),
    ];
    let op = leaf.prop_recursive(5, 64, 4, move |inner| {
        let body = prop::collection::vec(inner, 0..4);
        prop_oneof![
            3 => (max.clone(), body.clone()).prop_map(|(max, body)| Op::Region { max, body }),
            3 => (max.clone(), body.clone()).prop_map(|(max, body)| Op::Spawn { max, body }),
            2 => (body.clone(), body.clone()).prop_map(|(left, right)| Op::Join { left, right }),
            2 => (max.clone(), body.clone(), any::<prop::sample::Index>(), site()).prop_map(
                |(max, body, at, site)| {
                    let at = at.index(body.len() + 1);
                    Op::Panic { max, body, at, site }
                }
            ),
            1 => body.prop_map(|body| Op::Thread { body }),
        ]
    });
    prop::collection::vec(op, 1..6)
}

proptest! {
    #![proptest_config(Config {
        cases: 128,
        // A failure prints its shrunk program; no regression file in the tree.
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn tokens_are_conserved_after_every_step(ops in program()) {
        let _serial = setup();
        let top = Env {
            ctx: Ctx { base: 0, base_unpaid: 0, exact: true, in_region: false },
            frames: None,
            cur: None,
        };
        top.check("before the program");
        run(&ops, top);
        let stats = budget_core::stats();
        prop_assert_eq!(stats.in_use, 0, "tokens leaked: {}", stats);
    }
}

/// Regression (found by this file, fixed in `Shared::close`): a nested region
/// narrowed below its request registers to grow back once it queues a task; at its
/// end it must return exactly its `width - 1` tokens. It returned one more, as if it
/// had paid for its own thread, so `in_use` dropped below what the outer region holds.
#[test]
fn narrowed_region_with_a_task_returns_exactly_its_tokens() {
    let _serial = setup();
    assert_eq!(budget_core::stats().in_use, 0);
    budget_core::scope(|outer| {
        assert_eq!(outer.width(), TOTAL);
        budget_core::scope(|inner| {
            assert_eq!(inner.width(), 1);
            inner.spawn(|_| {});
        });
        assert_eq!(
            budget_core::stats().in_use,
            TOTAL,
            "the outer region holds every token"
        );
    });
    assert_eq!(budget_core::stats().in_use, 0);
}

/// An overcommitted region (opened outside every region with no token free) that
/// registered to grow is paid for by the first token freed: that token counts for
/// its own thread without widening it, and the region returns it at its end.
#[test]
fn overcommitted_region_is_paid_for_by_the_first_token_freed() {
    let _serial = setup();
    assert_eq!(budget_core::stats().in_use, 0);
    let (held, release, released) = (
        std::sync::Barrier::new(2),
        std::sync::atomic::AtomicBool::new(false),
        std::sync::atomic::AtomicBool::new(false),
    );
    std::thread::scope(|t| {
        t.spawn(|| {
            budget_core::scope(|s| {
                assert_eq!(s.width(), TOTAL);
                held.wait();
                wait_until(&release);
            });
            released.store(true, Ordering::SeqCst);
        });
        held.wait();
        let overcommit = budget_core::stats().overcommit;
        budget_core::scope(|s| {
            assert_eq!(s.width(), 1, "every token is held by the other thread");
            assert_eq!(budget_core::stats().overcommit, overcommit + 1);
            assert_eq!(budget_core::stats().in_use, TOTAL);
            // Registers the region (it has a task queue now); the task is claimed
            // back at once, so it has no queued work: it wants only its own token.
            assert_eq!(s.join(|| 1, || 2), (1, 2));
            release.store(true, Ordering::SeqCst);
            wait_until(&released);
            assert_eq!(s.width(), 1, "the first token pays; it does not widen");
            assert_eq!(
                budget_core::stats().in_use,
                1,
                "this thread is paid for now"
            );
        });
        assert_eq!(budget_core::stats().in_use, 0, "the paid token came back");
    });
}

/// Waits for `flag`, failing (instead of hanging) after 30 s.
fn wait_until(flag: &std::sync::atomic::AtomicBool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !flag.load(Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "a flag was never set");
        std::thread::yield_now();
    }
}

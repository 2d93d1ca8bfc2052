//! Loom models on the real region state (`Region`, `Tree`): its atomics go through the
//! `sync` shim, and under `--cfg budget_loom` the registry records dispatched
//! requests instead of starting threads, so a model runs `serve` itself.
//!
//! Run with `RUSTFLAGS="--cfg budget_loom"` (see `scripts/test.sh`). Each model checks
//! the Dekker pair that keeps a queued task from being stranded: the task ran on the
//! leaving worker, or the pusher found the slot free and sent a worker for it. (Not
//! stranding is about parallelism: the region's own thread runs its unclaimed tasks
//! anyway.) The atomics read in a pair are rewritten with SeqCst before the threads
//! start, for the loom limitation described in `token/loom_tests.rs`.

use crate::pool::registry::Visit;
use std::sync::Arc;

use loom::sync::atomic::{AtomicBool, Ordering::SeqCst};
use loom::thread;

use super::Region;
use crate::pool::registry::Registry;
use crate::tokens::own::OwnToken;

/// A registry of `total` tokens for one model run (leaked: a registry is `'static`).
fn registry(total: usize) -> &'static Registry {
    Box::leak(Box::new(Registry::new(
        total,
        0,
        &crate::pool::process::OURS,
    )))
}

/// A region holding `width` tokens; `tree` is its root's tree (`None`: it is a root,
/// opened outside every region, and takes a token for its own thread; a nested one
/// inherits it). The models use every token, so no grant interferes.
fn region(
    registry: &'static Registry,
    requested: usize,
    width: usize,
    tree: Option<&Arc<Region>>,
) -> Arc<Region> {
    assert_eq!(registry.tokens.try_acquire(width - 1), width - 1);
    let own = OwnToken::take(tree.is_some(), &registry.tokens);
    assert!(
        !own.owes(),
        "the model's budget has room for the root's own thread"
    );
    let region = Region::new(
        registry,
        requested,
        width,
        own,
        tree.map(|root| root.tree.clone()),
        0,
    );
    // SeqCst rewrites of what the Dekker pairs read (see the module docs).
    region.queued.store(region.queued.load(SeqCst), SeqCst);
    region.active.store(region.active.load(SeqCst), SeqCst);
    region.tree.prime();
    region
}

/// A task that records that it ran.
fn task(ran: &Arc<AtomicBool>) -> crate::regions::region::Body {
    let ran = ran.clone();
    Box::new(move |_: &Region| ran.store(true, SeqCst))
}

/// A push races the worker leaving the region's only slot (`Region::serve`).
#[test]
fn loom_push_races_a_worker_leaving_serve() {
    loom::model(|| {
        let registry = registry(2);
        let root = region(registry, 2, 2, None);
        assert!(root.try_reserve(), "the worker's slot");
        let ran = Arc::new(AtomicBool::new(false));
        let worker = {
            let root = root.clone();
            thread::spawn(move || root.serve())
        };
        root.push(task(&ran));
        worker.join().unwrap();
        let sent = registry.take_request();
        assert!(
            ran.load(SeqCst) || sent.is_some(),
            "the task was queued with no thread sent for it"
        );
        if let Some(sent) = sent {
            sent.serve();
            assert!(ran.load(SeqCst));
        }
        assert!(registry.take_request().is_none(), "one worker sent at most");
        assert!(!root.has_queued());
        assert_eq!(root.active.load(SeqCst), 0, "every slot was left");
    });
}

/// A nested region (width 1, no slot) posts a task on its tree while the worker in
/// the root's only slot leaves it (`tree.rs`'s Dekker pair on `posted` / `active`).
#[test]
fn loom_post_races_a_root_worker_leaving_serve() {
    loom::model(|| {
        let registry = registry(2);
        let root = region(registry, 2, 2, None);
        assert_eq!(registry.tokens.free(), 0);
        let nested = region(registry, 2, 1, Some(&root));
        assert!(root.try_reserve(), "the worker's slot");
        let ran = Arc::new(AtomicBool::new(false));
        let worker = {
            let root = root.clone();
            thread::spawn(move || root.serve())
        };
        nested.push(task(&ran));
        worker.join().unwrap();
        let sent = registry.take_request();
        assert!(
            ran.load(SeqCst) || sent.is_some(),
            "the nested task was posted with no root thread sent for it"
        );
        if let Some(sent) = sent {
            sent.serve();
            assert!(
                ran.load(SeqCst),
                "the root's worker helps the nested region"
            );
        }
        assert!(registry.take_request().is_none(), "one worker sent at most");
        assert_eq!(root.active.load(SeqCst), 0, "every slot was left");
    });
}

/// A budget of one token, held by an outside holder, and the own token of a region
/// opened now: owed.
fn owed_start() -> (&'static Registry, OwnToken) {
    let registry = registry(1);
    assert_eq!(
        registry.tokens.try_acquire(1),
        1,
        "an outside holder's token"
    );
    let own = OwnToken::take(false, &registry.tokens);
    assert!(own.owes(), "no token free for the region's own thread");
    (registry, own)
}

/// The region's exit, as `scope_with` does it; then the budget's one token must be
/// free. Returns the final width.
fn exit_and_count(registry: &'static Registry, region: &Region) -> usize {
    let width = region.close();
    registry
        .tokens
        .release(width - 1 + region.own.returned_at_exit());
    width
}

/// A region that found no token for its own thread (`OwnToken` owed, the region
/// registered as a grower, `impl Grower for Region`) exits while another thread
/// gives the only token back: the grant repays the owed token before the region
/// closes (it then returns it at exit), or finds it unregistered and leaves the
/// token free. Either way the budget ends with its one token free: none lost, none
/// counted twice.
#[test]
fn loom_a_grant_races_the_exit_of_an_owed_region() {
    loom::model(|| {
        let (registry, own) = owed_start();
        let region = Region::new(registry, 1, 1, own, None, 0);
        let holder = thread::spawn(move || registry.tokens.release(1));
        let width = exit_and_count(registry, &region);
        holder.join().unwrap();
        assert_eq!(registry.tokens.free(), 1, "the one token is free again");
        assert_eq!(width, 1, "a grant pays the owed token, it does not widen");
    });
}

/// The same race at the other end: the only token comes back while the owed region is
/// being made (between `OwnToken::take` and its registration as a grower), so the
/// release may find no grower yet. The region then finds the token at registration
/// (`register` looks at the free tokens), or not at all; either way the budget ends
/// with its one token free after the region's exit.
#[test]
fn loom_a_release_races_the_registration_of_an_owed_region() {
    loom::model(|| {
        let (registry, own) = owed_start();
        let holder = thread::spawn(move || registry.tokens.release(1));
        let region = Region::new(registry, 1, 1, own, None, 0);
        exit_and_count(registry, &region);
        holder.join().unwrap();
        assert_eq!(registry.tokens.free(), 1, "the one token is free again");
    });
}

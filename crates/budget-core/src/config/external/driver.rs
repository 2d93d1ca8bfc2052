//! The supplier: the thread that takes outside tokens (node budget, jobserver,
//! another copy's budget) while this process's regions want them and gives back those
//! unused; the [`Supplier`] the token budget calls. Argued in `README.md` beside this
//! file.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::sync::plain::{Condvar, Mutex};
use crate::tokens::token::{Grower, Supplier, Tokens};

use super::{note, Backend, TICK};

/// The supplier: a thread of its own that takes outside tokens while regions want
/// them and gives back those unused for a linger of one tick (at once, and also
/// those in use as soon as their region ends, while another process waits).
pub(super) struct Driver {
    backend: Backend,
    total: usize,
    tokens: OnceLock<&'static Tokens>,
    /// Set by `short` (regions wait), cleared by the thread when it looks.
    wanted: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    /// Held by every change of the outside tokens held (the supplier thread's `step`
    /// and a region's [`Supplier::take_now`]), so each reads the count of outside
    /// tokens it changes from a consistent state: a node member's capacity is not
    /// linear in its node tokens (`max(1, ext)`). Held for a few system calls at most.
    taking: Mutex<()>,
    /// Tokens kept from other processes until a deadline ([`Supplier::hold`]): read
    /// at each tick.
    hold: Mutex<Option<(usize, std::time::Instant)>>,
    /// A grower of its own, registered while other processes wait: the existing
    /// hand-off gives it tokens the moment a region releases them, and the driver
    /// gives them back to the node budget.
    reclaim: OnceLock<Arc<Reclaim>>,
}

/// The driver's grower (see `Driver::reclaim`).
struct Reclaim {
    driver: &'static Driver,
    /// Tokens still to take back from the process's regions.
    want: AtomicUsize,
    /// Tokens granted and not yet given back by the driver.
    got: AtomicUsize,
    registered: AtomicBool,
}

impl Grower for Reclaim {
    fn wants(&self) -> usize {
        self.want.load(Ordering::SeqCst)
    }

    fn grant(&self, n: usize) {
        self.want.fetch_sub(n.min(self.wants()), Ordering::SeqCst);
        self.got.fetch_add(n, Ordering::SeqCst);
        self.driver.short();
    }
}

impl Driver {
    pub(super) fn new(backend: Backend, total: usize) -> Self {
        Driver {
            backend,
            total,
            tokens: OnceLock::new(),
            wanted: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            taking: Mutex::new(()),
            hold: Mutex::new(None),
            reclaim: OnceLock::new(),
        }
    }

    fn run(&'static self, tokens: &'static Tokens) {
        let reclaim = self.reclaim.get_or_init(|| {
            Arc::new(Reclaim {
                driver: self,
                want: AtomicUsize::new(0),
                got: AtomicUsize::new(0),
                registered: AtomicBool::new(false),
            })
        });
        // Tokens counted as surplus at the previous tick (the linger).
        let mut lingering = 0;
        loop {
            {
                let guard = self.lock.lock();
                // SeqCst pairs with `short`: its store before its notify under the lock.
                if !self.wanted.load(Ordering::SeqCst) {
                    let busy = self.backend.held() > 0
                        || tokens.free() < tokens.held()
                        || self.pending() > 0;
                    drop(if busy {
                        self.wake.wait_timeout(guard, TICK)
                    } else {
                        self.wake.wait(guard)
                    });
                }
            }
            self.wanted.store(false, Ordering::SeqCst);
            let _taking = self.taking.lock();
            lingering = self.step(tokens, reclaim, lingering);
        }
    }

    /// The tokens [`Supplier::hold`] keeps now (0 once its deadline passed).
    fn held_for_spinners(&self) -> usize {
        let mut hold = self.hold.lock();
        match *hold {
            Some((n, until)) if until > std::time::Instant::now() => n,
            _ => {
                *hold = None;
                0
            }
        }
    }

    fn pending(&self) -> usize {
        match &self.backend {
            Backend::Jobserver(j) => j.pending(),
            Backend::Node(..) | Backend::Copy(_) => 0,
        }
    }

    /// Gives back outside tokens until the process's capacity fell by `drop`
    /// tokens (already taken out of `free`), or while no capacity is lost.
    fn give_back(&self, mut drop: usize, max: usize) -> usize {
        let mut given = 0;
        let mut ext = self.backend.held();
        while given < max && ext > 0 {
            let lost = self.backend.capacity(ext) - self.backend.capacity(ext - 1);
            if lost > drop {
                break;
            }
            drop -= lost;
            // Logged before the token leaves: a logged holding never outlasts the real one.
            note(self.tokens.get().map_or(0, |t| t.held()), ext - 1);
            self.backend.give_back_one();
            ext -= 1;
            given += 1;
        }
        given
    }

    /// One look: take what regions want, give back what stayed unused.
    fn step(&self, tokens: &'static Tokens, reclaim: &Arc<Reclaim>, lingering: usize) -> usize {
        // Tokens the reclaim grower got: out of the process, back to the node.
        let got = reclaim.got.swap(0, Ordering::SeqCst);
        if got > 0 {
            tokens.reclaimed(got);
            self.give_back(got, got);
        }
        let held = tokens.held();
        let in_use = held.saturating_sub(tokens.free());
        let demand = tokens.demand().saturating_sub(reclaim.wants());
        // Library workers spinning after a wide call keep their cores from other
        // processes until they sleep (`integration::hold_for_spinners`).
        let using = (in_use + demand)
            .max(self.held_for_spinners())
            .min(self.total);
        let ext = self.backend.held();
        let wanted = self.backend.target(using);
        // While another process waits, hold at most the token of the own thread.
        let others = match &self.backend {
            Backend::Node(member, _) => member.others_waiting(),
            // The first copy's regions get back what this one lets go after the
            // linger (a few ms); it has no wait byte to read.
            Backend::Jobserver(_) | Backend::Copy(_) => false,
        };
        let target = if others {
            wanted.min(self.backend.target(1))
        } else {
            wanted
        };
        let mut ext_now = ext;
        if target > ext {
            match &self.backend {
                Backend::Node(..) | Backend::Copy(_) => {
                    let got = self.backend.try_take(target - ext, false);
                    let added = self.backend.capacity(ext + got) - self.backend.capacity(ext);
                    if added > 0 {
                        tokens.deposit(added);
                    }
                    ext_now = ext + got;
                    if got > 0 {
                        note(tokens.held(), ext_now);
                    }
                }
                Backend::Jobserver(source) => source.request(target - ext, tokens),
            }
        }
        if let Backend::Node(member, _) = &self.backend {
            member.set_waiting(ext_now < wanted);
        }
        let surplus = ext_now.saturating_sub(target);
        // The token of the own thread lingers even while others wait: between two
        // regions nothing is in use for a moment, and giving it back then would let
        // another process widen while this one's next region runs unpaid.
        let own = usize::from(
            target == 0 && matches!(self.backend, Backend::Node(..) | Backend::Copy(_)),
        );
        let give = if others {
            surplus.saturating_sub(own).max(surplus.min(lingering))
        } else {
            surplus.min(lingering)
        };
        if give > 0 {
            let drop = self.backend.capacity(ext_now) - self.backend.capacity(ext_now - give);
            let taken = tokens.withdraw(drop);
            let given = self.give_back(taken, give);
            ext_now -= given;
        }
        // What is still above the target while others wait is in use: take it back
        // as soon as a region releases it.
        let still = if others {
            self.backend.capacity(ext_now) - self.backend.capacity(ext_now.min(target))
        } else {
            0
        };
        reclaim.want.store(still, Ordering::SeqCst);
        let grower: Arc<dyn Grower> = reclaim.clone();
        if still > 0 && !reclaim.registered.swap(true, Ordering::SeqCst) {
            tokens.register(grower);
        } else if still == 0 && reclaim.registered.swap(false, Ordering::SeqCst) {
            tokens.unregister(&grower);
            // A grant may have landed between the swap and the unregister.
            let late = reclaim.got.swap(0, Ordering::SeqCst);
            if late > 0 {
                tokens.reclaimed(late);
                self.give_back(late, late);
            }
        }
        surplus
    }
}

impl Supplier for Driver {
    fn start(&'static self, tokens: &'static Tokens) {
        let me: &'static Driver = self;
        if self.tokens.set(tokens).is_err() {
            return;
        }
        if let Backend::Jobserver(source) = &self.backend {
            source.start(tokens);
        }
        note(tokens.held(), self.backend.held());
        let spawned = std::thread::Builder::new()
            .name("budget-supplier".into())
            .spawn(move || me.run(tokens));
        if let Err(error) = spawned {
            tracing::warn!("budget: no supplier thread ({error}); regions stay at their tokens");
        }
    }

    fn take_now(&self, n: usize) -> usize {
        let Some(tokens) = self.tokens.get() else {
            return 0; // not started yet
        };
        let (first, added) = {
            let _taking = self.taking.lock();
            if let Backend::Node(member, _) = &self.backend {
                // A waiting process gets the tokens that are freed: a region starting
                // here does not race it for them (one `F_GETLK`).
                if member.others_waiting() {
                    return 0;
                }
            }
            let ext = self.backend.held();
            // Outside tokens for `n` more capacity: a node member with none held yet
            // needs one more, which only pays for the own thread that runs anyway.
            let need = self.backend.target(self.backend.capacity(ext) + n) - ext;
            let got = self.backend.try_take(need, true);
            let added = self.backend.capacity(ext + got) - self.backend.capacity(ext);
            if got > 0 {
                note(tokens.held() + added, ext + got);
            }
            (got > 0 && ext == 0, added)
        };
        if first {
            // The supplier thread looks after them from now on: it gives them back
            // once they are unused for the linger. It ticks while it holds any, so
            // only a first outside token needs to wake it.
            self.short();
        }
        added
    }

    fn hold(&self, n: usize, until: std::time::Instant) {
        if n == 0 {
            return;
        }
        let mut hold = self.hold.lock();
        // The most tokens any unexpired hold asked for, until the latest deadline.
        let now = std::time::Instant::now();
        *hold = Some(match *hold {
            Some((m, t)) if t > now => (m.max(n), t.max(until)),
            _ => (n, until),
        });
    }

    fn short(&self) {
        // A load first: a region that pushes task after task while short costs one
        // read, not a write to a shared line per push.
        if !self.wanted.load(Ordering::Relaxed) && !self.wanted.swap(true, Ordering::SeqCst) {
            let _guard = self.lock.lock();
            self.wake.notify_one();
        }
    }
}

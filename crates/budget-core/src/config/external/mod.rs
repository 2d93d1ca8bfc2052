//! Budgets beyond one process: GNU make's jobserver and the crash-safe node budget.
//!
//! A process that joins an outside budget starts with only the token it holds
//! anyway (its implicit one) and a *supplier* thread that fetches more while its
//! regions want them and gives back those no region uses. The in-process counter in
//! `token/` stays the fast path: a region whose tokens the process already holds
//! makes no system call. The protocol, the lock kinds and the linger are argued in
//! `README.md` beside this file.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::sync::plain::{Condvar, Mutex};

use crate::tokens::token::{Grower, Supplier, Tokens};

mod farewell;
pub(crate) mod handshake;
pub(crate) mod jobserver;
pub mod node;
mod sys;

pub use handshake::HANDSHAKE_ABI;
pub use jobserver::release_outside_tokens;

/// The environment variable that turns joining make's jobserver off: `0` (or
/// `false`, `no`, `off`). On by default.
pub const ENV_JOBSERVER: &str = "BUDGET_JOBSERVER";

/// The environment variable that joins a node budget: `1` joins the one of this
/// user and this CPU set; a path joins that node budget file (as `budget run` sets
/// it); unset, empty or `0` stays out.
pub const ENV_NODE: &str = "BUDGET_NODE";

/// How often the supplier looks again while the process holds outside tokens or
/// wants some: the poll period for node tokens freed by others (so a killed
/// holder's tokens reach a waiting region within about one tick) and the unit of
/// the linger (a token is given back once it was unused at two ticks in a row).
pub(crate) const TICK: Duration = Duration::from_millis(2);

/// The outside budget this process takes its tokens from, from [`joined`](crate::joined).
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// match budget::joined() {
///     budget::Joined::Local => println!("this process's budget only"),
///     other => println!("sharing: {other:?}"),
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Joined {
    /// No outside budget: the process holds all its tokens.
    Local,
    /// GNU make's jobserver, from the named variable (`MAKEFLAGS`, ...).
    Jobserver {
        /// The variable that named it.
        var: String,
        /// The `--jobserver-auth` value (`R,W` or `fifo:PATH`).
        auth: String,
    },
    /// The budget of another copy of budget-core in this process (two extension
    /// modules or plugins that each link it): this copy takes its tokens from it.
    Copy {
        /// That budget's total.
        total: usize,
    },
    /// A node budget file shared by the processes of this user.
    Node {
        /// The node budget file.
        path: std::path::PathBuf,
        /// The tokens it shares.
        tokens: usize,
    },
}

static JOINED: OnceLock<Joined> = OnceLock::new();

/// The outside budget this process joined, as decided when its budget started
/// (`process::joined` starts it first).
pub(crate) fn joined_as_started() -> Joined {
    JOINED.get().cloned().unwrap_or(Joined::Local)
}

/// The environment variable naming a file where each process appends a line
/// `<CLOCK_MONOTONIC ns> <pid> held <tokens held> ext <outside tokens held>` each
/// time what it holds changes (after a token arrived, before one leaves), and
/// `<ns> <pid> exit` at exit before the jobserver tokens still held go back, for tests
/// and for looking into a tree of processes. Unset: nothing is written.
pub const ENV_TOKEN_LOG: &str = "BUDGET_TOKEN_LOG";

/// Appends a line to the `BUDGET_TOKEN_LOG` file, if one is named.
pub(crate) fn note(held: usize, ext: usize) {
    log_line(&format!("held {held} ext {ext}"));
}

/// Appends `exit` to the `BUDGET_TOKEN_LOG` file, if one is named: written at exit
/// before the tokens the process still holds go back (a reader of the log counts
/// nothing for the process after it).
pub(crate) fn note_exit() {
    log_line("exit");
}

/// The `BUDGET_TOKEN_LOG` file, opened on first use ([`tokens`] does it when the
/// budget starts, before the supplier thread could be in the middle of it at a fork).
fn token_log() -> &'static Option<std::fs::File> {
    static LOG: OnceLock<Option<std::fs::File>> = OnceLock::new();
    LOG.get_or_init(|| {
        let path = std::env::var_os(ENV_TOKEN_LOG)?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    })
}

/// Appends `<ns> <pid> <what>` to the `BUDGET_TOKEN_LOG` file, if one is named.
fn log_line(what: &str) {
    if let Some(mut file) = token_log().as_ref() {
        let ns = sys::monotonic_ns();
        let line = format!("{ns} {} {what}\n", std::process::id());
        // One write of one line with O_APPEND: lines of processes never interleave.
        let _ = std::io::Write::write_all(&mut file, line.as_bytes());
    }
}

/// Whether an environment value switches something off.
pub(crate) fn is_off(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "" | "0" | "false" | "no" | "off"
    )
}

/// The tokens of a new registry: joined to the node budget (first) or the jobserver
/// when the environment offers one, the process's own otherwise.
pub(crate) fn tokens(total: usize, ours: &'static handshake::Published) -> Tokens {
    let _ = token_log();
    // Another copy of budget-core in this process (one cargo could not see) started
    // first: share its budget, never count the cores twice (`handshake.rs`).
    match handshake::meet(ours) {
        handshake::Met::First => {}
        handshake::Met::Other(first) => {
            let total = (first.total)();
            let _ = JOINED.set(Joined::Copy { total });
            return Tokens::joined(
                total,
                Box::new(Driver::new(Backend::Copy(Copied::new(first)), total)),
            );
        }
        handshake::Met::Incompatible(message) => {
            warn_once(&message);
            return Tokens::new(1);
        }
    }
    if let Some((member, tokens)) = node::from_env() {
        let path = member.path().to_path_buf();
        let _ = JOINED.set(Joined::Node { path, tokens });
        let backend = Backend::Node(member, jobserver::bridge());
        return Tokens::joined(total, Box::new(Driver::new(backend, total)));
    }
    if node::named_but_gone() {
        // A process of a `budget run` tree that started after the run ended: the
        // jobserver it names is the dead run's pipe (width 1 for ever). Its own
        // budget, as the warning of `from_env` said.
        return Tokens::new(total);
    }
    if let Some(source) = jobserver::from_env() {
        let _ = JOINED.set(Joined::Jobserver {
            var: source.var.clone(),
            auth: source.auth.clone(),
        });
        return Tokens::joined(
            total,
            Box::new(Driver::new(Backend::Jobserver(source), total)),
        );
    }
    Tokens::new(total)
}

/// Where outside tokens come from.
enum Backend {
    /// A node member, and the jobserver pipe of the tree if there is one (`budget
    /// run` offers one whose bytes it backs with node tokens: its spare byte is a
    /// node token a member may take, so a lone member still gets the whole node).
    Node(node::Member, Option<jobserver::Member>),
    Jobserver(jobserver::Member),
    /// Another copy of budget-core in this process.
    Copy(Copied),
}

/// The tokens this copy took from the first copy's budget (`handshake.rs`).
struct Copied {
    first: &'static handshake::Published,
    held: AtomicUsize,
}

impl Copied {
    fn new(first: &'static handshake::Published) -> Copied {
        Copied {
            first,
            held: AtomicUsize::new(0),
        }
    }

    fn try_take(&self, n: usize) -> usize {
        let got = (self.first.take)(n);
        // Relaxed: only the supplier's and takers' arithmetic, under `taking`.
        self.held.fetch_add(got, Ordering::Relaxed);
        got
    }

    fn give_back(&self, n: usize) {
        let n = n.min(self.held.load(Ordering::Relaxed));
        self.held.fetch_sub(n, Ordering::Relaxed);
        (self.first.give)(n);
    }
}

impl Backend {
    /// Outside tokens held now (a node member's bytes of the tree's pipe included).
    fn held(&self) -> usize {
        match self {
            Backend::Node(m, bridge) => m.held() + bridge.as_ref().map_or(0, |b| b.held()),
            Backend::Jobserver(j) => j.held(),
            Backend::Copy(c) => c.held.load(Ordering::Relaxed),
        }
    }

    /// Takes up to `n` outside tokens without waiting: a node member takes node
    /// tokens (`now`: the bounded look of a region's entry), then bytes of the tree's
    /// pipe. Returns how many.
    fn try_take(&self, n: usize, now: bool) -> usize {
        match self {
            Backend::Node(member, bridge) => {
                let got = if now {
                    member.try_take_now(n)
                } else {
                    member.try_take(n)
                };
                match bridge {
                    Some(bridge) if got < n => got + bridge.try_take(n - got),
                    _ => got,
                }
            }
            Backend::Jobserver(source) => source.try_take(n),
            Backend::Copy(c) => c.try_take(n),
        }
    }

    /// Gives one outside token back: a byte of the tree's pipe first (make may be
    /// waiting for it), then a node token.
    fn give_back_one(&self) {
        match self {
            Backend::Node(member, bridge) => match bridge {
                Some(bridge) if bridge.held() > 0 => bridge.give_back(1),
                _ => member.give_back(1),
            },
            Backend::Jobserver(source) => source.give_back(1),
            Backend::Copy(c) => c.give_back(1),
        }
    }

    /// The tokens the process holds when it holds `ext` outside ones. A node
    /// member's own thread runs even with no node token (max(1, ext)); a jobserver
    /// client always has its implicit token besides (1 + ext).
    fn capacity(&self, ext: usize) -> usize {
        match self {
            // The first copy's tokens pay for this copy's threads as node tokens
            // do: the own thread runs unpaid (as an overcommitted one) when none is had.
            Backend::Node(..) | Backend::Copy(_) => ext.max(1),
            Backend::Jobserver(_) => 1 + ext,
        }
    }

    /// Outside tokens wanted for `using` tokens of work (0 when nothing runs).
    fn target(&self, using: usize) -> usize {
        match self {
            Backend::Node(..) | Backend::Copy(_) => using,
            Backend::Jobserver(_) => using.saturating_sub(1),
        }
    }
}

/// The supplier: a thread of its own that takes outside tokens while regions want
/// them and gives back those unused for a linger of one tick (at once, and also
/// those in use as soon as their region ends, while another process waits).
struct Driver {
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
    fn new(backend: Backend, total: usize) -> Self {
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

/// Prints `message` once per process (the first caller's).
pub(crate) fn warn_once(message: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!("{message}");
        eprintln!("{message}");
    }
}

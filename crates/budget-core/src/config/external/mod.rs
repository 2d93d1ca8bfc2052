//! Budgets beyond one process: GNU make's jobserver and the crash-safe node budget.
//!
//! A process that joins an outside budget starts with only the token it holds
//! anyway (its implicit one) and a *supplier* thread that fetches more while its
//! regions want them and gives back those no region uses. The in-process counter in
//! `token/` stays the fast path: a region whose tokens the process already holds
//! makes no system call. The protocol, the lock kinds and the linger are argued in
//! `README.md` beside this file.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::tokens::token::Tokens;

mod driver;
use driver::Driver;
mod farewell;
pub(crate) mod handshake;
pub(crate) mod jobserver;
pub mod node;
mod sys;
mod token_log;

pub use handshake::HANDSHAKE_ABI;
pub use jobserver::release_outside_tokens;
pub use token_log::ENV_TOKEN_LOG;
pub(crate) use token_log::{note, note_exit};

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
    let _ = token_log::token_log();
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

/// Prints `message` once per process (the first caller's).
pub(crate) fn warn_once(message: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!("{message}");
        eprintln!("{message}");
    }
}

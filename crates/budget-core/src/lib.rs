//! The core of `budget`: one parallelism budget for the whole process.
//!
//! Use it through the `budget` facade crate; this crate holds the parts:
//!
//! - **The budget** ([`stats`], [`Builder`], [`available_cores`], [`detect`]):
//!   `total` core tokens for the process, detected from the affinity mask, the
//!   cgroup CPU quota and Slurm's `SLURM_CPUS_PER_TASK`, or set by
//!   `BUDGET_NUM_THREADS` or the builder; [`detect`] reports which one set it.
//! - **Regions** ([`scope`], [`scope_with`], [`Scope`]): a region takes
//!   `1 + min(requested - 1, free)` tokens at entry without ever waiting, so nested
//!   regions shrink instead of oversubscribing, and grows back when tokens are
//!   released while it has queued work.
//! - **The thread pool** ([`Scope::spawn`], [`Scope::join`], [`Scope::for_each`]):
//!   worker threads that run a region's tasks only while they occupy one of its
//!   token slots, and give the slot back before they park.
//!
//! - **Integration hooks** ([`integration`]): [`ScopeHooks`](integration::ScopeHooks)
//!   (sealed: `with_demand`, `runs_body`, `in_body`, `id`),
//!   [`OpenRegion`](integration::OpenRegion) (a region entered without a closure),
//!   [`RegionThread`] and [`Lease`] (tokens held directly by code that runs its own
//!   threads, such as a native library's pool), for budget-rayon, budget-native and
//!   other integrations; apart from the user API.
//! - **Beyond one process** ([`joined`], [`held_tokens`], [`node`]): a process
//!   finding GNU make's jobserver, or a node budget (`BUDGET_NODE`, `budget run`),
//!   holds only its implicit token and takes the others from there while its regions
//!   want them (`src/config/external/README.md`).
//!
//! The design note, with a glossary (token, width, requested, grant, grower, demand,
//! lease, overcommit), the map of the modules in their four wings (`tokens/`,
//! `regions/`, `pool/`, `config/`) and the import graph, is `README.md` beside
//! `Cargo.toml`;
//! the token protocol and the argument for why it loses no token and no wake-up are
//! in `src/tokens/token/README.md`.
//!
//! # Examples
//!
//! ```
//! # use budget_core as budget;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//!
//! let hits = AtomicUsize::new(0);
//! budget::scope(|outer| {
//!     outer.for_each(0..4, |_| {
//!         // Each inner region gets what the outer one left free: often width 1.
//!         budget::scope(|inner| {
//!             assert!(inner.width() >= 1);
//!             inner.for_each(0..100, |_| { hits.fetch_add(1, Ordering::Relaxed); });
//!         });
//!     });
//! });
//! assert_eq!(hits.into_inner(), 400);
//! assert_eq!(budget::stats().in_use, 0);
//! ```
#![warn(missing_docs)]

// The four wings (each folder's `mod.rs` says what it holds), then the glue.
mod config;
pub mod integration;
mod pool;
mod regions;
mod sync;
mod tokens;

pub use config::builder::{BuildError, Builder};
pub use config::detect::{
    available_cores, detect, static_env_marker, user_thread_variable, Detected, Source,
    ENV_NUM_THREADS, ENV_STATIC_ENV, MAX_THREADS,
};
pub use config::external::{
    node, release_outside_tokens, Joined, ENV_JOBSERVER, ENV_NODE, ENV_TOKEN_LOG, HANDSHAKE_ABI,
};
pub use pool::process::{held_tokens, joined};
pub use regions::context::RegionThread;
pub use regions::items::ForEachInput;
pub use regions::scope::{scope, scope_with, Scope};
pub use tokens::lease::Lease;
pub use tokens::stats::Stats;

/// A snapshot of the process-wide budget: total, tokens in use, peak, and counts of
/// regions, narrowed grants, regrown tokens and overcommit.
///
/// Starts the budget if nothing did yet (like any other use).
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// let stats = budget::stats();
/// assert!(stats.total >= 1);
/// println!("{stats}");
/// ```
pub fn stats() -> Stats {
    pool::process::global().stats()
}

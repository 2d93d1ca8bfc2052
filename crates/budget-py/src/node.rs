//! Python regions in a process that shares an outside budget (a node budget, make's
//! jobserver; `BUDGET_NODE`, `budget run`).
//!
//! Such a process holds one token of its own; its supplier thread brings more only
//! while registered demand wants them (`external/README.md` in budget-core). A Python
//! region that got less than it asked for there registers what it lacks with
//! [`budget_core::Lease::want`] and starts at once with what it has (its own thread
//! at least): it never waits. The supplier fetches for that demand; tokens that arrive
//! while the block runs are held by its lease (its native width was fixed at entry)
//! and freed at its exit, where the next region of the process takes them, or the
//! supplier gives them back after its linger, or at once while another process waits.

/// Whether this process joined an outside budget.
pub(crate) fn joined() -> bool {
    !matches!(budget_core::joined(), budget_core::Joined::Local)
}

//! Kept for the integration tests that say `mod common;`: the helpers live in the
//! `budget-testkit` crate (a dev-dependency); new tests can use it directly.

#[allow(unused_imports)] // not every test binary uses every helper
pub(crate) use budget_testkit::budget::{exclusive_budget, wait_for, watchdog};

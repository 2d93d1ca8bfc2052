//! **Configuration and outside budgets**: [`builder`](self::builder) sets the budget
//! before its first use; [`detect`](self::detect) finds the cores (affinity, cgroup,
//! Slurm, `BUDGET_NUM_THREADS`); [`external`](self::external) joins a budget outside
//! the process (GNU make's jobserver, a node budget, another copy of budget-core:
//! `external/README.md`).

pub(crate) mod builder;
pub(crate) mod detect;
pub(crate) mod external;

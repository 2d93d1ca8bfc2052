//! **The worker pool and the process**: [`registry`](self::registry) is the budget
//! with the threads that fill regions' slots; [`process`](self::process) installs the
//! one registry of the process and finds it again; [`fork`](self::fork) keeps the
//! fork generation, and [`per_fork`](self::per_fork) state that a forked child makes
//! anew.

pub(crate) mod fork;
pub(crate) mod per_fork;
pub(crate) mod process;
pub(crate) mod registry;

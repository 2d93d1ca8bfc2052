//! **Regions and tasks**: [`scope`](self::scope) opens a region and runs its tasks;
//! [`region`](self::region) is a region's shared state (queue, width, slots), and
//! [`tree`](self::tree) the regions nested in one outermost region; the task
//! protocols, with their unsafe, are [`job`](self::job) and [`lent`](self::lent)
//! (`join`'s allocation-free halves); [`items`](self::items) is `for_each`'s input,
//! [`context`](self::context) what the current thread runs, [`event`](self::event)
//! where waiting threads sleep and [`clock`](self::clock) what a wake costs.

pub(crate) mod clock;
pub(crate) mod context;
pub(crate) mod event;
pub(crate) mod items;
pub(crate) mod job;
pub(crate) mod lanes;
pub(crate) mod lent;
pub(crate) mod open;
pub(crate) mod region;
pub(crate) mod scope;
pub(crate) mod tasks;
pub(crate) mod tree;

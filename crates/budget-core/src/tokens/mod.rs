//! **Tokens**: the budget's core tokens and who holds them. [`token`](self::token)
//! keeps the count, the growers and the outside supplier (`token/README.md` has the
//! protocol and its argument); [`own`](self::own) pays for a region's own thread;
//! [`lease`](self::lease) lends tokens to code that runs its own threads;
//! [`stats`](self::stats) and [`tally`](self::tally) count what happened.

pub(crate) mod lease;
pub(crate) mod own;
pub(crate) mod stats;
pub(crate) mod tally;
pub(crate) mod token;

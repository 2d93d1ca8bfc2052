//! [`OwnToken`]: how the thread that opened a region is paid for, in one state.
//!
//! A region of width `w` holds `w - 1` helper tokens (its slots) and has one thread of
//! its own. That thread's token is one of:
//!
//! | state       | the opener is…                                   | returned at exit |
//! |-------------|--------------------------------------------------|------------------|
//! | `Inherited` | inside another region (a task, a body, a marked `RegionThread`): that region's token pays for it | 0 |
//! | `Held`      | outside every region, and took a free token at entry | 1            |
//! | `Owed`      | outside every region, found none free: runs unpaid (*overcommit*) | 0 |
//! | `Repaid`    | `Owed`, then paid by the first token a grant handed the region | 1    |
//!
//! **Conservation.** The only transitions are made at entry ([`OwnToken::take`]:
//! `Held` iff it took one token from `free`) and by a grant (`Owed → Repaid`,
//! [`OwnToken::repay`], consuming one granted token instead of widening the region;
//! grants run under the growers lock, and the region unregisters under that lock
//! before it reads the final state). So the opener's share of what the region
//! returns at exit, [`OwnToken::returned_at_exit`], is exactly the one token it
//! took (`Held`) or was handed (`Repaid`), and zero otherwise: with the helper
//! tokens (`final width - 1`, each taken or granted once), the region returns exactly
//! what it holds.
//!
//! While `Owed`, the region is registered as a grower that wants 1 more token even
//! with no work queued ([`OwnToken::owes`]): an overcommitted thread becomes a paid one
//! as soon as the budget can afford it, and no free token goes to a third thread
//! while it runs unpaid.

// The `sync` shim: loom's atomics under `--cfg budget_loom` (`region_loom_tests.rs`).
use crate::sync::{AtomicU8, Ordering};

use crate::tokens::token::Tokens;

const INHERITED: u8 = 0;
const HELD: u8 = 1;
const OWED: u8 = 2;
const REPAID: u8 = 3;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct OwnToken(AtomicU8);

impl OwnToken {
    /// The opener's token at entry: inherited inside a region, else one token taken
    /// now (free, or from the outside budget without waiting), else owed.
    #[inline]
    pub(crate) fn take(in_region: bool, tokens: &Tokens) -> OwnToken {
        let state = if in_region {
            INHERITED
        } else if tokens.take(1) == 1 {
            HELD
        } else {
            OWED
        };
        OwnToken(AtomicU8::new(state))
    }

    /// A copy of the current state, for the region's shared state when it is made
    /// (only grants change it, and they need that shared state).
    pub(crate) fn snapshot(&self) -> OwnToken {
        OwnToken(AtomicU8::new(self.0.load(Ordering::SeqCst)))
    }

    /// Whether the opener runs unpaid now (SeqCst: read by `wants` in the token
    /// protocol's Dekker pairs).
    #[inline]
    pub(crate) fn owes(&self) -> bool {
        self.0.load(Ordering::SeqCst) == OWED
    }

    /// Whether the opener found no token at entry (`Owed` or `Repaid`): counted as
    /// overcommit.
    #[inline]
    pub(crate) fn overcommitted(&self) -> bool {
        matches!(self.0.load(Ordering::SeqCst), OWED | REPAID)
    }

    /// A grant's first token pays for the opener: `Owed → Repaid`. True if it did
    /// (the token is then the opener's, not a new slot). Called under the growers lock.
    pub(crate) fn repay(&self) -> bool {
        self.0
            .compare_exchange(OWED, REPAID, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Tokens the opener's share returns at exit: 1 for `Held` and `Repaid`.
    #[inline]
    pub(crate) fn returned_at_exit(&self) -> usize {
        usize::from(matches!(self.0.load(Ordering::SeqCst), HELD | REPAID))
    }
}

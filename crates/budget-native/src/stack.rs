//! The calling thread's stack of live [`Limit`](crate::Limit) guards and what each
//! restores, for per-thread settings (`omp_set_num_threads`,
//! `mkl_set_num_threads_local`).
//!
//! Guards may be dropped in any order (Python `with` blocks exit out of order through
//! generators and coroutines). The count in effect is the newest live guard's, so:
//!
//! - dropping the **newest** guard restores, for each setting it changed, the value
//!   found when it was made: the count of the next live guard, or the original;
//! - dropping an **older** guard touches no library: its frame leaves the stack and
//!   hands its saved values to the frame just above it, which saved *this* guard's
//!   count and will now restore what this guard found instead.
//!
//! Each frame saves at most one value per setter (the first it found), so a frame's
//! restore is order-free.

use std::cell::RefCell;
use std::ffi::c_int;

/// How one per-thread value is put back.
#[derive(Clone, Copy)]
pub(crate) enum Restore {
    /// `omp_set_num_threads(prev)`.
    OpenMp(crate::control::SetInt),
    /// `mkl_set_num_threads_local(prev)` (`0` = back to the global setting).
    Mkl(crate::control::SetIntRet),
}

impl Restore {
    /// The setter's address: one saved value per setter and frame.
    fn key(self) -> usize {
        match self {
            Restore::OpenMp(f) => f as usize,
            Restore::Mkl(f) => f as usize,
        }
    }

    fn apply(self, prev: c_int) {
        match self {
            // SAFETY: the setter was resolved with its documented prototype and its
            // library stays loaded; called on the thread that saved `prev` (frames
            // are thread-local), restoring a value read there.
            Restore::OpenMp(set) => unsafe { set(prev) },
            Restore::Mkl(set_local) => {
                // SAFETY: as above; `prev` is what `mkl_set_num_threads_local`
                // returned, 0 meaning "no local setting".
                unsafe { set_local(prev) };
            }
        }
    }
}

/// One live guard's saved values.
struct Saved {
    id: u64,
    saved: Vec<(Restore, c_int)>,
}

#[derive(Default)]
struct Stack {
    next_id: u64,
    frames: Vec<Saved>,
}

thread_local! {
    static STACK: RefCell<Stack> = RefCell::default();
}

/// Pushes a frame for a new guard; returns its id.
pub(crate) fn push() -> u64 {
    STACK.with(|s| {
        let mut s = s.borrow_mut();
        s.next_id += 1;
        let id = s.next_id;
        s.frames.push(Saved {
            id,
            saved: Vec::new(),
        });
        id
    })
}

/// Saves `prev` as what frame `id` restores through `restore`, unless the frame
/// already saved a value for that setter (the first value found is the one before).
pub(crate) fn save(id: u64, restore: Restore, prev: c_int) {
    STACK.with(|s| {
        let mut s = s.borrow_mut();
        let Some(frame) = s.frames.iter_mut().find(|f| f.id == id) else {
            return;
        };
        if !frame.saved.iter().any(|(r, _)| r.key() == restore.key()) {
            frame.saved.push((restore, prev));
        }
    })
}

/// How many values frame `id` saved.
pub(crate) fn saved(id: u64) -> usize {
    STACK.with(|s| {
        s.borrow()
            .frames
            .iter()
            .find(|f| f.id == id)
            .map_or(0, |f| f.saved.len())
    })
}

/// Ends frame `id`: restores its values if it is the newest, else hands them to the
/// frame above it (see the module docs).
pub(crate) fn pop(id: u64) {
    // A guard dropped while the thread's locals are torn down finds nothing to do.
    let _ = STACK.try_with(|s| {
        let to_restore = {
            let mut s = s.borrow_mut();
            let Some(i) = s.frames.iter().position(|f| f.id == id) else {
                return;
            };
            let frame = s.frames.remove(i);
            match s.frames.get_mut(i) {
                None => frame.saved, // it was the newest: restore
                Some(above) => {
                    for (restore, prev) in frame.saved {
                        match above
                            .saved
                            .iter_mut()
                            .find(|(r, _)| r.key() == restore.key())
                        {
                            Some(slot) => slot.1 = prev,
                            None => above.saved.push((restore, prev)),
                        }
                    }
                    Vec::new()
                }
            }
        };
        // Outside the borrow: the setters run foreign code.
        for (restore, prev) in to_restore.into_iter().rev() {
            restore.apply(prev);
        }
    });
}

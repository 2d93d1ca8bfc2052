//! The per-thread stack of open frames (regions and limits) and the guards they own.
//!
//! A Python `with` block is not a Rust closure: `__enter__` and `__exit__` are two
//! calls, and blocks opened by generators or coroutines on one thread may exit in any
//! order. The guards of budget-core and budget-native are per-thread (`!Send`) and
//! restore per-thread settings in last-in-first-out order, so they never leave the
//! thread that made them: they live here, in a thread-local stack, and the Python
//! objects only hold a frame id and the thread's id.
//!
//! Exiting a frame that is not the innermost one (a generator closed before a later
//! one) undoes the native settings of every frame above it, innermost first, drops the
//! frame, and applies the settings of the frames above it again, in entry order. Each
//! `budget_native::limit` guard therefore restores exactly what it found, and the
//! innermost open frame's width is in force afterwards.
//!
//! A region frame holds budget-core's region state, an
//! [`OpenRegion`](budget_core::integration::OpenRegion): the entry rule, the thread's
//! own token and marking, the `stats()` count and the tokens given back when the
//! frame is dropped, as for a Rust `budget::scope`. Regions may end in any order:
//! when the thread's outermost one ends first, budget-core keeps the thread's token
//! until its last region ends.

use std::cell::RefCell;

use budget_core::integration::OpenRegion;
use budget_core::Lease;

/// What kind of frame, with what it holds beyond the native settings.
enum Kind {
    /// `budget.region()`: the region, and in a process sharing a node budget or a
    /// jobserver, a lease holding the demand for the rest of its request (both held
    /// for what their drop gives back).
    Region {
        _open: OpenRegion,
        _rest: Option<Lease>,
    },
    /// `budget.limit(n)`: native settings only, no tokens.
    Limit,
}

/// The libraries a limit frame sets, by path (`None`: all of them).
pub(crate) type Only = Option<std::sync::Arc<Vec<std::path::PathBuf>>>;

/// One open `with` block on this thread.
struct Frame {
    id: u64,
    width: usize,
    /// The libraries it sets (a `budget.limit` for some APIs or libraries only).
    only: Only,
    kind: Kind,
    /// The native settings, in the order made (empty only while they are being
    /// re-applied): a limit's one guard; a region's guard for every library, then one
    /// per `budget.limit` of some libraries open below it on this thread.
    native: Vec<budget_native::Limit>,
}

/// This thread's open frames, in entry order.
#[derive(Default)]
struct Frames {
    stack: Vec<Frame>,
    next_id: u64,
}

thread_local! {
    static FRAMES: RefCell<Frames> = RefCell::new(Frames::default());
}

/// How a region was granted, for the Python object.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grant {
    /// The frame's id on this thread.
    pub(crate) id: u64,
    /// The region's width: its own thread plus the extra tokens.
    pub(crate) width: usize,
}

/// Opens a region of at most `requested` (≥ 1) threads on this thread, with
/// budget-core's rule ([`OpenRegion::enter`]): the thread's own token if it is in no
/// region yet (when none is free the thread runs anyway, overcommitted, and its token
/// is *owed*: the next token released pays for it before any new region takes it),
/// plus up to `requested - 1` free tokens, never waiting; then sets every loaded
/// OpenMP/BLAS library to the width.
///
/// # Blocking
///
/// Only on budget-native's process-wide lock: call it with the GIL released.
pub(crate) fn open_region(requested: usize) -> Grant {
    FRAMES.with(|cell| {
        let mut frames = cell.borrow_mut();
        let open = OpenRegion::enter(requested);
        let mut width = open.width();
        // Sharing a node budget or a jobserver, the rest is registered as demand for
        // the supplier to fetch (`node.rs`); what arrives during the block is held by
        // the lease and freed at its exit, for the next region to take.
        let rest = (crate::node::joined() && width < open.requested()).then(|| {
            let mut rest = Lease::try_new_for_region(0);
            width += rest.want(open.requested() - width);
            rest
        });
        let id = frames.push(
            width,
            None,
            Kind::Region {
                _open: open,
                _rest: rest,
            },
        );
        Grant { id, width }
    })
}

/// The smallest width of the `budget.limit` frames of every library open on this
/// thread, if any: a region opened inside a limit asks for no more (as threadpoolctl's
/// limit caps what runs inside it). A limit of some libraries only (`{"blas": 1}`)
/// does not narrow the region: its libraries stay at its count inside the region.
pub(crate) fn limit_in_force() -> Option<usize> {
    FRAMES.with(|cell| {
        cell.borrow()
            .stack
            .iter()
            .filter(|f| matches!(f.kind, Kind::Limit) && f.only.is_none())
            .map(|f| f.width)
            .min()
    })
}

/// Opens a limit frame: every loaded OpenMP/BLAS library set to `width` (≥ 1), no
/// tokens taken. Returns the frame id.
///
/// # Blocking
///
/// As [`open_region`].
pub(crate) fn open_limit(width: usize, only: Only) -> u64 {
    FRAMES.with(|cell| cell.borrow_mut().push(width.max(1), only, Kind::Limit))
}

/// The native settings of a frame of `kind` opened above `below`: a limit sets its
/// libraries (`only`, or all) to `width`; a region sets every library to `width`, then
/// each library of a limit of some libraries open below to the smaller of that
/// limit's count and `width` (so `{"blas": 1}` holds inside a region of 2).
fn settings(below: &[Frame], width: usize, only: &Only, kind: &Kind) -> Vec<budget_native::Limit> {
    let mut guards = vec![native(width, only)];
    if let Kind::Region { .. } = kind {
        for limit in below.iter().filter(|f| matches!(f.kind, Kind::Limit)) {
            if limit.only.is_some() {
                guards.push(native(limit.width.min(width), &limit.only));
            }
        }
    }
    guards
}

/// Undoes a frame's native settings, newest first.
fn undo(guards: &mut Vec<budget_native::Limit>) {
    while let Some(guard) = guards.pop() {
        drop(guard);
    }
}

/// The native settings of one guard: every library, or those of `only`.
fn native(width: usize, only: &Only) -> budget_native::Limit {
    match only {
        None => budget_native::limit(width),
        // The loader's paths, as `_libraries()` lists them (`budget.limit` passes those).
        Some(paths) => budget_native::limit_where(width, |lib| paths.contains(&lib.path)),
    }
}

/// Closes the frame `id` of this thread, in whatever order frames are closed, and
/// returns whether it was open here.
///
/// # Blocking
///
/// As [`open_region`].
pub(crate) fn close(id: u64) -> bool {
    FRAMES.with(|cell| {
        let mut frames = cell.borrow_mut();
        let Some(at) = frames.stack.iter().position(|f| f.id == id) else {
            return false;
        };
        // Undo the native settings from the innermost frame down to this one, so each
        // guard restores exactly the values it found.
        for frame in frames.stack[at..].iter_mut().rev() {
            undo(&mut frame.native);
        }
        let frame = frames.stack.remove(at);
        // Then apply the settings of the frames that were above it again, outermost
        // first: the innermost open frame's width is in force again.
        for i in at..frames.stack.len() {
            let (below, rest) = frames.stack.split_at_mut(i);
            let frame = &mut rest[0];
            frame.native = settings(below, frame.width, &frame.only, &frame.kind);
        }
        // A region's tokens go back with its state (and its lease of the rest).
        drop(frame);
        true
    })
}

/// The number of frames open on this thread (regions and limits).
pub(crate) fn depth() -> usize {
    FRAMES.with(|cell| cell.borrow().stack.len())
}

impl Frames {
    fn push(&mut self, width: usize, only: Only, kind: Kind) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let native = settings(&self.stack, width, &only, &kind);
        self.stack.push(Frame {
            id,
            width,
            only,
            kind,
            native,
        });
        id
    }
}

impl Drop for Frames {
    /// A thread that ends with frames still open (a generator never closed) gives
    /// their tokens back and restores its settings, innermost first.
    fn drop(&mut self) {
        while let Some(mut frame) = self.stack.pop() {
            undo(&mut frame.native);
        }
    }
}

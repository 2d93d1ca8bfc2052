//! What [`Scope::for_each`](crate::Scope::for_each) iterates over: a range of
//! indices, a slice, or a mutable slice.

use std::marker::PhantomData;
use std::ops::Range;

/// Something [`Scope::for_each`](crate::Scope::for_each) can split into chunks:
/// `Range<usize>`, `&[T]` and `&mut [T]`. Sealed: the set may grow, but it is not
/// meant to be implemented outside budget.
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// let sum = AtomicUsize::new(0);
/// budget::scope(|s| s.for_each(1..101, |i| { sum.fetch_add(i, Ordering::Relaxed); }));
/// assert_eq!(sum.into_inner(), 5050);
///
/// let mut squares = vec![1, 2, 3];
/// budget::scope(|s| s.for_each(&mut squares[..], |x| *x *= *x));
/// assert_eq!(squares, [1, 4, 9]);
/// ```
pub trait ForEachInput: sealed::Sealed {
    /// What the body receives for each element.
    type Item;
    #[doc(hidden)]
    type Indexed: sealed::Indexed<Item = Self::Item>;
    #[doc(hidden)]
    fn into_indexed(self) -> Self::Indexed;
}

#[allow(unreachable_pub)] // reachable through ForEachInput's hidden items only
pub(crate) mod sealed {
    pub trait Sealed {}

    /// Random access by index, shared between threads.
    pub trait Indexed: Sync {
        type Item;
        fn len(&self) -> usize;
        /// # Safety
        ///
        /// `index < len()`, and each index is fetched at most once.
        unsafe fn get(&self, index: usize) -> Self::Item;
    }
}

impl sealed::Sealed for Range<usize> {}
impl ForEachInput for Range<usize> {
    type Item = usize;
    type Indexed = Range<usize>;
    fn into_indexed(self) -> Range<usize> {
        self
    }
}
impl sealed::Indexed for Range<usize> {
    type Item = usize;
    fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }
    unsafe fn get(&self, index: usize) -> usize {
        self.start + index
    }
}

impl<T: Sync> sealed::Sealed for &[T] {}
impl<'a, T: Sync> ForEachInput for &'a [T] {
    type Item = &'a T;
    type Indexed = &'a [T];
    fn into_indexed(self) -> &'a [T] {
        self
    }
}
impl<'a, T: Sync> sealed::Indexed for &'a [T] {
    type Item = &'a T;
    fn len(&self) -> usize {
        <[T]>::len(self)
    }
    unsafe fn get(&self, index: usize) -> &'a T {
        // SAFETY: the caller keeps `index < len()`.
        unsafe { <[T]>::get_unchecked(self, index) }
    }
}

impl<T: Send> sealed::Sealed for &mut [T] {}
impl<'a, T: Send> ForEachInput for &'a mut [T] {
    type Item = &'a mut T;
    type Indexed = SliceMut<'a, T>;
    fn into_indexed(self) -> SliceMut<'a, T> {
        SliceMut {
            ptr: self.as_mut_ptr(),
            len: self.len(),
            marker: PhantomData,
        }
    }
}

/// A mutable slice handed out one element at a time, each index once.
#[doc(hidden)]
#[derive(Debug)]
pub struct SliceMut<'a, T> {
    ptr: *mut T,
    len: usize,
    marker: PhantomData<&'a mut [T]>,
}

// SAFETY: SliceMut hands out each element once (the `get` contract), so threads
// never share an element: moving `&mut T` between threads needs only `T: Send`.
unsafe impl<T: Send> Sync for SliceMut<'_, T> {}
// SAFETY: as for Sync; the slice itself is exclusively borrowed for 'a.
unsafe impl<T: Send> Send for SliceMut<'_, T> {}

impl<'a, T: Send> sealed::Indexed for SliceMut<'a, T> {
    type Item = &'a mut T;
    fn len(&self) -> usize {
        self.len
    }
    unsafe fn get(&self, index: usize) -> &'a mut T {
        // SAFETY: `index < len` and each index is fetched once (the caller's contract),
        // so this is the only reference to that element during 'a.
        unsafe { &mut *self.ptr.add(index) }
    }
}

//! Small runs of the unsafe paths, sized for Miri (`cargo +nightly miri test -p
//! budget-threads-core --lib --test miri`, in the test command, with 2 CPUs): tasks
//! that borrow the caller's stack through the lifetime-erasing `spawn`/`join`,
//! `for_each` over a mutable slice (`SliceMut` hands each element to one thread),
//! nested regions, and a panicking task. They run under plain `cargo test` too.

use std::sync::atomic::{AtomicUsize, Ordering};

#[test]
fn spawned_tasks_borrow_the_callers_stack() {
    let counter = AtomicUsize::new(0);
    let words = ["a", "bb", "ccc"];
    budget_core::scope_with(2, |s| {
        for w in &words {
            let counter = &counter;
            s.spawn(move |_| {
                counter.fetch_add(w.len(), Ordering::Relaxed);
            });
        }
    });
    assert_eq!(counter.load(Ordering::Relaxed), 6);
}

#[test]
fn join_returns_both_sides_and_nests() {
    let data = [1u64, 2, 3, 4, 5, 6];
    let (left, right) = data.split_at(3);
    let (a, b) = budget_core::scope_with(2, |s| {
        s.join(
            || left.iter().sum::<u64>(),
            || {
                budget_core::scope(|inner| {
                    inner.join(|| right[0], || right[1..].iter().sum::<u64>())
                })
            },
        )
    });
    assert_eq!((a, b.0 + b.1), (6, 15));
}

#[test]
fn for_each_hands_each_element_of_a_mutable_slice_to_one_thread() {
    let mut values = vec![0u32; 16];
    budget_core::scope_with(2, |s| {
        s.for_each(&mut values[..], |v: &mut u32| *v += 1);
    });
    assert!(values.iter().all(|&v| v == 1), "{values:?}");
}

#[test]
fn a_panicking_task_reaches_the_caller() {
    let caught = std::panic::catch_unwind(|| {
        budget_core::scope_with(2, |s| {
            s.spawn(|_| panic!("on purpose"));
            s.spawn(|_| {});
        })
    });
    assert!(caught.is_err());
}

#[test]
fn an_erased_job_runs_while_what_it_borrows_lives() {
    let text = String::from("borrowed");
    let seen = AtomicUsize::new(0);
    let job: Box<dyn FnOnce() + Send + '_> = Box::new(|| {
        seen.store(text.len(), Ordering::Relaxed);
    });
    // SAFETY: the job runs on another thread that is joined before `text` and `seen`
    // go out of scope.
    let job = unsafe { budget_core::integration::erase_job(job) };
    std::thread::spawn(job).join().unwrap();
    assert_eq!(seen.load(Ordering::Relaxed), 8);
}

/// The relay's pattern (budget-rayon): the caller returns as soon as the job has
/// stored its result, while the job's thread is still running (it still holds its
/// lock guard and its `Arc`); the thread is joined only after the caller's frame is
/// gone. Under Miri, a job that touched the caller's stack after signalling would be
/// reported.
#[test]
fn an_erased_job_that_outlives_its_callers_frame_touches_only_what_it_owns() {
    use std::sync::{Arc, Condvar, Mutex};

    fn relay(words: &[&str]) -> (usize, std::thread::JoinHandle<()>) {
        let outcome = Arc::new((Mutex::new(None), Condvar::new()));
        let report = outcome.clone();
        let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
            let total = words.iter().map(|w| w.len()).sum::<usize>();
            let (slot, done) = &*report;
            *slot.lock().unwrap() = Some(total);
            done.notify_one();
            // From here on only `report` (owned) is touched.
        });
        // SAFETY: the caller waits below until the job stored its result; after that
        // the job touches only its own `Arc`.
        let job = unsafe { budget_core::integration::erase_job(job) };
        let thread = std::thread::spawn(job);
        let (slot, done) = &*outcome;
        let mut value = slot.lock().unwrap();
        while value.is_none() {
            value = done.wait(value).unwrap();
        }
        (value.take().unwrap(), thread)
    }

    let (total, thread) = {
        let words = [String::from("a"), String::from("bb")];
        let refs: Vec<&str> = words.iter().map(String::as_str).collect();
        relay(&refs)
        // `words` and `refs` are dropped here, maybe before the job's thread ends.
    };
    thread.join().unwrap();
    assert_eq!(total, 3);
}

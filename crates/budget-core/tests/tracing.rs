//! Each region is a `budget.region` tracing span recording its requested width, the
//! width taken at entry and the tokens regrown. A minimal subscriber collects them (budget of 2 cores).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// The fields of one span, by name.
type Fields = Vec<(String, u64)>;

#[derive(Default)]
struct Collector {
    next: AtomicU64,
    spans: Mutex<Vec<(String, Fields)>>,
}

struct Numbers<'a>(&'a mut Fields);
impl Visit for Numbers<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.push((field.name().to_owned(), value));
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

/// Shares the collected spans with the test.
#[derive(Clone)]
struct Shared(Arc<Collector>);

impl Subscriber for Shared {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = Vec::new();
        span.record(&mut Numbers(&mut fields));
        let mut spans = self.0.spans.lock().unwrap();
        spans.push((span.metadata().name().to_owned(), fields));
        self.0.next.fetch_add(1, Ordering::Relaxed);
        Id::from_u64(spans.len() as u64)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.0.spans.lock().unwrap();
        let entry = &mut spans[span.into_u64() as usize - 1];
        values.record(&mut Numbers(&mut entry.1));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn field(fields: &Fields, name: &str) -> Option<u64> {
    fields
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
}

#[test]
fn regions_record_requested_width_and_regrown() {
    let _g = budget_testkit::budget::exclusive_budget(2);
    let collector = Arc::new(Collector::default());
    let held = Barrier::new(2);
    let release = AtomicBool::new(false);
    thread::scope(|t| {
        t.spawn(|| {
            budget_core::scope(|_| {
                held.wait();
                budget_testkit::budget::wait_for("release", || release.load(Ordering::SeqCst));
            })
        });
        held.wait();
        tracing::subscriber::with_default(Shared(collector.clone()), || {
            budget_core::scope_with(2, |s| {
                assert_eq!(s.width(), 1);
                s.spawn(|_| std::thread::sleep(std::time::Duration::from_millis(30)));
                s.spawn(|_| std::thread::sleep(std::time::Duration::from_millis(30)));
                release.store(true, Ordering::SeqCst);
                budget_testkit::budget::wait_for("growth", || s.width() == 2);
                budget_core::scope(|inner| assert_eq!(inner.width(), 1));
            });
        });
    });
    let spans = collector.spans.lock().unwrap();
    let regions: Vec<&Fields> = spans
        .iter()
        .filter(|(name, _)| name == "budget.region")
        .map(|(_, f)| f)
        .collect();
    assert_eq!(regions.len(), 2, "one span per region: {spans:?}");
    let (outer, inner) = (regions[0], regions[1]);
    assert_eq!(field(outer, "requested"), Some(2));
    assert_eq!(field(outer, "width"), Some(1));
    assert_eq!(field(outer, "regrown"), Some(1));
    assert_eq!(field(inner, "requested"), Some(2));
    assert_eq!(field(inner, "width"), Some(1));
    assert_eq!(field(inner, "regrown"), None);
    assert_eq!(budget_core::stats().in_use, 0);
}

/// A subscriber whose `new_span` panics, as a user layer's assertion might.
struct PanicsInNewSpan;

impl Subscriber for PanicsInNewSpan {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        panic!("a subscriber panics in new_span");
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// A subscriber's panic while a region's span is made reaches the caller, after the
/// region gave its tokens back and unmarked its thread (a `scope_with` region and an
/// `OpenRegion` alike).
#[test]
fn a_subscribers_panic_at_region_entry_gives_the_tokens_back() {
    let _g = budget_testkit::budget::exclusive_budget(2);
    thread::spawn(|| {
        let caught = tracing::subscriber::with_default(PanicsInNewSpan, || {
            std::panic::catch_unwind(|| budget_core::scope_with(2, |_| ()))
        });
        assert!(caught.is_err(), "the subscriber's panic reaches the caller");
        assert_eq!(budget_core::stats().in_use, 0);
        let caught = tracing::subscriber::with_default(PanicsInNewSpan, || {
            std::panic::catch_unwind(|| drop(budget_core::integration::OpenRegion::enter(2)))
        });
        assert!(caught.is_err());
        assert_eq!(budget_core::stats().in_use, 0);
        // Not left marked as in a region: an outermost region takes a token for the
        // thread again.
        budget_core::scope_with(1, |_| assert_eq!(budget_core::stats().in_use, 1));
    })
    .join()
    .expect("the checks passed");
}

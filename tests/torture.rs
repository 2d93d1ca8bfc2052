//! Torture: every promise of the budget under adversarial nesting,
//! injected panics and a real OpenMP runtime, each case in a child process of its own
//! (a process has one budget, fixed at first use).
//!
//! **`torture_total_{1,2,3,64}`** (`BUDGET_NUM_THREADS` of the child). The real libgomp
//! is loaded (`BUDGET_NATIVE_GOMP` of `.cache/native/libs.env`), so `native` and `limit`
//! set a real library, and native bodies run in real OpenMP teams (`GOMP_parallel`,
//! the team size taken from the calling thread's count, as `#pragma omp parallel`).
//!
//! 1. Alone: a region of the whole budget calls `s.install` and `s.native` from all its
//!    `for_each` tasks at once. Nothing else runs and the thread
//!    holds its own token, so at most `total` work bodies may run at once.
//! 2. 12 outside threads, each running 6 rounds of a region tree: the top region's own
//!    handle from its tasks, then `join → install → nested scope → native → for_each`
//!    and `for_each → scope → spawn + install`, recursing to depth 3, the region's own
//!    handle used from its tasks again at every level, panics injected at seeded
//!    points, and two `budget::native::limit` guards dropped in the order the seed picks
//!    (both orders occur). Checked:
//!    - each round panics exactly when a panic was injected in it, with the payload
//!      injected by that very thread and round;
//!    - after two guards are dropped, in either order, the count is the one before;
//!      `omp_get_max_threads()` of every outside thread (set before, distinct per
//!      thread) is restored after every round; on any thread, outside every `native`
//!      call and `limit` guard of that thread, it is the thread's own count;
//!    - at most `total + min(12, stats().overcommit)` work bodies run at once (rayon
//!      items, OpenMP team members, `for_each` elements, tasks; counted by one atomic
//!      `now`/`max` around each leaf, which never nests). The bound: every thread that
//!      runs a body runs on a token, except an outside thread that entered a region
//!      when no token was free. budget-core documents that case (DESIGN "Threads outside
//!      any region", `Stats::overcommit`): the thread runs anyway, unpaid, and its
//!      region counts once in `overcommit`. Its nested regions inherit the unpaid slot
//!      (a top-level `install` hands it to the pool's first thread while the caller
//!      waits) and may still take free tokens for helpers, so the bound is reachable:
//!      at total 2, 12 unpaid outside threads while one nested region holds both tokens
//!      run 14 bodies. Every other body holds one of the `total` tokens;
//!    - afterwards each outside thread is outside every region again (a region it opens
//!      takes a token for the thread itself), `stats().in_use == 0`, and no lease
//!      is held.
//!
//! **`drop_panicking_payload_*`**: two tasks of one region (`spawn`, or `for_each`) throw
//! payloads whose `Drop` panics, while a third task is still running; the payload that
//! budget must drop (the second) is dropped on the calling thread in one variant and on
//! a worker thread in the other. The process must finish correctly (the scope resumes a
//! panic, after every task finished, and the budget works after it) or abort with a
//! message (SIGABRT, "abort" on stderr, as rayon does when a panic escapes a job); it
//! must never return from the scope while the third task runs (exit code 4), and never
//! hang. The payload's `Drop` panics only when the thread is not already unwinding:
//! there Rust itself would abort, whatever budget does.
//!
//! A watchdog in each child prints the progress and `budget::stats()` and exits with
//! code 3 after 120 s (60 s for the small payload cases); the parent also kills a child
//! that outlives 150 s. Work bodies sleep briefly (work that keeps its core, without
//! burning the shared machine's CPUs) so that bodies overlap on 2 cores; nothing asserts
//! on time.
#![cfg(target_os = "linux")]

use std::any::Any;
use std::cell::Cell;
use std::ffi::{c_int, c_uint, c_void};
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Barrier, Mutex, OnceLock};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use budget::prelude::*;
use rayon::prelude::*;

use budget_testkit::watch::{exit_unless_done, Done};
use budget_testkit::Lib;

/// Names the child's case; unset in the parent.
const MODE: &str = "BUDGET_TORTURE_CHILD";
/// libgomp's process default count in the children (`OMP_NUM_THREADS`): no width the
/// torture uses at totals 1–3 equals it, so a count left behind shows.
const DEFAULT_OMP: c_int = 7;
/// Exit code of a child whose watchdog fired.
const HUNG: i32 = 3;
/// Exit code of a payload child whose scope returned while a task still ran.
const EARLY: i32 = 4;
/// The parent kills a child still running after this (its own watchdog comes first).
const PARENT_DEADLINE: Duration = Duration::from_secs(150);

// ---------------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------------

/// How a child ended and what it printed.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn describe(&self) -> String {
        format!(
            "status: {}\n--- stdout\n{}--- stderr\n{}",
            self.status,
            abridged(&self.stdout),
            abridged(&self.stderr)
        )
    }

    fn passed(&self) -> bool {
        self.status.success() && self.stdout.contains("1 passed")
    }
}

/// The first 60 and last 20 lines of `text` (a failing child may print hundreds), each
/// behind "| " so that no line of the child's reads as the parent's own (the suite's
/// summary counts `test result:` lines).
fn abridged(text: &str) -> String {
    let lines: Vec<String> = text.lines().map(|l| format!("| {l}\n")).collect();
    if lines.len() <= 80 {
        return lines.concat();
    }
    format!(
        "{}| [... {} lines ...]\n{}",
        lines[..60].concat(),
        lines.len() - 80,
        lines[lines.len() - 20..].concat()
    )
}

/// The path of the real libgomp, from `scripts/setup-native.sh`'s `libs.env`.
fn gomp_path() -> PathBuf {
    budget_testkit::libs::require_path("BUDGET_NATIVE_GOMP")
}

/// Runs the `child` test of this binary in `mode` at budget `total`, killing it after
/// `PARENT_DEADLINE`.
fn run_child(mode: &str, total: usize) -> Outcome {
    let exe = std::env::current_exe().expect("the path of this test binary");
    let mut command = Command::new(exe);
    command
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(MODE, mode)
        .env(budget::ENV_NUM_THREADS, total.to_string())
        .env("BUDGET_NATIVE_GOMP", gomp_path())
        .env("OMP_NUM_THREADS", DEFAULT_OMP.to_string())
        // Idle libgomp threads sleep at once instead of spinning (budget-native's README).
        .env("OMP_WAIT_POLICY", "passive")
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {command:?}: {e}"));
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + PARENT_DEADLINE;
    let (status, killed) = loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            break (status, false);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break (child.wait().expect("waiting for the killed child"), true);
        }
        thread::sleep(Duration::from_millis(20));
    };
    let outcome = Outcome {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    };
    assert!(
        !killed,
        "child {mode:?} at total {total} outlived {PARENT_DEADLINE:?} (its watchdog did \
         not fire either): killed\n{}",
        outcome.describe()
    );
    outcome
}

/// A torture child at `total`: it must pass.
fn torture_at(total: usize) {
    let outcome = run_child("torture", total);
    assert_ne!(
        outcome.status.code(),
        Some(HUNG),
        "torture at total {total} hung: the watchdog fired\n{}",
        outcome.describe()
    );
    assert!(
        outcome.passed(),
        "torture at total {total} failed\n{}",
        outcome.describe()
    );
    for line in outcome.stdout.lines() {
        if let Some(at) = line.find("torture: total") {
            println!("{}", &line[at..]);
        }
    }
}

#[test]
fn torture_total_1() {
    torture_at(1);
}

#[test]
fn torture_total_2() {
    torture_at(2);
}

#[test]
fn torture_total_3() {
    torture_at(3);
}

#[test]
fn torture_total_64() {
    torture_at(64);
}

/// A payload child: finishing correctly and aborting with a message both pass;
/// returning early, hanging, or any other end fails.
fn payload_case(mode: &str) {
    let outcome = run_child(mode, 3);
    if outcome.passed() && outcome.stdout.contains("payload: finished") {
        return;
    }
    if outcome.status.signal() == Some(libc::SIGABRT)
        && outcome.stderr.to_lowercase().contains("abort")
    {
        println!("{mode}: the process aborted with a message (allowed)");
        return;
    }
    match outcome.status.code() {
        Some(HUNG) => panic!("{mode}: hung (the watchdog fired)\n{}", outcome.describe()),
        Some(EARLY) => panic!(
            "{mode}: the scope returned while a task of the region was still running\n{}",
            outcome.describe()
        ),
        _ => panic!(
            "{mode}: neither finished correctly nor aborted with a message\n{}",
            outcome.describe()
        ),
    }
}

#[test]
fn drop_panicking_payload_spawn_dropped_on_caller() {
    payload_case("payload-spawn-caller");
}

#[test]
fn drop_panicking_payload_spawn_dropped_on_worker() {
    payload_case("payload-spawn-worker");
}

#[test]
fn drop_panicking_payload_for_each_dropped_on_caller() {
    payload_case("payload-for_each-caller");
}

#[test]
fn drop_panicking_payload_for_each_dropped_on_worker() {
    payload_case("payload-for_each-worker");
}

/// The child side. Does nothing unless started by `run_child`.
#[test]
fn child() {
    let Ok(mode) = std::env::var(MODE) else {
        return;
    };
    quiet_expected_panics();
    match mode.as_str() {
        "torture" => torture(),
        "payload-spawn-caller" => payload(Region::Spawn, Dropper::Caller),
        "payload-spawn-worker" => payload(Region::Spawn, Dropper::Worker),
        "payload-for_each-caller" => payload(Region::ForEach, Dropper::Caller),
        "payload-for_each-worker" => payload(Region::ForEach, Dropper::Worker),
        other => panic!("unknown {MODE} {other:?}"),
    }
}

/// The injected panics and payload throws are expected: keep stderr for the rest.
fn quiet_expected_panics() {
    let default = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        if payload.downcast_ref::<Injected>().is_none() && payload.downcast_ref::<Bomb>().is_none()
        {
            default(info);
        }
    }));
}

/// Exits with `HUNG` after `limit`, printing `progress()`, the budget's state and the
/// rayon pools', unless the returned guard is set first (testkit's one watchdog).
fn watchdog(what: &'static str, limit: Duration, progress: fn() -> String) -> Done {
    exit_unless_done(what, limit, HUNG, move || {
        format!(
            "progress: {}\nrayon: {:?}",
            progress(),
            budget::rayon::stats()
        )
    })
}

fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(i) = payload.downcast_ref::<Injected>() {
        format!("{i:?}")
    } else {
        "<a payload of another type>".to_owned()
    }
}

// ---------------------------------------------------------------------------------
// The real libgomp
// ---------------------------------------------------------------------------------

/// The OpenMP entry points the torture calls itself.
struct Gomp {
    get_max_threads: unsafe extern "C" fn() -> c_int,
    set_num_threads: unsafe extern "C" fn(c_int),
    get_num_threads: unsafe extern "C" fn() -> c_int,
    /// `void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads,
    /// unsigned flags)`: what GCC emits for `#pragma omp parallel`; a `num_threads` of 0
    /// takes the team size from the calling thread's count (the one budget sets).
    parallel: unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint),
}

static GOMP: OnceLock<Gomp> = OnceLock::new();

fn load_gomp() {
    let path = PathBuf::from(std::env::var("BUDGET_NATIVE_GOMP").expect("set by the parent"));
    let lib = Lib::open(&path).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: the C prototypes of libgomp's `omp_get_max_threads`,
    // `omp_set_num_threads`, `omp_get_num_threads` and `GOMP_parallel` (GOMP_4.0);
    // the handle is never closed.
    let gomp = unsafe {
        Gomp {
            get_max_threads: lib.func("omp_get_max_threads"),
            set_num_threads: lib.func("omp_set_num_threads"),
            get_num_threads: lib.func("omp_get_num_threads"),
            parallel: lib.func("GOMP_parallel"),
        }
    };
    assert!(GOMP.set(gomp).is_ok(), "libgomp loaded once");
    let libs = budget::native::libraries();
    let found = libs
        .find(budget::native::Family::OpenMp)
        .unwrap_or_else(|| panic!("budget does not see the libgomp just loaded:\n{libs}"));
    assert!(found.is_supported(), "budget cannot set libgomp:\n{libs}");
}

fn gomp() -> &'static Gomp {
    GOMP.get().expect("libgomp is loaded first")
}

/// `omp_get_max_threads()` of the calling thread.
fn omp_max() -> c_int {
    // SAFETY: no preconditions; acts on the calling thread's ICVs.
    unsafe { (gomp().get_max_threads)() }
}

fn omp_set(n: c_int) {
    // SAFETY: as `omp_max`.
    unsafe { (gomp().set_num_threads)(n) }
}

/// Runs `omp_body` on an OpenMP team of the calling thread's count, each member running
/// `bodies` work bodies.
fn omp_team(bodies: usize) {
    // SAFETY: `omp_body` has the `void (*)(void *)` prototype and never unwinds; its
    // argument is the body count (an integer, never dereferenced); flags 0 is a plain
    // parallel region.
    unsafe { (gomp().parallel)(omp_body, bodies as *mut c_void, 0, 0) }
}

/// One OpenMP team member's work. Must not unwind (C calls it).
extern "C" fn omp_body(bodies: *mut c_void) {
    // SAFETY: inside a parallel region, no preconditions.
    let team = unsafe { (gomp().get_num_threads)() };
    MAX_TEAM.fetch_max(usize::try_from(team).unwrap_or(0), SeqCst);
    for _ in 0..bodies as usize {
        leaf(Kind::Native);
    }
}

// ---------------------------------------------------------------------------------
// The torture
// ---------------------------------------------------------------------------------

const OUTSIDE: usize = 12;
const ROUNDS: usize = 6;
const MAX_DEPTH: u32 = 3;
/// Items of each `par_iter`.
const PAR: usize = 6;
/// Bodies per thread of a region's own handle used from its tasks: long enough that
/// the threads of one such call overlap those of its siblings on a loaded machine.
const LONG: usize = 16;
/// One in this many injection points panics.
const PANIC_ODDS: u64 = 160;
/// The length of a work body. Bodies sleep rather than spin so that they overlap on
/// 2 cores the way bodies of that many running threads would.
const WORK: Duration = Duration::from_micros(100);
const SEED: u64 = 0x7042_7e57_0010;

/// What a leaf body is.
#[derive(Clone, Copy)]
enum Kind {
    Rayon = 0,
    Native = 1,
    ForEach = 2,
    Task = 3,
}

const KINDS: [&str; 4] = ["rayon", "openmp", "for_each", "task"];

/// Work bodies running now, the most ever, and how many ran of each kind.
static NOW: AtomicUsize = AtomicUsize::new(0);
static MAX: AtomicUsize = AtomicUsize::new(0);
static BODIES: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
static MAX_TEAM: AtomicUsize = AtomicUsize::new(0);
static ROUNDS_DONE: [AtomicUsize; OUTSIDE] = [const { AtomicUsize::new(0) }; OUTSIDE];
static ROUNDS_PANICKED: AtomicUsize = AtomicUsize::new(0);
static FAILURES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static ALL_DONE: Barrier = Barrier::new(OUTSIDE);
static TURN: Mutex<()> = Mutex::new(());

thread_local! {
    /// `native` calls and `limit` guards of the torture open on this thread: while
    /// any is, the thread's OpenMP count is theirs.
    static NATIVE_DEPTH: Cell<usize> = const { Cell::new(0) };
    /// The OpenMP count this thread has outside every native call (outside threads set
    /// their own); `None`: the process default.
    static BASELINE: Cell<Option<c_int>> = const { Cell::new(None) };
}

/// Marks a `native` call or `limit` guard of this thread while alive.
struct NativeDepth;

impl NativeDepth {
    fn enter() -> NativeDepth {
        NATIVE_DEPTH.with(|d| d.set(d.get() + 1));
        NativeDepth
    }
}

impl Drop for NativeDepth {
    fn drop(&mut self) {
        NATIVE_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

fn fail(what: String) {
    let mut failures = FAILURES.lock().unwrap_or_else(|e| e.into_inner());
    if failures.len() < 40 {
        failures.push(what);
    }
}

/// One work body: counted while it runs. Never nests (it calls nothing that runs
/// another body), so each thread adds at most one to `NOW`.
fn leaf(kind: Kind) {
    if !matches!(kind, Kind::Native) {
        check_thread_count();
    }
    // SeqCst: `NOW` is one total order of entries and exits; `MAX` sees every peak.
    let now = NOW.fetch_add(1, SeqCst) + 1;
    MAX.fetch_max(now, SeqCst);
    thread::sleep(WORK);
    NOW.fetch_sub(1, SeqCst);
    BODIES[kind as usize].fetch_add(1, SeqCst);
}

/// Outside every native call and guard of this thread, its OpenMP count is its own.
fn check_thread_count() {
    if NATIVE_DEPTH.with(Cell::get) > 0 {
        return;
    }
    let expected = BASELINE.with(Cell::get).unwrap_or(DEFAULT_OMP);
    let now = omp_max();
    assert_eq!(
        now,
        expected,
        "omp_get_max_threads() is {now} on {:?} outside every native call and limit \
         guard of that thread; its own count is {expected}: a count was not restored",
        thread::current().name().unwrap_or("an unnamed thread")
    );
}

/// The payload of an injected panic.
#[derive(Debug)]
struct Injected {
    thread: usize,
    round: usize,
}

/// One round of one outside thread.
struct Ctx {
    thread: usize,
    round: usize,
    /// Set just before an injected panic is thrown in this round.
    injected: AtomicBool,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn mix(a: u64, b: u64) -> u64 {
    splitmix(a ^ splitmix(b))
}

impl Ctx {
    /// A seeded choice in `0..n`, a pure function of (thread, round, site, what): the
    /// same tree and the same injected panics every run, whatever the interleaving.
    fn draw(&self, site: u64, what: u64, n: u64) -> u64 {
        let key = mix(mix(SEED, self.thread as u64), self.round as u64);
        mix(key, mix(site, what)) % n
    }

    /// Throws an injected panic if the seed picks `point` of `site`.
    fn maybe_panic(&self, site: u64, point: u64) {
        if self.draw(site, 1000 + point, PANIC_ODDS) == 0 {
            self.injected.store(true, SeqCst);
            panic::panic_any(Injected {
                thread: self.thread,
                round: self.round,
            });
        }
    }

    fn request(&self, site: u64) -> usize {
        [1, 2, 3, 4, 8][self.draw(site, 3, 5) as usize]
    }
}

/// A region's content: one of the two shapes, recursing below `MAX_DEPTH`.
fn node(ctx: &Ctx, s: &budget::Scope<'_>, depth: u32, site: u64) {
    let fan = 2 + ctx.draw(site, 2, 2) as usize;
    if ctx.draw(site, 1, 2) == 0 {
        shape_join(ctx, s, depth, site, fan);
    } else {
        shape_for_each(ctx, s, depth, site, fan);
    }
}

/// join → install → nested scope → native → for_each (→ recursion).
fn shape_join(ctx: &Ctx, s: &budget::Scope<'_>, depth: u32, site: u64, fan: usize) {
    s.join(
        || {
            ctx.maybe_panic(site, 0);
            s.install(|| {
                (0..PAR).into_par_iter().for_each(|k| {
                    leaf(Kind::Rayon);
                    if k == 0 {
                        nested_native(ctx, depth, site, fan);
                    }
                });
            });
        },
        || {
            leaf(Kind::Task);
            if ctx.draw(site, 4, 2) == 0 {
                guards(ctx, site);
            }
            ctx.maybe_panic(site, 1);
        },
    );
}

/// The nested scope of `shape_join`, opened on a rayon thread: native → for_each.
fn nested_native(ctx: &Ctx, depth: u32, site: u64, fan: usize) {
    budget::scope_with(ctx.request(site), |n| {
        n.native(|| {
            let _native = NativeDepth::enter();
            omp_team(1);
            ctx.maybe_panic(site, 2);
            n.for_each(0..fan, |j| {
                let site = mix(site, j as u64);
                leaf(Kind::ForEach);
                own_handle(ctx, n, site);
                if depth < MAX_DEPTH {
                    node(ctx, n, depth + 1, site);
                }
            });
        });
    });
}

/// for_each → scope → spawn + install (the task recursing).
fn shape_for_each(ctx: &Ctx, s: &budget::Scope<'_>, depth: u32, site: u64, fan: usize) {
    s.for_each(0..fan, |j| {
        let site = mix(site, j as u64);
        leaf(Kind::ForEach);
        own_handle(ctx, s, mix(site, 78));
        ctx.maybe_panic(site, 3);
        budget::scope_with(ctx.request(site), |n| {
            n.spawn(move |n| {
                leaf(Kind::Task);
                ctx.maybe_panic(site, 4);
                if depth < MAX_DEPTH {
                    node(ctx, n, depth + 1, mix(site, 77));
                }
            });
            n.install(|| (0..PAR).into_par_iter().for_each(|_| leaf(Kind::Rayon)));
            if ctx.draw(site, 5, 3) == 0 {
                guards(ctx, site);
            }
        });
    });
}

/// The region's own handle used from one of its tasks: these
/// must size themselves as the nested region the task is.
fn own_handle(ctx: &Ctx, n: &budget::Scope<'_>, site: u64) {
    use_handle(ctx, n, site, ctx.draw(site, 6, 3));
}

/// `n.install` (0), `n.native` (1) or nothing, then perhaps an injected panic (inside
/// the native call, so that it unwinds through the count's restore).
fn use_handle(ctx: &Ctx, n: &budget::Scope<'_>, site: u64, choice: u64) {
    handle_work(n, choice, LONG, || ctx.maybe_panic(site, 5));
}

/// `n.install` of `bodies` rayon bodies per thread of the region's request (0), or
/// `n.native` of an OpenMP team running `bodies` bodies per member, then `in_native`
/// (1), or nothing.
fn handle_work(n: &budget::Scope<'_>, choice: u64, bodies: usize, in_native: impl FnOnce()) {
    match choice {
        0 => n.install(|| {
            (0..bodies * n.requested())
                .into_par_iter()
                .for_each(|_| leaf(Kind::Rayon));
        }),
        1 => n.native(|| {
            let _native = NativeDepth::enter();
            omp_team(bodies);
            in_native();
        }),
        _ => {}
    }
}

/// Two `limit` guards, dropped in the order the seed picks: the count after both is
/// the count before.
fn guards(ctx: &Ctx, site: u64) {
    let _native = NativeDepth::enter();
    let before = omp_max();
    let a = 2 + ctx.draw(site, 7, 3) as usize; // 2..=4
    let b = a + 1 + ctx.draw(site, 8, 2) as usize; // differs from a
    let g1 = budget::native::limit(a);
    assert_eq!(omp_max() as usize, a, "limit({a}) did not set libgomp");
    let g2 = budget::native::limit(b);
    assert_eq!(omp_max() as usize, b, "limit({b}) did not set libgomp");
    let order = if ctx.draw(site, 9, 2) == 0 {
        drop(g2);
        assert_eq!(omp_max() as usize, a, "dropping the inner guard first");
        drop(g1);
        "inner first"
    } else {
        drop(g1);
        drop(g2);
        "outer first"
    };
    assert_eq!(
        omp_max(),
        before,
        "limit({a}) then limit({b}), dropped {order}: omp_get_max_threads() is not the \
         count before the guards"
    );
}

/// One outside thread: its own OpenMP count, then `ROUNDS` region trees.
fn outside_thread(index: usize) {
    let own = 10 + index as c_int; // distinct per thread, and from the process default
    omp_set(own);
    BASELINE.with(|b| b.set(Some(own)));
    for round in 0..ROUNDS {
        let ctx = Ctx {
            thread: index,
            round,
            injected: AtomicBool::new(false),
        };
        let root = mix(index as u64, round as u64);
        // Two threads ask for every core, the others for a few.
        let request = if index < 2 {
            usize::MAX
        } else {
            ctx.request(root)
        };
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            budget::scope_with(request, |s| {
                // The top region's own handle from all its tasks at once, then the tree.
                s.for_each(0..3, |j| {
                    use_handle(&ctx, s, mix(root, j as u64), j as u64 % 2)
                });
                node(&ctx, s, 0, root);
            });
        }));
        let what = format!("thread {index}, round {round}");
        let injected = ctx.injected.load(SeqCst);
        match outcome {
            Ok(()) if injected => fail(format!("{what}: a panic was injected but none surfaced")),
            Ok(()) => {}
            Err(payload) => match payload.downcast::<Injected>() {
                Ok(p) if p.thread == index && p.round == round && injected => {
                    ROUNDS_PANICKED.fetch_add(1, SeqCst);
                }
                Ok(p) => fail(format!(
                    "{what}: resumed a payload injected elsewhere: {p:?}"
                )),
                Err(other) => fail(format!(
                    "{what}: an unexpected panic surfaced: {}",
                    message(other.as_ref())
                )),
            },
        }
        let count = omp_max();
        if count != own {
            fail(format!(
                "{what}: omp_get_max_threads() is {count} after the round, was {own} before"
            ));
        }
        ROUNDS_DONE[index].fetch_add(1, SeqCst);
    }
    // The thread is outside every region again (the in-region flag came back through
    // every unwind): a region it opens takes a token for the thread itself. Checked
    // one thread at a time once every thread is done, so that `in_use` is this region's.
    ALL_DONE.wait();
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    budget::scope(|s| {
        let in_use = budget::stats().in_use;
        if in_use != s.width() {
            fail(format!(
                "thread {index}: after its rounds, its region of width {} holds {in_use} \
                 tokens: the thread still counts as inside a region",
                s.width()
            ));
        }
    });
}

fn torture_progress() -> String {
    let rounds: Vec<usize> = ROUNDS_DONE.iter().map(|r| r.load(SeqCst)).collect();
    let bodies: Vec<usize> = BODIES.iter().map(|b| b.load(SeqCst)).collect();
    format!(
        "rounds done per outside thread {rounds:?} (of {ROUNDS}); bodies {bodies:?}; running now {}",
        NOW.load(SeqCst)
    )
}

fn torture() {
    let done = watchdog("the torture", Duration::from_secs(120), torture_progress);
    load_gomp();
    let total = budget::stats().total;
    assert_eq!(
        omp_max(),
        DEFAULT_OMP,
        "OMP_NUM_THREADS is set by the parent"
    );

    // The real library is set: alone, a region's native call runs a team of its width.
    budget::scope_with(4, |s| {
        let width = s.width();
        assert_eq!(width, total.min(4));
        s.native(|| {
            assert_eq!(omp_max() as usize, width, "native set libgomp's count");
            MAX_TEAM.store(0, SeqCst);
            omp_team(1);
            assert_eq!(
                MAX_TEAM.load(SeqCst),
                width,
                "the OpenMP team has the width"
            );
        });
    });
    assert_eq!(omp_max(), DEFAULT_OMP, "native restored the count");

    // Alone, a region of the whole budget uses its own handle from all its tasks at once
    //: an outside thread that holds a token, nothing else running,
    // so the bound is the total itself. Three times, so that pools and teams exist.
    // The tasks wait (at most 1 s) for each other, so that their calls overlap.
    MAX.store(0, SeqCst);
    for _ in 0..3 {
        let arrived = AtomicUsize::new(0);
        budget::scope(|s| {
            let tasks = s.width().min(3);
            s.for_each(0..3, |j| {
                arrived.fetch_add(1, SeqCst);
                let until = Instant::now() + Duration::from_secs(1);
                while arrived.load(SeqCst) < tasks && Instant::now() < until {
                    thread::sleep(Duration::from_millis(1));
                }
                handle_work(s, j as u64 % 2, 4 * LONG, || ());
            });
        });
    }
    let alone_max = MAX.load(SeqCst);
    MAX.store(0, SeqCst);

    let threads: Vec<_> = (0..OUTSIDE)
        .map(|index| {
            thread::Builder::new()
                .name(format!("outside-{index}"))
                .spawn(move || outside_thread(index))
                .expect("spawning an outside thread")
        })
        .collect();
    for (index, handle) in threads.into_iter().enumerate() {
        if let Err(payload) = handle.join() {
            fail(format!(
                "outside thread {index} panicked outside its catch: {}",
                message(payload.as_ref())
            ));
        }
    }

    // Every token is back (a worker may still be leaving: poll briefly, then assert).
    let settle = Instant::now() + Duration::from_secs(10);
    while budget::stats().in_use != 0 && Instant::now() < settle {
        thread::sleep(Duration::from_millis(5));
    }
    done.set();
    let stats = budget::stats();
    let max = MAX.load(SeqCst);
    let bound = total + OUTSIDE.min(usize::try_from(stats.overcommit).unwrap_or(usize::MAX));
    let bodies: Vec<usize> = BODIES.iter().map(|b| b.load(SeqCst)).collect();
    let panicked = ROUNDS_PANICKED.load(SeqCst);
    println!(
        "torture: total {total}: at most {max} bodies at once (bound {bound} = total + \
         min({OUTSIDE}, overcommit {})); bodies {}; {panicked} of {} rounds panicked as \
         injected; largest OpenMP team {}",
        stats.overcommit,
        KINDS
            .iter()
            .zip(&bodies)
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        OUTSIDE * ROUNDS,
        MAX_TEAM.load(SeqCst)
    );
    println!("{stats}");

    let mut failures = FAILURES.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if stats.in_use != 0 {
        failures.push(format!("{} tokens still in use at the end", stats.in_use));
    }
    if stats.leased != 0 {
        failures.push(format!("{} tokens still held by leases", stats.leased));
    }
    println!("torture: total {total}: alone, at most {alone_max} bodies at once");
    if alone_max > total {
        failures.push(format!(
            "alone, a region's own handle used from its tasks ran {alone_max} work bodies at \
             once on a budget of {total}"
        ));
    }
    if max > bound {
        failures.push(format!(
            "{max} work bodies ran at once: more than the budget allows ({bound})"
        ));
    }
    // The run exercised what it claims (seeded, so these hold on every run).
    if bodies.contains(&0) {
        failures.push(format!(
            "some kind of body never ran: {bodies:?} ({KINDS:?})"
        ));
    }
    if panicked == 0 || panicked == OUTSIDE * ROUNDS {
        failures.push(format!(
            "{panicked} of {} rounds panicked: the seed must give both outcomes",
            OUTSIDE * ROUNDS
        ));
    }
    for failure in &failures {
        println!("FAILURE: {failure}");
    }
    assert!(
        failures.is_empty(),
        "torture at total {total}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------
// Payloads whose Drop panics
// ---------------------------------------------------------------------------------

/// A panic payload whose `Drop` panics (unless the thread is already unwinding, where
/// a panic would abort the process whatever budget does).
struct Bomb(&'static str);

impl Drop for Bomb {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("dropping the {} payload panics", self.0);
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Region {
    Spawn,
    ForEach,
}

/// The thread on which budget drops the second payload.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dropper {
    Caller,
    Worker,
}

/// Shared by the three tasks of a payload case.
struct Stage {
    caller: ThreadId,
    dropper: Dropper,
    /// Threads that entered a task (each thread's first `for_each` element).
    arrived: Mutex<Vec<ThreadId>>,
    workers_arrived: AtomicUsize,
    first_thrown: AtomicBool,
    second_thrown: AtomicBool,
    sentinel_done: AtomicBool,
}

static PAYLOAD_STEP: Mutex<&str> = Mutex::new("starting");

fn step(what: &'static str) {
    *PAYLOAD_STEP.lock().unwrap_or_else(|e| e.into_inner()) = what;
}

fn spin_until(condition: impl Fn() -> bool) {
    while !condition() {
        thread::sleep(Duration::from_millis(1));
    }
}

impl Stage {
    /// A task's body: once three threads (the caller and two workers) are inside, the
    /// first thrower throws, then the second (whose payload budget must drop), while
    /// the third, the sentinel, is still running.
    fn task(&self) {
        let me = thread::current().id();
        {
            let mut arrived = self.arrived.lock().unwrap();
            if arrived.contains(&me) {
                return; // a later for_each element of a thread already cast
            }
            arrived.push(me);
        }
        let worker = if me == self.caller {
            None
        } else {
            Some(self.workers_arrived.fetch_add(1, SeqCst))
        };
        step("waiting for three threads inside the region");
        spin_until(|| self.arrived.lock().unwrap().len() == 3);
        step("all three threads inside");
        // Roles: the second thrower's payload is the one budget drops.
        let (first, second) = match self.dropper {
            Dropper::Caller => (worker == Some(0), worker.is_none()),
            Dropper::Worker => (worker.is_none(), worker == Some(0)),
        };
        if first {
            self.first_thrown.store(true, SeqCst);
            panic::panic_any(Bomb("first"));
        }
        if second {
            spin_until(|| self.first_thrown.load(SeqCst));
            // Let the first payload be stored before this one (either order is a valid
            // test; this one puts the drop on the chosen thread).
            thread::sleep(Duration::from_millis(50));
            self.second_thrown.store(true, SeqCst);
            panic::panic_any(Bomb("second"));
        }
        // The sentinel: still running well after the second throw.
        spin_until(|| self.second_thrown.load(SeqCst));
        step("sentinel running after the second throw");
        thread::sleep(Duration::from_millis(300));
        self.sentinel_done.store(true, SeqCst);
    }
}

fn payload_progress() -> String {
    (*PAYLOAD_STEP.lock().unwrap_or_else(|e| e.into_inner())).to_owned()
}

fn payload(region: Region, dropper: Dropper) {
    let done = watchdog(
        "the drop-panicking payload case",
        Duration::from_secs(60),
        payload_progress,
    );
    let stage = Stage {
        caller: thread::current().id(),
        dropper,
        arrived: Mutex::new(Vec::new()),
        workers_arrived: AtomicUsize::new(0),
        first_thrown: AtomicBool::new(false),
        second_thrown: AtomicBool::new(false),
        sentinel_done: AtomicBool::new(false),
    };
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        budget::scope_with(3, |s| {
            assert_eq!(s.width(), 3, "the budget of 3 is free");
            match region {
                Region::Spawn => {
                    for _ in 0..3 {
                        s.spawn(|_| stage.task());
                    }
                }
                Region::ForEach => s.for_each(0..24, |_| stage.task()),
            }
        });
    }));
    // First thing after the scope: were all its tasks done?
    if !stage.sentinel_done.load(SeqCst) {
        eprintln!(
            "{region:?}, payload dropped on the {dropper:?}: the scope returned while a task \
             of the region was still running ({})",
            match &outcome {
                Ok(()) => "normally".to_owned(),
                Err(p) => format!("unwinding with {:?}", message(p.as_ref())),
            }
        );
        std::process::exit(EARLY);
    }
    done.set();
    match outcome {
        Ok(()) => panic!("the scope returned normally though two of its tasks panicked"),
        Err(payload) => {
            println!("payload: the scope resumed {:?}", message(payload.as_ref()));
            // Dropping a Bomb here would panic again: the test is done with it.
            std::mem::forget(payload);
        }
    }
    // The budget is whole and still works.
    assert_eq!(budget::stats().in_use, 0);
    let ran = AtomicUsize::new(0);
    budget::scope(|s| {
        for _ in 0..8 {
            s.spawn(|_| {
                ran.fetch_add(1, SeqCst);
            });
        }
    });
    assert_eq!(ran.into_inner(), 8);
    assert_eq!(budget::stats().in_use, 0);
    println!("payload: finished ({region:?}, second payload dropped on the {dropper:?})");
}

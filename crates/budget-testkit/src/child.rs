//! A test body in a child process of its own: the test binary again, with only that
//! test selected, after the child loaded the libraries it needs. Libraries of
//! different families never meet, and a hang is killed by the parent's watchdog.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::libs::{require_path, Lib};

/// The variable that marks a child process, holding the test's name.
const CHILD: &str = "BUDGET_TESTKIT_CHILD";

/// How long the parent waits for a child before killing it and failing: generous,
/// for a loaded 2-core machine (the longest child, 400 racing BLAS runs, takes
/// about 3 minutes there).
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(480);

/// Runs `body` in a child process after the child loaded the libraries named by
/// `keys` (in order; see [`require_path`]). The parent fails if the child fails,
/// hangs past [`CHILD_TIMEOUT`], or did not run exactly that one test. `test` is the
/// test function's name.
///
/// # Examples
///
/// ```no_run
/// #[test]
/// fn libgomp_is_there() {
///     budget_testkit::in_child("libgomp_is_there", &["BUDGET_NATIVE_GOMP"], |libs| {
///         assert!(libs[0].get_int("omp_get_max_threads") >= 1);
///     });
/// }
/// ```
pub fn in_child(test: &str, keys: &[&str], body: impl FnOnce(&[Lib])) {
    in_child_env(test, keys, &[], body)
}

/// [`in_child`] with extra environment variables for the child.
///
/// # Examples
///
/// ```no_run
/// budget_testkit::in_child_env("passive", &[], &[("OMP_WAIT_POLICY", "passive")], |_| {
///     assert_eq!(std::env::var("OMP_WAIT_POLICY").unwrap(), "passive");
/// });
/// ```
pub fn in_child_env(test: &str, keys: &[&str], env: &[(&str, &str)], body: impl FnOnce(&[Lib])) {
    if std::env::var(CHILD).as_deref() == Ok(test) {
        let loaded: Vec<Lib> = keys.iter().map(|k| Lib::load(k)).collect();
        body(&loaded);
        return;
    }
    for k in keys {
        require_path(k); // a clear message in the parent if a library is missing
    }
    let stdout = run(test, &[(CHILD, test)], &[], env);
    print!("{stdout}");
}

/// The variable that tells a test binary re-run by [`rerun`] which case to run.
pub const MODE: &str = "BUDGET_TEST_CHILD";

/// The case this process was re-run for by [`rerun`], if any.
///
/// # Examples
///
/// ```
/// assert_eq!(budget_testkit::child::mode(), None); // not a re-run child
/// ```
pub fn mode() -> Option<String> {
    std::env::var(MODE).ok()
}

/// Re-runs the test `test` of this binary as a child process with
/// `BUDGET_TEST_CHILD=mode` (read back with [`mode`]), without the parent's
/// `BUDGET_NUM_THREADS`, and with `env`; returns its stdout. The parent fails as
/// with [`in_child`]: the child failed, hung past [`CHILD_TIMEOUT`], or did not run
/// exactly that test.
///
/// # Examples
///
/// ```no_run
/// #[test]
/// fn child() {
///     match budget_testkit::child::mode().as_deref() {
///         None => {} // run directly: the parent tests below start it
///         Some("four") => println!("total {}", budget_core::stats().total),
///         Some(other) => panic!("unknown case {other}"),
///     }
/// }
///
/// #[test]
/// fn a_budget_of_four() {
///     let out = budget_testkit::child::rerun("child", "four", &[("BUDGET_NUM_THREADS", "4")]);
///     assert!(out.contains("total 4"));
/// }
/// ```
pub fn rerun(test: &str, mode: &str, env: &[(&str, &str)]) -> String {
    run(test, &[(MODE, mode)], &["BUDGET_NUM_THREADS"], env)
}

pub use crate::watch::exit_after;

/// Runs the test binary again with only `test` selected, `marks` and `env` set and
/// `unset` removed; returns its stdout, or fails (see [`in_child`]).
fn run(test: &str, marks: &[(&str, &str)], unset: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = test_command(test);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    for k in unset {
        cmd.env_remove(k);
    }
    for (k, v) in marks.iter().chain(env) {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("cannot start the child test process");
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = read(Box::new(child.stdout.take().expect("piped")));
    let err = read(Box::new(child.stderr.take().expect("piped")));
    let status = wait_or_kill(&mut child, CHILD_TIMEOUT);
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    let Some(status) = status else {
        panic!(
            "child for {test} hung for {CHILD_TIMEOUT:?} and was killed:\n--- stdout\n{stdout}\n\
             --- stderr\n{stderr}"
        );
    };
    assert!(
        status.success(),
        "child for {test} failed ({status}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "child for {test} did not run the test:\n{stdout}\n{stderr}"
    );
    stdout
}

/// The test binary again, running only `test` (`--exact`, one thread, output shown):
/// how every child-process test of the workspace starts its children.
///
/// # Examples
///
/// ```
/// let command = budget_testkit::child::test_command("some_test");
/// assert!(command.get_args().any(|a| a == "--exact"));
/// ```
pub fn test_command(test: &str) -> Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = Command::new(exe);
    command.args([test, "--exact", "--nocapture", "--test-threads=1"]);
    command
}

/// Waits for `child` at most `limit`; kills it (and reaps it) and returns `None`
/// when it runs longer.
///
/// # Examples
///
/// ```
/// # #[cfg(unix)] {
/// use std::time::Duration;
/// let mut child = std::process::Command::new("true").spawn().unwrap();
/// let status = budget_testkit::child::wait_or_kill(&mut child, Duration::from_secs(20));
/// assert!(status.unwrap().success());
/// # }
/// ```
pub fn wait_or_kill(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

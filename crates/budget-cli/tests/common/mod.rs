//! Shared pieces of the process tests: the probe and `budget` binaries, a
//! watchdog, children with deadlines, and the probe logs.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Once;
use std::time::{Duration, Instant};

pub fn probe() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_budget-probe"));
    clean_env(&mut cmd);
    cmd
}

pub fn budget() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_budget"));
    clean_env(&mut cmd);
    cmd
}

pub fn probe_path() -> &'static str {
    env!("CARGO_BIN_EXE_budget-probe")
}

/// No inherited jobserver or node budget: each test sets what it tests.
pub fn clean_env(cmd: &mut Command) {
    for var in [
        "MAKEFLAGS",
        "CARGO_MAKEFLAGS",
        "MFLAGS",
        "BUDGET_NODE",
        "BUDGET_TOKEN_LOG",
        "BUDGET_JOBSERVER",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("BUDGET_NUM_THREADS", "2");
}

/// Exits the whole test binary, with a message, if it runs longer than `secs`
/// (testkit's one watchdog, started once per binary).
pub fn watchdog(secs: u64) {
    static START: Once = Once::new();
    START.call_once(|| budget_testkit::watch::exit_after("the process tests", secs));
}

/// Runs the tests of one binary one at a time: each starts processes that compute on
/// both cores and asserts on widths, which tests running beside it would distort.
pub use budget_testkit::budget::serial;

/// Waits for `child`, killing it and panicking after `secs`.
pub fn wait_for(child: &mut Child, secs: u64, what: &str) -> ExitStatus {
    budget_testkit::child::wait_or_kill(child, Duration::from_secs(secs))
        .unwrap_or_else(|| panic!("{what} did not finish within {secs} s"))
}

pub fn now_ns() -> u64 {
    // SAFETY: timespec is plain data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A fresh directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("budget-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// One line of a probe log: `<ns> <pid> <what...>`.
#[derive(Debug, Clone)]
pub struct Line {
    pub ns: u64,
    pub pid: u32,
    pub words: Vec<String>,
}

pub fn read_log(path: &Path) -> Vec<Line> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<Line> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let ns = w.next()?.parse().ok()?;
            let pid = w.next()?.parse().ok()?;
            Some(Line {
                ns,
                pid,
                words: w.map(str::to_owned).collect(),
            })
        })
        .collect();
    lines.sort_by_key(|l| l.ns);
    lines
}

/// The value after `key` in a line (`held 2` → 2).
pub fn field(line: &Line, key: &str) -> Option<usize> {
    let i = line.words.iter().position(|w| w == key)?;
    line.words.get(i + 1)?.parse().ok()
}

/// The most of `key` (from `held`/`ext` lines) held at once across processes,
/// each process counted from its first such line to its `done` (or `exit`) line.
pub fn peak_sum(lines: &[Line], key: &str) -> usize {
    let mut now: HashMap<u32, usize> = HashMap::new();
    let mut peak = 0;
    for line in lines {
        let first = line.words.first().map(String::as_str);
        if first == Some("done") || first == Some("exit") {
            now.remove(&line.pid);
        } else if first == Some("held") {
            if let Some(v) = field(line, key) {
                now.insert(line.pid, v);
            }
        }
        peak = peak.max(now.values().sum());
    }
    peak
}

/// The `done` lines: (pid, widest, held, in_use).
pub fn dones(lines: &[Line]) -> Vec<(u32, usize, usize, usize)> {
    lines
        .iter()
        .filter(|l| l.words.first().map(String::as_str) == Some("done"))
        .map(|l| {
            (
                l.pid,
                field(l, "widest").unwrap_or(0),
                field(l, "held").unwrap_or(0),
                field(l, "in_use").unwrap_or(usize::MAX),
            )
        })
        .collect()
}

/// Fails with what to install when GNU make is missing.
pub fn make_available() {
    let ok = Command::new("make")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "GNU make is missing: run scripts/setup.sh (it installs the Debian package `make`)"
    );
}

/// Makes a fifo jobserver holding `bytes` tokens, as make 4.4 does.
pub struct Fifo {
    pub path: std::path::PathBuf,
    pub file: std::fs::File,
}

impl Fifo {
    pub fn new(dir: &std::path::Path, bytes: usize) -> Fifo {
        let path = dir.join("jobserver.fifo");
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        file.write_all(&vec![b'+'; bytes]).unwrap();
        Fifo { path, file }
    }

    pub fn available(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int into `n`, on our open fifo.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::FIONREAD, &mut n) };
        assert_eq!(rc, 0);
        n as usize
    }

    /// `MAKEFLAGS` for a make of `-j3` on this fifo.
    pub fn makeflags(&self) -> String {
        self.makeflags_j(3)
    }

    /// `MAKEFLAGS` for a make of `-jJOBS` on this fifo.
    pub fn makeflags_j(&self, jobs: usize) -> String {
        format!("-j{jobs} --jobserver-auth=fifo:{}", self.path.display())
    }
}

/// A node budget file of `tokens` for one test, removed on drop.
pub struct NodeFile(pub PathBuf);

impl NodeFile {
    pub fn new(name: &str, tokens: usize) -> NodeFile {
        let path = budget_core::node::directory()
            .unwrap()
            .join(format!("test-{name}-{}.node", std::process::id()));
        let _ = std::fs::remove_file(&path);
        assert_eq!(budget_core::node::create(&path, tokens).unwrap(), tokens);
        NodeFile(path)
    }
}

impl Drop for NodeFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Polls `done` every 2 ms, failing with `what` after `secs`.
pub fn wait_until(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A node budget of 2 tokens for one test, and a probe (`hold`) that holds both in a
/// region until killed; returns once it does.
pub fn holder_of_two(dir: &Path, name: &str) -> (NodeFile, Child) {
    let node = NodeFile::new(name, 2);
    let ready = dir.join("ready");
    let holder = probe()
        .env("BUDGET_NODE", &node.0)
        .arg("hold")
        .arg(&ready)
        .spawn()
        .unwrap();
    wait_until(30, "the holder to reach width 2", || ready.exists());
    (node, holder)
}

/// A probe (`grow WIDTH LOG`) joined to the node budget `node`: one region of short
/// tasks until it reaches `width`, logging each width it reaches to `log`.
pub fn grower(node: &NodeFile, width: usize, log: &Path) -> Child {
    probe()
        .env("BUDGET_NODE", &node.0)
        .arg("grow")
        .arg(width.to_string())
        .arg(log)
        .spawn()
        .unwrap()
}

/// The widths a `grow` (or `regions`) probe logged to `log`, in order.
pub fn widths(log: &Path) -> Vec<usize> {
    read_log(log)
        .iter()
        .filter_map(|l| field(l, "width"))
        .collect()
}

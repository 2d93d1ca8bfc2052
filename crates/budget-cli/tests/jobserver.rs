//! GNU make's jobserver, joined by budget-enabled processes: under real make 4.3
//! (pipe form), a fifo jobserver the test makes itself (make 4.4's form), and a
//! pipe made with the `jobserver` crate; tokens come back when regions end, after a
//! panic and at exit.
#![cfg(unix)]

mod common;

use std::os::unix::process::CommandExt;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn make_j2_runs_three_plus_recipes_on_two_tokens() {
    watchdog(240);
    let _serial = serial();
    make_available();
    let dir = temp_dir("make-pipe");
    let log = dir.join("log");
    let probe = probe_path();
    // a and b run side by side; c, longer, starts when one of them ends and then
    // runs alone: it must grow to both tokens.
    let makefile = format!(
        "all: a b c\n\
         a b:\n\t+{probe} regions 6 16 2000 {log} > $@.out\n\
         c:\n\t+{probe} regions 40 16 2000 {log} > $@.out\n",
        log = log.display()
    );
    std::fs::write(dir.join("Makefile"), makefile).unwrap();
    let mut cmd = Command::new("make");
    clean_env(&mut cmd);
    cmd.env("BUDGET_TOKEN_LOG", &log)
        .args(["-s", "-j2", "-C"])
        .arg(&dir)
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("make");
    let status = wait_for(&mut child, 120, "make -j2");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "make failed: {stderr}");
    assert!(!stderr.contains("jobserver"), "make complained: {stderr}");
    let lines = read_log(&log);
    let starts: Vec<_> = lines
        .iter()
        .filter(|l| l.words.first().map(String::as_str) == Some("start"))
        .collect();
    assert_eq!(starts.len(), 3, "{lines:#?}");
    assert!(
        starts
            .iter()
            .all(|l| l.words.join(" ").contains("Jobserver")),
        "every recipe joins make's jobserver: {starts:#?}"
    );
    let peak = peak_sum(&lines, "held");
    assert!(
        peak <= 2,
        "more than make's 2 tokens held at once: {peak}\n{lines:#?}"
    );
    let dones = dones(&lines);
    assert_eq!(dones.len(), 3);
    for (pid, _, held, in_use) in &dones {
        assert_eq!(
            (*held, *in_use),
            (1, 0),
            "pid {pid} kept tokens after its regions ended: {lines:#?}"
        );
    }
    let c_pid = starts[2].pid;
    let c = dones.iter().find(|d| d.0 == c_pid).unwrap();
    assert_eq!(c.1, 2, "the recipe running alone grew to 2: {lines:#?}");
}

fn run_probe(env: &[(&str, String)], mode: &str, log: &std::path::Path) -> String {
    let mut cmd = probe();
    cmd.env("BUDGET_NUM_THREADS", "3")
        .env("BUDGET_TOKEN_LOG", log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let log_s = log.display().to_string();
    cmd.args(["regions", "12", "24", "2000", &log_s, mode])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let status = wait_for(&mut child, 60, "probe");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "probe {mode} failed");
    out
}

#[test]
fn fifo_jobserver_tokens_come_back_after_regions_panic_and_exit() {
    watchdog(240);
    let _serial = serial();
    let dir = temp_dir("fifo");
    let fifo = Fifo::new(&dir, 2);
    let env = [("MAKEFLAGS", fifo.makeflags())];
    for mode in ["", "panic", "exit"] {
        let log = dir.join(format!("log-{mode}"));
        run_probe(&env, mode, &log);
        let lines = read_log(&log);
        assert!(
            lines[0].words.join(" ").contains("fifo:"),
            "joined the fifo jobserver: {lines:#?}"
        );
        let widest = lines.iter().filter_map(|l| field(l, "held")).max().unwrap();
        assert_eq!(
            widest, 3,
            "alone, the probe took both fifo tokens ({mode}): {lines:#?}"
        );
        assert_eq!(
            fifo.available(),
            2,
            "both tokens back in the fifo after {mode:?}"
        );
        if mode == "exit" {
            assert!(lines.iter().any(|l| l.words[0] == "exit"), "{lines:#?}");
        } else {
            let d = dones(&lines);
            assert_eq!((d[0].2, d[0].3), (1, 0), "{mode}: {lines:#?}");
        }
    }
}

#[test]
fn fifo_jobserver_two_processes_share_three_tokens() {
    watchdog(240);
    let _serial = serial();
    let dir = temp_dir("fifo-two");
    let fifo = Fifo::new(&dir, 2);
    // As make would: the second process runs on a token the "make" (we) took.
    let mut byte = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut &fifo.file, &mut byte).unwrap(), 1);
    let log = dir.join("log");
    let env = [("MAKEFLAGS", fifo.makeflags())];
    std::thread::scope(|s| {
        let a = s.spawn(|| run_probe(&env, "", &log));
        let b = s.spawn(|| run_probe(&env, "", &log));
        a.join().unwrap();
        b.join().unwrap();
    });
    let lines = read_log(&log);
    let peak = peak_sum(&lines, "held");
    assert!(peak <= 3, "3 tokens, {peak} held at once: {lines:#?}");
    assert!(peak >= 2, "both processes ran: {lines:#?}");
    assert_eq!(fifo.available(), 1, "the free token is back");
    (&fifo.file).write_all(&byte).unwrap();
}

#[test]
fn pipe_jobserver_tokens_come_back_after_panic_and_exit() {
    watchdog(240);
    let _serial = serial();
    let dir = temp_dir("pipe");
    let client = jobserver::Client::new(2).unwrap();
    let mut probe_env = Command::new("true");
    client.configure_make(&mut probe_env);
    let env: Vec<(&str, String)> = probe_env
        .get_envs()
        .filter(|(k, _)| *k == "MAKEFLAGS")
        .map(|(_, v)| ("MAKEFLAGS", v.unwrap().to_string_lossy().into_owned()))
        .collect();
    for mode in ["panic", "exit", ""] {
        let log = dir.join(format!("log-{mode}"));
        // The fds must be inherited: configure() clears CLOEXEC in the child.
        let mut cmd = probe();
        client.configure_make(&mut cmd);
        cmd.env("BUDGET_NUM_THREADS", "3")
            .env("BUDGET_TOKEN_LOG", &log);
        let log_s = log.display().to_string();
        cmd.args(["regions", "12", "24", "2000", &log_s, mode]);
        let mut child = cmd.spawn().unwrap();
        assert!(wait_for(&mut child, 60, "probe").success());
        let lines = read_log(&log);
        assert!(
            lines[0].words.join(" ").contains("Jobserver"),
            "{lines:#?} {env:?}"
        );
        let widest = lines.iter().filter_map(|l| field(l, "held")).max().unwrap();
        assert_eq!(widest, 3, "{mode}: {lines:#?}");
        assert_eq!(client.available().unwrap(), 2, "tokens back after {mode:?}");
    }
}

#[test]
fn a_jobserver_variable_that_points_nowhere_warns_once_and_falls_back() {
    watchdog(240);
    let _serial = serial();
    let dir = temp_dir("bad-js");
    let log = dir.join("log");
    let log_s = log.display().to_string();
    // A process group of its own: the warning is given once per group (tree).
    let out = probe()
        .process_group(0)
        .env("MAKEFLAGS", "-j4 --jobserver-auth=97,98")
        .args(["regions", "4", "16", "1000", &log_s])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("ignoring the jobserver").count(),
        1,
        "one warning: {stderr}"
    );
    let lines = read_log(&log);
    assert!(lines[0].words.join(" ").contains("Local"), "{lines:#?}");
    assert_eq!(dones(&lines)[0].1, 2, "the local budget: width 2");
}

/// `fifo:PATH` naming a regular file or `/dev/null` is no jobserver: the process
/// warns once, keeps its own budget, and the file is never read or written.
#[test]
fn a_fifo_path_that_is_not_a_fifo_is_never_touched() {
    watchdog(240);
    let _serial = serial();
    let dir = temp_dir("not-fifo");
    let file = dir.join("regular");
    std::fs::write(&file, "abcdefghij").unwrap();
    for path in [file.display().to_string(), "/dev/null".to_owned()] {
        let log = dir.join("log");
        let _ = std::fs::remove_file(&log);
        let log_s = log.display().to_string();
        let out = probe()
            .process_group(0)
            .env("MAKEFLAGS", format!("-j3 --jobserver-auth=fifo:{path}"))
            .args(["regions", "4", "16", "1000", &log_s])
            .output()
            .unwrap();
        assert!(out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.matches("is not a fifo").count(), 1, "{stderr}");
        let lines = read_log(&log);
        assert!(lines[0].words.join(" ").contains("Local"), "{lines:#?}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "abcdefghij");
    }
}

/// make 4.3 gives every recipe not marked `+` a `MAKEFLAGS` naming descriptors it
/// closed: each such budget-enabled recipe used to print the same four-line warning
/// (hundreds in a big build). Now the first process of the tree (its process group)
/// says it, once.
#[test]
fn a_build_of_plain_recipes_warns_once() {
    watchdog(240);
    let _serial = serial();
    make_available();
    let dir = temp_dir("warn-once");
    let mut makefile = String::from("all: r1 r2 r3 r4\n");
    for i in 1..=4 {
        makefile.push_str(&format!(
            "r{i}:\n\t{} fixed 1 0 > /dev/null\n",
            probe_path()
        ));
    }
    std::fs::write(dir.join("Makefile"), makefile).unwrap();
    let out = Command::new("make")
        .process_group(0)
        .args(["-s", "-j2", "-C"])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("ignoring the jobserver").count(),
        1,
        "one warning for the build: {stderr}"
    );
}

/// A child forked while other threads of a jobserver-joined process take and give
/// tokens starts its region and ends: the jobserver state is per process, never a
/// lock copied from the parent in the state a thread of the parent left it (that
/// copy stayed locked: 10 of the first 155 children hung in
/// `crates/budget-core/examples/fork_hunt.rs`, where 1 fork of 700 hung); nor a
/// `OnceLock` copied half made (the clock calibration: 1 in ~3,000). Two threads of
/// each child start its budget at once: the second copy's handshake read a shared
/// object its maker had not sized yet (SIGBUS, 2–5 of 5,000).
#[test]
fn children_forked_under_a_jobserver_never_hang() {
    watchdog(240);
    let _serial = serial();
    let client = jobserver::Client::new(2).unwrap();
    let mut cmd = probe();
    client.configure_make(&mut cmd);
    cmd.env("BUDGET_NUM_THREADS", "3").args(["forks", "600"]);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("forks 600 hung 0 failed 0"), "{stdout}");
    assert_eq!(client.available().unwrap(), 2, "tokens back");
}

#[test]
fn budget_jobserver_0_turns_joining_off() {
    watchdog(240);
    let _serial = serial();
    let dir = temp_dir("js-off");
    let fifo = Fifo::new(&dir, 2);
    let log = dir.join("log");
    let log_s = log.display().to_string();
    let out = probe()
        .env("MAKEFLAGS", fifo.makeflags())
        .env("BUDGET_JOBSERVER", "0")
        .args(["regions", "2", "8", "500", &log_s])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines = read_log(&log);
    assert!(lines[0].words.join(" ").contains("Local"), "{lines:#?}");
    assert_eq!(fifo.available(), 2);
}

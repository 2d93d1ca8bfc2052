//! A region's width at entry in a process that shares an outside budget: a lone
//! process under `budget run`, with `BUDGET_NODE=1`, or under a jobserver with free
//! tokens (make 4.4's fifo form, which the test makes, and make 4.3's pipe form in a
//! `+` recipe) takes the free tokens when each region starts, without waiting, so a
//! call whose width is fixed at entry (`s.native` around a BLAS call) gets the whole
//! budget; and `stats()` says when other processes narrowed a region.
#![cfg(unix)]

mod common;

use std::process::{Command, Stdio};

use common::*;

/// Runs `budget-probe fixed 3 200` (three regions 200 ms apart, each one `s.native`
/// dgemm on Debian's OpenBLAS) as `cmd` sets it up; returns each region's (width,
/// `openblas_get_num_threads()` inside its call) and the probe's stats line.
fn fixed(mut cmd: Command, what: &str) -> (Vec<(usize, usize)>, String) {
    let blas = budget_testkit::libs::require_path("BUDGET_NATIVE_OPENBLAS_PTHREAD");
    cmd.env("BUDGET_PROBE_OPENBLAS", blas)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let status = wait_for(&mut child, 60, what);
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{what} failed: {out}\n{err}");
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("fixed "))
        .unwrap_or_else(|| panic!("{what}: no widths in {out:?} {err}"));
    let widths = line
        .trim_matches(|c| c == '[' || c == ']')
        .split("), (")
        .map(|pair| {
            let mut n = pair
                .trim_matches(|c| c == '(' || c == ')')
                .split(", ")
                .map(|x| x.parse::<usize>().unwrap());
            (n.next().unwrap(), n.next().unwrap())
        })
        .collect();
    let stats = out
        .lines()
        .find(|l| l.starts_with("stats "))
        .unwrap_or_default()
        .to_owned();
    println!("{what}: {widths:?}\n  {stats}");
    (widths, stats)
}

fn probe_fixed() -> Command {
    let mut cmd = probe();
    cmd.args(["fixed", "3", "200"]);
    cmd
}

fn assert_full(widths: &[(usize, usize)], what: &str) {
    assert_eq!(
        widths,
        [(2, 2); 3],
        "{what}: every region and call at width 2"
    );
}

#[test]
fn alone_without_an_outside_budget() {
    watchdog(240);
    let _serial = serial();
    let (widths, _) = fixed(probe_fixed(), "the probe alone");
    assert_full(&widths, "alone");
}

#[test]
fn alone_under_budget_run() {
    watchdog(240);
    let _serial = serial();
    let mut cmd = budget();
    cmd.args(["run", "-j", "2", "--", probe_path(), "fixed", "3", "200"]);
    let (widths, stats) = fixed(cmd, "budget run -j 2 -- probe");
    assert_full(&widths, "under budget run -j 2");
    assert!(stats.contains("grants_below_request: 0"), "{stats}");
}

#[test]
fn alone_with_budget_node_1() {
    watchdog(240);
    let _serial = serial();
    // A private runtime directory: the node file of this CPU set is this test's alone.
    let dir = temp_dir("entry-node");
    let mut cmd = probe_fixed();
    cmd.env("BUDGET_NODE", "1").env("XDG_RUNTIME_DIR", &dir);
    let (widths, _) = fixed(cmd, "BUDGET_NODE=1 probe");
    assert_full(&widths, "with BUDGET_NODE=1");
}

#[test]
fn alone_under_a_fifo_jobserver_with_free_tokens() {
    watchdog(240);
    let _serial = serial();
    let dir = temp_dir("entry-fifo");
    let fifo = Fifo::new(&dir, 1); // make -j2: one byte, and the implicit token
    let mut cmd = probe_fixed();
    cmd.env("MAKEFLAGS", fifo.makeflags_j(2));
    let (widths, _) = fixed(cmd, "probe under a fifo jobserver of -j2");
    assert_full(&widths, "under a fifo jobserver");
    assert_eq!(fifo.available(), 1, "the byte is back in the fifo");
}

/// make 4.3 hands a `+` recipe the pipe's descriptors; the `jobserver` crate reopens
/// them through `/dev/fd` (a file description of its own, so make's stay blocking)
/// and reads without blocking there: the recipe takes the free byte at entry.
#[test]
fn alone_in_a_plus_recipe_of_make_4_3() {
    watchdog(240);
    let _serial = serial();
    make_available();
    let dir = temp_dir("entry-make");
    let out = dir.join("out");
    std::fs::write(
        dir.join("Makefile"),
        format!(
            "all:\n\t+{} fixed 3 200 > {}\n",
            probe_path(),
            out.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("make");
    clean_env(&mut cmd);
    cmd.args(["-s", "-j2", "-C"]).arg(&dir);
    cmd.env(
        "BUDGET_PROBE_OPENBLAS",
        budget_testkit::libs::require_path("BUDGET_NATIVE_OPENBLAS_PTHREAD"),
    );
    let status = cmd.status().unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&out).unwrap();
    println!("{text}");
    assert!(
        text.contains("fixed [(2, 2), (2, 2), (2, 2)]"),
        "a `+` recipe of make -j2 at width 2: {text}"
    );
}

/// While another process holds every node token, a region gets width 1, and
/// `stats()` counts it as narrowed by other processes.
#[test]
fn narrowed_by_other_processes_is_counted() {
    watchdog(240);
    let _serial = serial();
    let dir = temp_dir("entry-narrowed");
    let (node, mut holder) = holder_of_two(&dir, "entry-narrowed");
    let mut cmd = probe();
    cmd.args(["fixed", "1", "0"]).env("BUDGET_NODE", &node.0);
    let (widths, stats) = fixed(cmd, "a probe beside a holder of both tokens");
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(widths[0].0, 1, "{widths:?}");
    assert!(stats.contains("narrowed_by_processes: 1"), "{stats}");
}

/// OpenBLAS's workers spin ~0.1 s after a wide call (2^28 cycles). In a process that
/// shares a node budget, the call's tokens stay with the process until then, kept
/// from other processes (whose threads the spinning workers would slow), while the
/// process's own next region still gets them.
#[test]
fn spinning_workers_keep_their_tokens_from_other_processes() {
    watchdog(240);
    let _serial = serial();
    let node = NodeFile::new("entry-spinhold", 2);
    let mut cmd = probe();
    cmd.arg("spinhold")
        .env("BUDGET_NODE", &node.0)
        .env(
            "BUDGET_PROBE_OPENBLAS",
            budget_testkit::libs::require_path("BUDGET_NATIVE_OPENBLAS_PTHREAD"),
        )
        .stdout(Stdio::piped());
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(out.status.success());
    let word = |key: &str| -> usize {
        let words: Vec<&str> = text.split_whitespace().collect();
        let i = words.iter().position(|w| *w == key).unwrap();
        words[i + 1].trim_end_matches(',').parse().unwrap()
    };
    assert_eq!(word("call"), 2, "the call ran at width 2");
    assert_eq!(
        word("width"),
        2,
        "the next region of this process is not narrowed"
    );
    // The window is 2^28 cycles at 2 GHz (134 ms) from the call's end; without the
    // hold the tokens went back after the linger (2-4 ms).
    assert!(
        word("for") >= 100,
        "the tokens were kept through the window: {text}"
    );
}

/// `BUDGET_NODE=1` after a process that counted 1 core (Slurm's
/// `--cpus-per-task=1`) on the same CPU set: a lone process still gets its whole
/// budget (the file is per core count), and two Slurm jobs do not share a file.
#[test]
fn budget_node_1_files_are_per_core_count_and_slurm_job() {
    watchdog(240);
    let _serial = serial();
    let dir = temp_dir("entry-node-size");
    let one = probe()
        .args(["fixed", "1", "0"])
        .env("XDG_RUNTIME_DIR", &dir)
        .env("BUDGET_NODE", "1")
        .env("SLURM_CPUS_PER_TASK", "1")
        .env_remove("BUDGET_NUM_THREADS")
        .output()
        .unwrap();
    assert!(one.status.success(), "{one:?}");
    let mut cmd = probe_fixed();
    cmd.env("XDG_RUNTIME_DIR", &dir).env("BUDGET_NODE", "1");
    let (widths, _) = fixed(cmd, "BUDGET_NODE=1 after a 1-core process");
    assert_full(&widths, "after a 1-core process on the same CPU set");
    for job in ["11", "12"] {
        let out = probe()
            .args(["fixed", "1", "0"])
            .env("XDG_RUNTIME_DIR", &dir)
            .env("BUDGET_NODE", "1")
            .env("SLURM_JOB_ID", job)
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let names: Vec<String> = std::fs::read_dir(dir.join("budget"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".node"))
        .collect();
    assert_eq!(names.len(), 4, "1 core, 2 cores, job 11, job 12: {names:?}");
}

/// `--static-env K` gives K threads to the programs in the tree that are not
/// budget-enabled; a budget-enabled one ignores the counts `budget run` set and keeps
/// its dynamic widths: its regions and the BLAS calls in them run at 2 under
/// `--static-env 1`.
#[test]
fn static_env_leaves_budget_enabled_programs_dynamic() {
    watchdog(240);
    let _serial = serial();
    let mut cmd = budget();
    cmd.args(["run", "-j", "2", "--static-env", "1", "--", probe_path()])
        .args(["fixed", "3", "200"]);
    let (widths, _) = fixed(cmd, "budget run -j 2 --static-env 1 -- probe");
    assert_full(&widths, "under budget run --static-env 1");
}

/// A count set inside the tree after `budget run` (here `OPENBLAS_NUM_THREADS=1` over
/// `--static-env 2`) is the user's: it still caps the library it names.
#[test]
fn a_count_changed_inside_a_static_env_tree_still_caps() {
    watchdog(240);
    let _serial = serial();
    let mut cmd = budget();
    cmd.args(["run", "-j", "2", "--static-env", "2", "--", "env"])
        .arg("OPENBLAS_NUM_THREADS=1")
        .args([probe_path(), "fixed", "3", "200"]);
    let (widths, _) = fixed(
        cmd,
        "budget run --static-env 2 -- env OPENBLAS_NUM_THREADS=1 probe",
    );
    assert_eq!(
        widths,
        [(2, 1); 3],
        "regions at 2, OpenBLAS capped at the user's 1"
    );
}

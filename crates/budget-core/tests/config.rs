//! Configuration of the budget's total, each case in a child process of its own (a
//! process has one budget, fixed at first use): `BUDGET_NUM_THREADS` (good and bad
//! values), the affinity mask (`taskset`), Slurm's `SLURM_CPUS_PER_TASK`, the
//! `Builder`'s errors, and `budget_core::detect()`'s report of which source set the total.
//!
//! The parent re-runs this test binary as `<exe> --exact child --nocapture` with
//! `BUDGET_CONFIG_CHILD=<mode>`; the `child` test does what the mode says, prints
//! `KEY=value` lines and asserts on its own side too. Run without that variable (as
//! part of the normal suite), `child` does nothing. No parent test starts the
//! budget: `budget_core::available_cores()` only detects.

use std::process::{Command, Output};
use std::sync::{Arc, Barrier};

const MODE: &str = "BUDGET_CONFIG_CHILD";
const ENV: &str = "BUDGET_NUM_THREADS";
const SLURM: &str = "SLURM_CPUS_PER_TASK";

/// What a child printed and how it ended.
struct Child {
    output: Output,
}

impl Child {
    /// Fails, showing the child's output, unless its stdout contains `text`.
    fn says(&self, text: &str) {
        assert!(
            self.stdout().contains(text),
            "no {text:?} in:\n{}",
            self.describe()
        );
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// What the child printed after `KEY=` (libtest may print "test child ... " on
    /// the same line first).
    fn after(&self, key: &str) -> String {
        let marker = format!("{key}=");
        let stdout = self.stdout();
        match stdout.split_once(&marker) {
            Some((_, rest)) => rest.to_string(),
            None => panic!("the child printed no {marker}\n{}", self.describe()),
        }
    }

    /// The number the child printed after `KEY=`.
    fn value(&self, key: &str) -> usize {
        let after = self.after(key);
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("bad {key}= value in {after:?}"))
    }

    /// The word the child printed after `KEY=` (letters, digits and `_`).
    fn word(&self, key: &str) -> String {
        self.after(key)
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    }

    /// stderr lines that name the variable: the warnings.
    fn warnings(&self) -> Vec<String> {
        self.stderr()
            .lines()
            .filter(|l| l.contains(ENV))
            .map(str::to_owned)
            .collect()
    }

    fn describe(&self) -> String {
        format!(
            "status: {}\n--- stdout\n{}--- stderr\n{}",
            self.output.status,
            self.stdout(),
            self.stderr()
        )
    }
}

/// Runs the `child` test of this binary in `mode`; `env` is `BUDGET_NUM_THREADS`
/// (`None`: unset); `wrap` is a command (and its arguments) to run it under.
fn run_child(mode: &str, env: Option<&str>, wrap: &[&str]) -> Child {
    run_child_with(mode, env, wrap, &[])
}

/// [`run_child`] with more variables set in the child.
fn run_child_with(mode: &str, env: Option<&str>, wrap: &[&str], vars: &[(&str, &str)]) -> Child {
    let exe = std::env::current_exe().expect("the path of this test binary");
    let mut command = match wrap.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    command
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(MODE, mode)
        .env_remove(ENV)
        .envs(vars.iter().copied());
    if let Some(value) = env {
        command.env(ENV, value);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("could not start {command:?}: {e}"));
    let child = Child { output };
    assert!(
        child.output.status.success(),
        "child {mode:?} with {ENV}={env:?} failed\n{}",
        child.describe()
    );
    assert!(
        child.stdout().contains("1 passed"),
        "the child did not run its test (wrong test name?)\n{}",
        child.describe()
    );
    child
}

/// The child side. Does nothing unless started by `run_child`.
#[test]
fn child() {
    let Ok(mode) = std::env::var(MODE) else {
        return;
    };
    match mode.as_str() {
        "report" => {
            // Several threads race to start the budget: one registry, one warning.
            let threads = 8;
            let barrier = Arc::new(Barrier::new(threads));
            let totals: Vec<usize> = (0..threads)
                .map(|_| {
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        barrier.wait();
                        budget_core::scope(|s| assert!(s.width() >= 1));
                        budget_core::stats().total
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().expect("a racing thread"))
                .collect();
            assert!(totals.windows(2).all(|w| w[0] == w[1]), "{totals:?}");
            println!("TOTAL={}", budget_core::stats().total);
            println!("CORES={}", budget_core::available_cores());
            // The report names the running budget's total and its source.
            let report = budget_core::detect();
            assert_eq!(report.total, budget_core::stats().total, "{report}");
            println!("SOURCE={}", report.source.key());
            println!("REPORT_BEGIN\n{report}\nREPORT_END");
        }
        "builder" => {
            use budget_core::{BuildError, Builder};
            assert_eq!(
                Builder::new().num_threads(0).build_global(),
                Err(BuildError::InvalidThreads { requested: 0 })
            );
            assert_eq!(
                Builder::new().num_threads(4097).build_global(),
                Err(BuildError::InvalidThreads { requested: 4097 })
            );
            // Rejected settings do not start the budget: a good one still can.
            // Rejected builds record nothing.
            assert_ne!(budget_core::detect().source, budget_core::Source::Builder);
            assert_eq!(Builder::new().num_threads(3).build_global(), Ok(()));
            assert_eq!(budget_core::stats().total, 3);
            let report = budget_core::detect();
            assert_eq!(
                (report.total, report.source),
                (3, budget_core::Source::Builder)
            );
            assert_eq!(
                Builder::new().num_threads(5).build_global(),
                Err(BuildError::AlreadyRunning { total: 3 })
            );
            assert_eq!(
                Builder::new().build_global(),
                Err(BuildError::AlreadyRunning { total: 3 })
            );
            // A bad total once running is an error too (which one is not specified);
            // the budget keeps its total.
            assert!(Builder::new().num_threads(0).build_global().is_err());
            assert_eq!(budget_core::stats().total, 3);
            budget_core::scope(|s| assert_eq!(s.width(), 3));
            println!("TOTAL={}", budget_core::stats().total);
        }
        "builder_after_use" => {
            budget_core::scope(|s| assert!(s.width() >= 1));
            let running = budget_core::stats().total;
            assert_eq!(
                budget_core::Builder::new().num_threads(3).build_global(),
                Err(budget_core::BuildError::AlreadyRunning { total: running })
            );
            assert_eq!(budget_core::stats().total, running);
            println!("TOTAL={running}");
        }
        "builder_default" => {
            // No num_threads: the configured total (the variable, when valid).
            assert_eq!(budget_core::Builder::new().build_global(), Ok(()));
            println!("TOTAL={}", budget_core::stats().total);
            println!("SOURCE={}", budget_core::detect().source.key());
        }
        "builder_overrides_env" => {
            assert_eq!(
                budget_core::Builder::new().num_threads(5).build_global(),
                Ok(())
            );
            println!("TOTAL={}", budget_core::stats().total);
        }
        "builder_threads" => {
            assert_eq!(
                budget_core::Builder::new()
                    .num_threads(2)
                    .stack_size(6 << 20)
                    .thread_name(|i| format!("solver-{i}"))
                    .build_global(),
                Ok(())
            );
            // Two tasks that wait for each other: one runs on a worker thread.
            let barrier = Barrier::new(2);
            let names = std::sync::Mutex::new(Vec::new());
            budget_core::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|_| {
                        barrier.wait();
                        let me = std::thread::current();
                        names
                            .lock()
                            .unwrap()
                            .push((me.name().unwrap_or("").to_owned(), stack_size()));
                    });
                }
            });
            for (name, stack) in names.into_inner().unwrap() {
                if name.starts_with("solver-") {
                    println!("WORKER={name}");
                    println!("STACK={stack}");
                }
            }
        }
        other => panic!("unknown {MODE} {other:?}"),
    }
}

#[test]
fn bad_values_warn_once_and_use_the_detected_cores() {
    let detected = budget_core::available_cores();
    for bad in ["0", "-1", "abc", "99999", "", "4097", "1.5"] {
        let child = run_child("report", Some(bad), &[]);
        assert_eq!(
            child.value("TOTAL"),
            detected,
            "{ENV}={bad:?}\n{}",
            child.describe()
        );
        let warnings = child.warnings();
        assert_eq!(
            warnings.len(),
            1,
            "{ENV}={bad:?}: exactly one warning naming the variable\n{}",
            child.describe()
        );
        assert!(
            warnings[0].contains(&format!("{bad:?}")),
            "the warning quotes the value {bad:?}: {}",
            warnings[0]
        );
    }
}

#[test]
fn good_values_set_the_total_without_a_warning() {
    for (value, total) in [("3", 3), ("1", 1), (" 16 ", 16), ("4096", 4096)] {
        let child = run_child("report", Some(value), &[]);
        assert_eq!(child.value("TOTAL"), total, "{ENV}={value:?}");
        assert_eq!(
            child.warnings(),
            Vec::<String>::new(),
            "{ENV}={value:?}: no warning\n{}",
            child.describe()
        );
    }
    // Unset: the detected cores, silently.
    let child = run_child("report", None, &[]);
    assert_eq!(child.value("TOTAL"), budget_core::available_cores());
    assert!(child.stderr().trim().is_empty(), "{}", child.describe());
}

/// The first CPU in this process's affinity mask (CPU 0 may not be ours).
#[cfg(target_os = "linux")]
fn first_allowed_cpu() -> usize {
    // SAFETY: all-zeroes is a valid cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is writable and its exact size is passed.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    assert_eq!(
        rc,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE and `set` was filled by the kernel.
        .find(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .expect("at least one allowed CPU")
}

#[test]
#[cfg(target_os = "linux")]
fn affinity_mask_of_one_cpu_gives_a_total_of_one() {
    let taskset = "/usr/bin/taskset";
    assert!(
        std::path::Path::new(taskset).exists(),
        "{taskset} is missing: install util-linux (scripts/setup.sh does)"
    );
    let cpu = first_allowed_cpu().to_string();
    let child = run_child("report", None, &[taskset, "-c", &cpu]);
    assert_eq!(child.value("TOTAL"), 1, "{}", child.describe());
    assert_eq!(child.value("CORES"), 1, "{}", child.describe());
    // The variable still wins over the mask.
    let child = run_child("report", Some("3"), &[taskset, "-c", &cpu]);
    assert_eq!(child.value("TOTAL"), 3, "{}", child.describe());
    assert_eq!(child.value("CORES"), 1, "{}", child.describe());
}

#[test]
fn builder_rejects_bad_totals_and_a_second_start() {
    let child = run_child("builder", None, &[]);
    assert_eq!(child.value("TOTAL"), 3);
}

#[test]
fn builder_after_first_use_reports_the_running_total() {
    let child = run_child("builder_after_use", None, &[]);
    assert_eq!(child.value("TOTAL"), budget_core::available_cores());
    let child = run_child("builder_after_use", Some("6"), &[]);
    assert_eq!(child.value("TOTAL"), 6);
}

#[test]
fn builder_without_a_count_reads_the_variable_and_with_one_overrides_it() {
    let child = run_child("builder_default", Some("6"), &[]);
    assert_eq!(child.value("TOTAL"), 6);
    let child = run_child("builder_default", Some("abc"), &[]);
    assert_eq!(child.value("TOTAL"), budget_core::available_cores());
    assert_eq!(child.warnings().len(), 1, "{}", child.describe());
    let child = run_child("builder_overrides_env", Some("6"), &[]);
    assert_eq!(child.value("TOTAL"), 5);
}

/// The parent's own report (detection only: it does not start the budget here).
fn parent_report() -> budget_core::Detected {
    let report = budget_core::detect();
    assert!(report.total >= 1, "{report}");
    report
}

#[test]
fn the_report_names_the_source_of_the_running_total() {
    let machine = parent_report();
    // Whatever the machine's own source is, the child reports the same total and
    // source as this process detects.
    if std::env::var_os(ENV).is_none() {
        let child = run_child("report", None, &[]);
        assert_eq!(child.value("TOTAL"), machine.total, "{}", child.describe());
        assert_eq!(
            child.word("SOURCE"),
            machine.source.key(),
            "{}",
            child.describe()
        );
    }
    let child = run_child("report", Some("3"), &[]);
    assert_eq!(child.word("SOURCE"), "budget_num_threads");
    child.says("BUDGET_NUM_THREADS:     3");
    // A bad value: the machine's source, and the report says the value was ignored.
    let child = run_child("report", Some("abc"), &[]);
    assert_ne!(child.word("SOURCE"), "budget_num_threads");
    child.says("(not valid: ignored)");
    let child = run_child("builder_default", Some("6"), &[]);
    assert_eq!(child.word("SOURCE"), "budget_num_threads");
    // Thread-count variables of other runtimes are listed, and change nothing.
    let child = run_child_with("report", None, &[], &[("OMP_NUM_THREADS", "1")]);
    assert_eq!(child.value("TOTAL"), machine.total, "{}", child.describe());
    child.says("OMP_NUM_THREADS:");
}

#[test]
fn slurm_cpus_per_task_lowers_a_whole_machine_total() {
    let machine = parent_report();
    // The count before Slurm (this test may itself run inside a Slurm job).
    let std_count = machine
        .available_parallelism
        .expect("available_parallelism");
    let child = run_child_with("report", None, &[], &[(SLURM, "1")]);
    assert_eq!(child.value("TOTAL"), 1, "{}", child.describe());
    assert_eq!(child.value("CORES"), 1, "{}", child.describe());
    if machine.whole_machine() && std_count > 1 {
        assert_eq!(child.word("SOURCE"), "slurm", "{}", child.describe());
    } else {
        // Already 1 without Slurm, or a cpuset: Slurm is not what set it.
        assert_ne!(child.word("SOURCE"), "slurm", "{}", child.describe());
    }
    // Never above the machine, and a bad value is ignored without a warning.
    for value in ["4096", "0", "two"] {
        let child = run_child_with("report", None, &[], &[(SLURM, value)]);
        assert_eq!(
            child.value("TOTAL"),
            std_count,
            "{value:?}\n{}",
            child.describe()
        );
        assert_ne!(child.word("SOURCE"), "slurm", "{}", child.describe());
        assert!(child.stderr().trim().is_empty(), "{}", child.describe());
    }
    // BUDGET_NUM_THREADS still wins.
    let child = run_child_with("report", Some("2"), &[], &[(SLURM, "1")]);
    assert_eq!(child.value("TOTAL"), 2, "{}", child.describe());
    assert_eq!(child.word("SOURCE"), "budget_num_threads");
}

#[test]
#[cfg(target_os = "linux")]
fn slurm_cpus_per_task_is_not_used_under_a_cpuset() {
    let taskset = "/usr/bin/taskset";
    assert!(
        std::path::Path::new(taskset).exists(),
        "{taskset} is missing: install util-linux (scripts/setup.sh does)"
    );
    let machine = parent_report();
    let cpu = first_allowed_cpu().to_string();
    // A mask of one CPU on a machine of more: the mask is the allocation.
    let child = run_child_with("report", None, &[taskset, "-c", &cpu], &[(SLURM, "1")]);
    assert_eq!(child.value("TOTAL"), 1, "{}", child.describe());
    if machine.online.is_some_and(|n| n > 1) {
        assert_eq!(child.word("SOURCE"), "affinity", "{}", child.describe());
        child.says("1 (not used");
    }
}

/// The calling thread's stack size in bytes (0 where it cannot be read).
fn stack_size() -> usize {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: pthread_attr_t is plain data; pthread_getattr_np fills it for the
        // calling thread, and it is destroyed after one read.
        unsafe {
            let mut attr: libc::pthread_attr_t = std::mem::zeroed();
            if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
                return 0;
            }
            let mut size = 0;
            libc::pthread_attr_getstacksize(&attr, &mut size);
            libc::pthread_attr_destroy(&mut attr);
            size
        }
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// `Builder::stack_size` and `thread_name` apply to budget's worker threads.
#[test]
fn builder_names_and_sizes_worker_threads() {
    let child = run_child("builder_threads", None, &[]);
    assert!(
        child.after("WORKER").starts_with("solver-"),
        "{}",
        child.describe()
    );
    if cfg!(target_os = "linux") {
        assert!(
            child.value("STACK") >= 6 << 20,
            "a stack of 6 MiB at least: {}",
            child.describe()
        );
    }
}

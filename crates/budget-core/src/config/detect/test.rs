//! Tests of the detection on made-up inputs, environments and cgroup files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::machine::cgroup_quota;
use super::*;

fn fs(files: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
    let map: HashMap<PathBuf, String> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    move |p| map.get(p).cloned()
}

const V2_MOUNT: &str =
    "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";

#[test]
fn v2_quota_rounds_down_and_tightest_level_wins() {
    let read = fs(&[
        ("/sys/fs/cgroup/a/b/cpu.max", "250000 100000\n"),
        ("/sys/fs/cgroup/a/cpu.max", "max 100000\n"),
        ("/sys/fs/cgroup/cpu.max", "800000 100000\n"),
    ]);
    assert_eq!(cgroup_quota("0::/a/b\n", V2_MOUNT, &read), Some(2.5));
    let tight = fs(&[
        ("/sys/fs/cgroup/a/b/cpu.max", "250000 100000\n"),
        ("/sys/fs/cgroup/a/cpu.max", "150000 100000\n"),
    ]);
    assert_eq!(cgroup_quota("0::/a/b\n", V2_MOUNT, &tight), Some(1.5));
}

#[test]
fn v2_no_quota_and_fraction_below_one() {
    let none = fs(&[("/sys/fs/cgroup/cpu.max", "max 100000\n")]);
    assert_eq!(cgroup_quota("0::/\n", V2_MOUNT, &none), None);
    let half = fs(&[("/sys/fs/cgroup/cpu.max", "50000 100000\n")]);
    assert_eq!(cgroup_quota("0::/\n", V2_MOUNT, &half), Some(0.5));
    assert_eq!(rounded_quota(0.5), 1);
    assert_eq!(rounded_quota(1.5), 1);
    assert_eq!(rounded_quota(2.0), 2);
}

#[test]
fn v1_quota_with_namespaced_root() {
    let mounts =
        "40 30 0:35 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct\n";
    let read = fs(&[
        ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "300000\n"),
        ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
    ]);
    assert_eq!(
        cgroup_quota("4:cpu,cpuacct:/docker/abc\n1:memory:/x\n", mounts, &read),
        Some(3.0)
    );
    let unlimited = fs(&[
        ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n"),
        ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
    ]);
    assert_eq!(
        cgroup_quota("4:cpu,cpuacct:/docker/abc\n", mounts, &unlimited),
        None
    );
}

/// Inputs of a machine with `online` CPUs, a mask of `affinity` and a quota.
fn machine(online: usize, affinity: usize, quota: Option<f64>) -> Inputs {
    let std_count = quota.map_or(affinity, |q| rounded_quota(q).min(affinity));
    Inputs {
        available_parallelism: Some(std_count),
        affinity: Some(affinity),
        online: Some(online),
        cgroup_quota: quota,
    }
}

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

#[test]
fn the_mask_or_the_quota_sets_the_total() {
    let none = vars(&[]);
    assert_eq!(
        configured(&machine(8, 8, None), &none),
        (8, Source::Affinity)
    );
    // taskset / cpuset: the mask.
    assert_eq!(
        configured(&machine(8, 2, None), &none),
        (2, Source::Affinity)
    );
    // A quota below the mask, rounded down.
    assert_eq!(
        configured(&machine(8, 8, Some(2.5)), &none),
        (2, Source::CgroupQuota)
    );
    assert_eq!(
        configured(&machine(8, 8, Some(0.5)), &none),
        (1, Source::CgroupQuota)
    );
    // A quota at or above the mask does not set the total.
    assert_eq!(
        configured(&machine(8, 4, Some(6.0)), &none),
        (4, Source::Affinity)
    );
    assert_eq!(
        configured(&machine(8, 4, Some(4.0)), &none),
        (4, Source::Affinity)
    );
    // std failed: 1.
    let failed = Inputs {
        available_parallelism: None,
        ..machine(8, 8, None)
    };
    assert_eq!(
        configured(&failed, &none),
        (1, Source::AvailableParallelism)
    );
    // std gave a count the mask does not explain (no mask on this platform).
    let other = Inputs {
        affinity: None,
        online: None,
        ..machine(8, 8, None)
    };
    assert_eq!(configured(&other, &none), (8, Source::AvailableParallelism));
}

#[test]
fn slurm_counts_only_without_a_cpuset_and_only_downwards() {
    let slurm = |n: &str| vars(&[("SLURM_CPUS_PER_TASK", n)]);
    // No cpuset (the mask is every online CPU): Slurm's count.
    assert_eq!(
        configured(&machine(8, 8, None), &slurm("4")),
        (4, Source::Slurm)
    );
    // Smaller than a quota.
    assert_eq!(
        configured(&machine(8, 8, Some(6.0)), &slurm("4")),
        (4, Source::Slurm)
    );
    // A tighter quota wins over Slurm.
    assert_eq!(
        configured(&machine(8, 8, Some(2.0)), &slurm("4")),
        (2, Source::CgroupQuota)
    );
    // Slurm never raises the total.
    assert_eq!(
        configured(&machine(8, 8, None), &slurm("16")),
        (8, Source::Affinity)
    );
    assert_eq!(
        configured(&machine(8, 8, None), &slurm("8")),
        (8, Source::Affinity)
    );
    // A cpuset is the allocation: Slurm's count is not used, even when smaller.
    assert_eq!(
        configured(&machine(8, 4, None), &slurm("2")),
        (4, Source::Affinity)
    );
    // Unknown online count: not provably the whole machine, not used.
    let unknown = Inputs {
        online: None,
        ..machine(8, 8, None)
    };
    assert_eq!(configured(&unknown, &slurm("2")), (8, Source::Affinity));
    // Values that are not a positive whole number are ignored.
    for bad in ["0", "-2", "abc", "", "2.5"] {
        assert_eq!(
            configured(&machine(8, 8, None), &slurm(bad)),
            (8, Source::Affinity),
            "{bad:?}"
        );
    }
    assert_eq!(
        configured(&machine(8, 8, None), &slurm(" 3\n")),
        (3, Source::Slurm)
    );
}

#[test]
fn budget_num_threads_wins_over_every_other_source() {
    let env = vars(&[("SLURM_CPUS_PER_TASK", "2"), (ENV_NUM_THREADS, "6")]);
    assert_eq!(
        configured(&machine(8, 8, Some(1.0)), &env),
        (6, Source::BudgetNumThreads)
    );
    // A bad value falls back to the machine's total and its source.
    let bad = vars(&[("SLURM_CPUS_PER_TASK", "2"), (ENV_NUM_THREADS, "zero")]);
    assert_eq!(configured(&machine(8, 8, None), &bad), (2, Source::Slurm));
}

#[test]
fn the_report_lists_every_figure_and_prints_them() {
    let env = vars(&[
        ("SLURM_CPUS_PER_TASK", "2"),
        ("MKL_NUM_THREADS", "1"),
        ("OMP_NUM_THREADS", "4,2"),
    ]);
    let report = report(&machine(8, 8, Some(3.5)), &env);
    assert_eq!((report.total, report.source), (2, Source::Slurm));
    assert_eq!(report.available_parallelism, Some(3));
    assert_eq!(report.cgroup_quota, Some(3.5));
    assert_eq!(report.slurm_cpus_per_task, Some(2));
    assert!(report.whole_machine());
    assert_eq!(report.budget_num_threads, None);
    assert_eq!(
        report.thread_variables,
        vec![
            ("OMP_NUM_THREADS", "4,2".to_owned()),
            ("MKL_NUM_THREADS", "1".to_owned())
        ]
    );
    assert_eq!(report.thread_variable("OMP_NUM_THREADS"), Some("4,2"));
    let text = report.to_string();
    for needle in [
        "total:                  2 (from SLURM_CPUS_PER_TASK)",
        "8 CPUs (the whole machine)",
        "cgroup CPU quota:       3.5",
        "OMP_NUM_THREADS:",
        "\"4,2\"",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    // With a cpuset, Slurm's count is shown as not used.
    let report = super::report(&machine(8, 4, None), &env);
    assert_eq!((report.total, report.source), (4, Source::Affinity));
    assert!(report.to_string().contains("2 (not used"), "{report}");
}

#[test]
fn counts_from_budget_run_static_env_are_not_the_users() {
    let marker = static_env_marker([("OMP_NUM_THREADS", "1"), ("OPENBLAS_NUM_THREADS", "1")]);
    assert_eq!(marker, "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1");
    // Both still as budget run set them: neither is the user's.
    let env = vars(&[
        (ENV_STATIC_ENV, &marker),
        ("OMP_NUM_THREADS", "1"),
        ("OPENBLAS_NUM_THREADS", "1"),
        ("MKL_NUM_THREADS", "3"),
    ]);
    let user = |name| static_env::user_value(&env, name);
    assert_eq!(user("OMP_NUM_THREADS"), None);
    assert_eq!(user("OPENBLAS_NUM_THREADS"), None);
    // Not listed: the user's.
    assert_eq!(user("MKL_NUM_THREADS").as_deref(), Some("3"));
    assert_eq!(user("BLIS_NUM_THREADS"), None);
    // Changed inside the tree afterwards: the user's again.
    let changed = vars(&[(ENV_STATIC_ENV, &marker), ("OMP_NUM_THREADS", "2")]);
    assert_eq!(
        static_env::user_value(&changed, "OMP_NUM_THREADS").as_deref(),
        Some("2")
    );
    // Without the marker, every value is the user's.
    let plain = vars(&[("OMP_NUM_THREADS", "1")]);
    assert_eq!(
        static_env::user_value(&plain, "OMP_NUM_THREADS").as_deref(),
        Some("1")
    );
    // The report says which ones came from budget run.
    let report = report(&machine(8, 8, None), &env);
    assert_eq!(
        report.static_env,
        ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"]
    );
    let text = report.to_string();
    assert!(text.contains("from budget run --static-env"), "{text}");
    assert!(text.contains("\"3\" (caps s.native"), "{text}");
}

#[test]
#[cfg_attr(miri, ignore = "files: Miri runs isolated")]
fn real_v1_files_in_a_directory() {
    let root = std::env::temp_dir().join(format!("budget-cgroup-{}", std::process::id()));
    let leaf = root.join("cpu/job/step");
    std::fs::create_dir_all(&leaf).unwrap();
    std::fs::write(root.join("cpu/job/cpu.cfs_quota_us"), "150000\n").unwrap();
    std::fs::write(root.join("cpu/job/cpu.cfs_period_us"), "100000\n").unwrap();
    std::fs::write(leaf.join("cpu.cfs_quota_us"), "-1\n").unwrap();
    std::fs::write(leaf.join("cpu.cfs_period_us"), "100000\n").unwrap();
    let mounts = format!(
        "32 31 0:29 / {} rw,relatime - cgroup cgroup rw,cpu\n",
        root.join("cpu").display()
    );
    let quota = cgroup_quota("1:cpu:/job/step\n", &mounts, |p| {
        std::fs::read_to_string(p).ok()
    });
    std::fs::remove_dir_all(&root).ok();
    assert_eq!(quota, Some(1.5));
}

#[test]
fn env_values() {
    assert_eq!(parse_num_threads("4"), Ok(4));
    assert_eq!(parse_num_threads(" 16 \n"), Ok(16));
    assert_eq!(parse_num_threads("4096"), Ok(4096));
    for bad in ["0", "-1", "-3", "abc", "99999", "", "  ", "1.5", "4097"] {
        assert!(parse_num_threads(bad).is_err(), "{bad:?} accepted");
    }
}

//! Where the budget's total comes from: the [`Detected`] report and its [`Source`].
//!
//! The count of cores the process may use — the CPUs in its affinity mask, lowered
//! to the cgroup (v1 or v2) CPU quota rounded down — is what
//! [`std::thread::available_parallelism`] computes on Linux, and budget takes that
//! number from std. This module keeps only what std cannot give:
//!
//! - **which source set the total** (the affinity mask, the cgroup quota, Slurm's
//!   `SLURM_CPUS_PER_TASK`, `BUDGET_NUM_THREADS` or the [`Builder`](crate::Builder)),
//!   with the raw figures behind it, for `budget info` and for people reading logs;
//! - **Slurm's count**, which std does not read: `SLURM_CPUS_PER_TASK` lowers the
//!   total when the job has no cpuset (see [`Source::Slurm`] for the exact rule);
//! - the `BUDGET_NUM_THREADS` override and its one warning for a bad value;
//! - the cgroup parser (to say *that* a quota set the total and what it is), tested
//!   on made-up cgroup files.
//!
//! It also reports, without acting on them, the thread-count variables a scheduler
//! or a user may have set (`OMP_NUM_THREADS` and its kin): see `docs/clusters.md`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The environment variable that overrides the detected core count.
pub const ENV_NUM_THREADS: &str = "BUDGET_NUM_THREADS";

/// Slurm's count of CPUs per task (set by `srun`/`sbatch` with `-c`).
const ENV_SLURM_CPUS_PER_TASK: &str = "SLURM_CPUS_PER_TASK";

/// The largest budget accepted from `BUDGET_NUM_THREADS` or the
/// [`Builder`](crate::Builder).
pub const MAX_THREADS: usize = 4096;

/// Thread-count variables of other runtimes that [`Detected`] reports when set.
const THREAD_VARIABLES: [&str; 6] = [
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "RAYON_NUM_THREADS",
];

/// What set the budget's total, in the order of precedence (first wins).
///
/// # Examples
///
/// ```
/// use budget_core::Source;
///
/// let report = budget_core::detect();
/// // Without a builder or variables, the total comes from the machine.
/// if report.source == Source::Affinity {
///     assert_eq!(Some(report.total), report.affinity);
/// }
/// println!("{} ({})", report.source, report.source.key());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// [`Builder::num_threads`](crate::Builder::num_threads) set it in this process.
    Builder,
    /// `BUDGET_NUM_THREADS` held a valid number (1 to 4096). It overrides everything
    /// below, also a smaller affinity mask or quota.
    BudgetNumThreads,
    /// Slurm's `SLURM_CPUS_PER_TASK`. The rule: it counts only when the affinity
    /// mask is the whole machine (every online CPU), that is when Slurm confined the
    /// task by no cpuset; then the total is the smallest of it, the affinity count
    /// and the cgroup quota, and this source is named when Slurm's count is strictly
    /// the smallest. When the mask is narrower, the mask is the allocation (Slurm's
    /// `task/affinity` or `ConstrainCores=yes` made it) and `SLURM_CPUS_PER_TASK` is
    /// reported but not used: a cpuset of 8 hyperthreads for `-c 4` on a cluster that
    /// counts cores is 8 usable CPUs.
    Slurm,
    /// The cgroup (v1 or v2) CPU quota, rounded down, was below the affinity count:
    /// a container with a CPU limit (Kubernetes `limits.cpu`, `docker --cpus`).
    CgroupQuota,
    /// The CPUs in the affinity mask (`taskset`, a cpuset, or the whole machine).
    Affinity,
    /// [`std::thread::available_parallelism`] gave a count that neither the affinity
    /// mask nor the quota explains (another platform, or an unreadable mask), or
    /// failed (then the total is 1).
    AvailableParallelism,
}

impl Source {
    /// A stable, machine-readable name: `builder`, `budget_num_threads`, `slurm`,
    /// `cgroup_quota`, `affinity` or `available_parallelism` (for JSON output).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(budget_core::Source::CgroupQuota.key(), "cgroup_quota");
    /// ```
    pub fn key(self) -> &'static str {
        match self {
            Source::Builder => "builder",
            Source::BudgetNumThreads => "budget_num_threads",
            Source::Slurm => "slurm",
            Source::CgroupQuota => "cgroup_quota",
            Source::Affinity => "affinity",
            Source::AvailableParallelism => "available_parallelism",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Source::Builder => "budget::Builder",
            Source::BudgetNumThreads => "BUDGET_NUM_THREADS",
            Source::Slurm => "SLURM_CPUS_PER_TASK",
            Source::CgroupQuota => "the cgroup CPU quota",
            Source::Affinity => "the affinity mask",
            Source::AvailableParallelism => "std::thread::available_parallelism",
        })
    }
}

/// Where the budget's total comes from: the total, its [`Source`], and every figure
/// that was considered. Made by [`detect`]; printed by `budget info`.
///
/// Fields that are `None` were not found (no quota, variable unset) or could not be
/// read. New fields may be added in later versions (the struct is
/// `#[non_exhaustive]`).
///
/// # Examples
///
/// ```
/// let report = budget_core::detect();
/// assert!(report.total >= 1);
/// // The human form, several lines:
/// println!("{report}");
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Detected {
    /// The budget's total: the running budget's when it has started in this process,
    /// else the total it would start with now.
    pub total: usize,
    /// What set `total`.
    pub source: Source,
    /// `std::thread::available_parallelism()` (affinity mask and cgroup quota,
    /// rounded down); `None` when it failed.
    pub available_parallelism: Option<usize>,
    /// The number of CPUs in this process's affinity mask (Linux).
    pub affinity: Option<usize>,
    /// The number of online CPUs of the machine (`_SC_NPROCESSORS_ONLN`). The mask
    /// is "the whole machine" when `affinity >= online`.
    pub online: Option<usize>,
    /// The tightest cgroup CPU quota on the path from this process's cgroup to the
    /// root, in CPUs, not rounded (`1.5` for `cpu.max` = `150000 100000`).
    pub cgroup_quota: Option<f64>,
    /// `SLURM_CPUS_PER_TASK` when it holds a positive whole number.
    pub slurm_cpus_per_task: Option<usize>,
    /// The raw value of `BUDGET_NUM_THREADS` when set (valid or not).
    pub budget_num_threads: Option<String>,
    /// Thread-count variables of other runtimes that are set, by name, in this
    /// order: `OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS`, `MKL_NUM_THREADS`,
    /// `BLIS_NUM_THREADS`, `GOTO_NUM_THREADS`, `RAYON_NUM_THREADS`. Reported only:
    /// they do not change the total.
    pub thread_variables: Vec<(&'static str, String)>,
}

impl Detected {
    /// Whether the affinity mask covers every online CPU (no cpuset, no `taskset`):
    /// the condition under which `SLURM_CPUS_PER_TASK` counts. `false` when either
    /// figure is unknown.
    ///
    /// # Examples
    ///
    /// ```
    /// let report = budget_core::detect();
    /// if report.whole_machine() {
    ///     assert!(report.affinity >= report.online);
    /// }
    /// ```
    pub fn whole_machine(&self) -> bool {
        matches!((self.affinity, self.online), (Some(a), Some(o)) if a >= o)
    }

    /// The value of one of the reported thread-count variables
    /// ([`thread_variables`](Detected::thread_variables)), if set.
    ///
    /// # Examples
    ///
    /// ```
    /// let report = budget_core::detect();
    /// assert_eq!(
    ///     report.thread_variable("OMP_NUM_THREADS").is_some(),
    ///     std::env::var_os("OMP_NUM_THREADS").is_some()
    /// );
    /// ```
    pub fn thread_variable(&self, name: &str) -> Option<&str> {
        self.thread_variables
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Display for Detected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn or_none<T: fmt::Display>(v: &Option<T>, none: &str) -> String {
            v.as_ref()
                .map_or_else(|| none.to_owned(), ToString::to_string)
        }
        writeln!(
            f,
            "total:                  {} (from {})",
            self.total, self.source
        )?;
        let affinity = match (self.affinity, self.online) {
            (Some(a), Some(o)) if a >= o => format!("{a} CPUs (the whole machine)"),
            (Some(a), Some(o)) => format!("{a} of {o} online CPUs"),
            (a, _) => or_none(&a, "unknown"),
        };
        writeln!(f, "affinity mask:          {affinity}")?;
        writeln!(
            f,
            "cgroup CPU quota:       {}",
            or_none(&self.cgroup_quota, "none")
        )?;
        writeln!(
            f,
            "available_parallelism:  {}",
            or_none(&self.available_parallelism, "failed")
        )?;
        let slurm = match self.slurm_cpus_per_task {
            None => "not set".to_owned(),
            Some(n) if self.whole_machine() => format!("{n}"),
            Some(n) => format!("{n} (not used: the affinity mask is the allocation)"),
        };
        writeln!(f, "SLURM_CPUS_PER_TASK:    {slurm}")?;
        let own = match &self.budget_num_threads {
            None => "not set".to_owned(),
            Some(raw) if self.source == Source::BudgetNumThreads => raw.trim().to_owned(),
            Some(raw) if self.source == Source::Builder => format!("{raw:?} (the builder wins)"),
            Some(raw) => format!("{raw:?} (not valid: ignored)"),
        };
        write!(f, "BUDGET_NUM_THREADS:     {own}")?;
        for (name, value) in &self.thread_variables {
            write!(
                f,
                "\n{:<23} {value:?} (not read by budget)",
                format!("{name}:")
            )?;
        }
        Ok(())
    }
}

/// Reports the budget's total and where it comes from: the affinity mask, the cgroup
/// quota, `SLURM_CPUS_PER_TASK`, `BUDGET_NUM_THREADS` or the builder, with every
/// figure considered.
///
/// Does not start the budget. When the budget already runs in this process, `total`
/// and `source` are the running budget's (also [`Source::Builder`]); otherwise they
/// are what the budget would start with now. Reads a few `/proc` and `/sys` files
/// each call: call it for a report, not in a loop.
///
/// # Examples
///
/// ```
/// let report = budget_core::detect();
/// println!("{report}");
/// assert!(report.total >= 1 && report.total <= budget_core::MAX_THREADS);
/// ```
pub fn detect() -> Detected {
    let fresh = machine_report(&|name| std::env::var(name).ok());
    let started = *STARTED.lock().unwrap_or_else(|e| e.into_inner());
    match started {
        Some(Started { total, source }) => Detected {
            total,
            source,
            ..fresh
        },
        None => fresh,
    }
}

/// The cores this process may use, before `BUDGET_NUM_THREADS` and the builder:
/// [`std::thread::available_parallelism`] (the affinity mask lowered to the cgroup
/// CPU quota rounded down), lowered to `SLURM_CPUS_PER_TASK` when the mask is the
/// whole machine (see [`Source::Slurm`]); at least 1.
///
/// A quota of 1.5 CPUs gives 1: a budget that counts the half would oversubscribe.
///
/// # Examples
///
/// ```
/// let cores = budget_core::available_cores();
/// assert!(cores >= 1);
/// ```
pub fn available_cores() -> usize {
    let env = |name: &str| std::env::var(name).ok();
    let (total, _) = machine_total(&Inputs::read(), &env);
    total
}

/// The total and source of the budget that started in this process.
#[derive(Clone, Copy)]
struct Started {
    total: usize,
    source: Source,
}

/// What set the running budget's total. Written when the total is configured (the
/// first writer wins) and by a successful [`Builder`](crate::Builder) (which always
/// wins: its total is the one running). A forked child inherits it with the memory.
static STARTED: Mutex<Option<Started>> = Mutex::new(None);

/// Records that [`Builder::build_global`](crate::Builder::build_global) started the
/// budget with `total` from `source`.
pub(crate) fn record_build(total: usize, source: Source) {
    *STARTED.lock().unwrap_or_else(|e| e.into_inner()) = Some(Started { total, source });
}

/// The budget's total at start: `BUDGET_NUM_THREADS` when it holds a valid number,
/// the detected cores otherwise. A bad value prints one warning, never panics.
pub(crate) fn configured_total() -> usize {
    configured_total_and_source().0
}

/// [`configured_total`] and its source, recorded as the running budget's unless a
/// record exists.
pub(crate) fn configured_total_and_source() -> (usize, Source) {
    let env = |name: &str| std::env::var(name).ok();
    let (total, source) = configured(&Inputs::read(), &env);
    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    started.get_or_insert(Started { total, source });
    (total, source)
}

/// What the machine, the cgroups and the environment say, before any decision.
struct Inputs {
    available_parallelism: Option<usize>,
    affinity: Option<usize>,
    online: Option<usize>,
    cgroup_quota: Option<f64>,
}

impl Inputs {
    fn read() -> Inputs {
        Inputs {
            available_parallelism: std::thread::available_parallelism().ok().map(|n| n.get()),
            affinity: affinity_count(),
            online: online_cpus(),
            cgroup_quota: cgroup_quota_from_proc(),
        }
    }
}

/// The full report for `inputs` and the variables `env` gives, without a builder.
fn report(inputs: &Inputs, env: &dyn Fn(&str) -> Option<String>) -> Detected {
    let (total, source) = configured(inputs, env);
    Detected {
        total,
        source,
        available_parallelism: inputs.available_parallelism,
        affinity: inputs.affinity,
        online: inputs.online,
        cgroup_quota: inputs.cgroup_quota,
        slurm_cpus_per_task: slurm_cpus_per_task(env),
        budget_num_threads: env(ENV_NUM_THREADS),
        thread_variables: THREAD_VARIABLES
            .iter()
            .filter_map(|&name| env(name).map(|v| (name, v)))
            .collect(),
    }
}

fn machine_report(env: &dyn Fn(&str) -> Option<String>) -> Detected {
    report(&Inputs::read(), env)
}

/// The total without a builder: `BUDGET_NUM_THREADS` when valid (a bad value warns
/// once per process), else [`machine_total`].
fn configured(inputs: &Inputs, env: &dyn Fn(&str) -> Option<String>) -> (usize, Source) {
    let Some(raw) = env(ENV_NUM_THREADS) else {
        return machine_total(inputs, env);
    };
    match parse_num_threads(&raw) {
        Ok(n) => (n, Source::BudgetNumThreads),
        Err(why) => {
            let (detected, source) = machine_total(inputs, env);
            let message = format!(
                "budget: ignoring {ENV_NUM_THREADS}={raw:?}: {why}; using the {detected} \
                 detected core(s) instead. Set it to a whole number from 1 to {MAX_THREADS}."
            );
            // Once per process, even if two threads race to make the budget.
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!("{message}");
                eprintln!("{message}");
            }
            (detected, source)
        }
    }
}

/// The cores the machine gives this process and which figure set them: std's
/// count, attributed to the quota or the mask, then lowered to Slurm's count when
/// the mask is the whole machine. At least 1.
fn machine_total(inputs: &Inputs, env: &dyn Fn(&str) -> Option<String>) -> (usize, Source) {
    let Some(std_count) = inputs.available_parallelism else {
        return (1, Source::AvailableParallelism);
    };
    let quota_cores = inputs.cgroup_quota.map(rounded_quota);
    let below_mask = |n: usize| inputs.affinity.map_or(true, |a| n < a);
    let source = if quota_cores == Some(std_count) && below_mask(std_count) {
        Source::CgroupQuota
    } else if inputs.affinity == Some(std_count) {
        Source::Affinity
    } else {
        Source::AvailableParallelism
    };
    let whole_machine = matches!((inputs.affinity, inputs.online), (Some(a), Some(o)) if a >= o);
    match slurm_cpus_per_task(env) {
        Some(slurm) if whole_machine && slurm < std_count => (slurm, Source::Slurm),
        _ => (std_count, source),
    }
}

/// A quota in CPUs as whole cores: rounded down, at least 1.
fn rounded_quota(cpus: f64) -> usize {
    (cpus.floor() as usize).max(1)
}

fn slurm_cpus_per_task(env: &dyn Fn(&str) -> Option<String>) -> Option<usize> {
    env(ENV_SLURM_CPUS_PER_TASK)?
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|&n| n >= 1)
}

/// Parses a thread count as `BUDGET_NUM_THREADS` gives it.
pub(crate) fn parse_num_threads(text: &str) -> Result<usize, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("it is empty".to_owned());
    }
    match trimmed.parse::<i128>() {
        Ok(n) if n < 1 => Err(format!("{n} is not a positive number")),
        Ok(n) if n > MAX_THREADS as i128 => {
            Err(format!("{n} is larger than the limit of {MAX_THREADS}"))
        }
        Ok(n) => Ok(n as usize),
        Err(_) => Err("it is not a whole number".to_owned()),
    }
}

/// The CPUs in the calling thread's affinity mask. std counts them too but does not
/// say so apart from the quota.
#[cfg(target_os = "linux")]
fn affinity_count() -> Option<usize> {
    // SAFETY: cpu_set_t is a plain bit array for which all-zeroes is a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live, writable cpu_set_t and we pass its exact size; pid 0
    // means the calling thread.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return None;
    }
    // SAFETY: `set` was filled by a successful sched_getaffinity.
    let count = unsafe { libc::CPU_COUNT(&set) };
    usize::try_from(count).ok().filter(|&n| n > 0)
}

#[cfg(not(target_os = "linux"))]
fn affinity_count() -> Option<usize> {
    None
}

/// The machine's online CPUs: the size of a mask that is "the whole machine".
#[cfg(unix)]
fn online_cpus() -> Option<usize> {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0)
}

#[cfg(not(unix))]
fn online_cpus() -> Option<usize> {
    None
}

#[cfg(target_os = "linux")]
fn cgroup_quota_from_proc() -> Option<f64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup_quota(&cgroups, &mountinfo, |p| std::fs::read_to_string(p).ok())
}

#[cfg(not(target_os = "linux"))]
fn cgroup_quota_from_proc() -> Option<f64> {
    None
}

/// The CPU quota, in CPUs (not rounded), of the cgroup described by `cgroups` (the
/// text of `/proc/self/cgroup`) and `mountinfo` (of `/proc/self/mountinfo`), reading
/// control files through `read`. Every level from the process's cgroup up to the
/// mount root counts; the tightest wins. `None` when no level sets a quota.
pub(crate) fn cgroup_quota(
    cgroups: &str,
    mountinfo: &str,
    read: impl Fn(&Path) -> Option<String>,
) -> Option<f64> {
    let mut best: Option<f64> = None;
    let mut consider = |cpus: Option<f64>| {
        if let Some(c) = cpus {
            best = Some(best.map_or(c, |b| b.min(c)));
        }
    };
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            // cgroup v2: one `cpu.max` per level, "max 100000" or "150000 100000".
            if let Some(dirs) = levels(mountinfo, path, |fs, _| fs == "cgroup2") {
                for dir in dirs {
                    consider(read(&dir.join("cpu.max")).and_then(|t| parse_cpu_max(&t)));
                }
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            // cgroup v1: cpu.cfs_quota_us (-1 for none) over cpu.cfs_period_us.
            let is_cpu =
                |fs: &str, opts: &str| fs == "cgroup" && opts.split(',').any(|o| o == "cpu");
            if let Some(dirs) = levels(mountinfo, path, is_cpu) {
                for dir in dirs {
                    let quota = read(&dir.join("cpu.cfs_quota_us"));
                    let period = read(&dir.join("cpu.cfs_period_us"));
                    if let (Some(q), Some(p)) = (quota, period) {
                        consider(cores_from(q.trim(), p.trim()));
                    }
                }
            }
        }
    }
    best
}

/// The directories from the process's cgroup up to the mount point of the first
/// mount whose filesystem type and super options satisfy `matches`.
fn levels(
    mountinfo: &str,
    cgroup_path: &str,
    matches: impl Fn(&str, &str) -> bool,
) -> Option<Vec<PathBuf>> {
    for line in mountinfo.lines() {
        // "36 35 98:0 /root /mnt opts - fstype source superopts"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 || !matches(right[0], right[2]) {
            continue;
        }
        let (root, mount) = (left[3], Path::new(left[4]));
        // Inside a cgroup namespace the path may already be relative to the root.
        let relative = cgroup_path
            .strip_prefix(root)
            .unwrap_or(cgroup_path)
            .trim_start_matches('/');
        let mut dir = mount.join(relative);
        let mut dirs = vec![dir.clone()];
        while dir != mount {
            if !dir.pop() {
                break;
            }
            dirs.push(dir.clone());
        }
        return Some(dirs);
    }
    None
}

fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut words = text.split_whitespace();
    let quota = words.next()?;
    let period = words.next().unwrap_or("100000");
    cores_from(quota, period)
}

/// `quota / period` in CPUs; `None` for no quota ("max", -1) or unreadable values.
fn cores_from(quota: &str, period: &str) -> Option<f64> {
    if quota == "max" {
        return None;
    }
    let quota: i64 = quota.parse().ok()?;
    let period: i64 = period.parse().ok()?;
    if quota <= 0 || period <= 0 {
        return None;
    }
    Some(quota as f64 / period as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

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
}

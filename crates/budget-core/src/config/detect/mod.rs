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
//! `machine.rs` reads the kernel's figures (affinity count, online CPUs, cgroup quota);
//! this file decides; `test.rs` feeds the decision made-up machines, environments and
//! cgroup files.
//!
//! It also reports the thread-count variables a scheduler or a user may have set
//! (`OMP_NUM_THREADS` and its kin). They do not change the total; budget-native reads
//! them as caps for the libraries they name (see `docs/clusters.md`), except the
//! values `budget run --static-env` set for the programs that are not budget-enabled
//! (`static_env.rs`).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub(crate) use machine::affinity_cpus;
use machine::{affinity_count, cgroup_quota_from_proc, online_cpus};

mod machine;
mod static_env;
#[cfg(test)]
mod test;

pub use static_env::{static_env_marker, user_thread_variable, ENV_STATIC_ENV};

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
/// # use budget_core as budget;
/// use budget::Source;
///
/// let report = budget::detect();
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
    /// # use budget_core as budget;
    /// assert_eq!(budget::Source::CgroupQuota.key(), "cgroup_quota");
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
/// # use budget_core as budget;
/// let report = budget::detect();
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
    /// The raw value of `SLURM_CPUS_PER_TASK` when set (valid or not).
    pub slurm_cpus_per_task_raw: Option<String>,
    /// The raw value of `BUDGET_NUM_THREADS` when set (valid or not).
    pub budget_num_threads: Option<String>,
    /// Thread-count variables of other runtimes that are set, by name, in this
    /// order: `OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS`, `MKL_NUM_THREADS`,
    /// `BLIS_NUM_THREADS`, `GOTO_NUM_THREADS`, `RAYON_NUM_THREADS`. They do not
    /// change the total; the BLAS/OpenMP ones cap `s.native` for the libraries they
    /// name (budget-native), unless listed in
    /// [`static_env`](Detected::static_env).
    pub thread_variables: Vec<(&'static str, String)>,
    /// The names of those [`thread_variables`](Detected::thread_variables) that still
    /// hold the value `budget run --static-env` gave them for the programs that are
    /// not budget-enabled ([`ENV_STATIC_ENV`]): budget-native does not read them as
    /// caps (see [`user_thread_variable`]).
    pub static_env: Vec<&'static str>,
}

impl Detected {
    /// Whether the affinity mask covers every online CPU (no cpuset, no `taskset`):
    /// the condition under which `SLURM_CPUS_PER_TASK` counts. `false` when either
    /// figure is unknown.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// let report = budget::detect();
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
    /// # use budget_core as budget;
    /// let report = budget::detect();
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
        let slurm = match (self.slurm_cpus_per_task, &self.slurm_cpus_per_task_raw) {
            (None, None) => "not set".to_owned(),
            (None, Some(raw)) => format!("{raw:?} (not valid: ignored)"),
            (Some(n), _) if self.whole_machine() => format!("{n}"),
            (Some(n), _) => format!("{n} (not used: the affinity mask is the allocation)"),
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
            let first = value.split(',').next().unwrap_or("").trim();
            let valid = first.parse::<usize>().is_ok_and(|n| n >= 1);
            let role = if !valid {
                "not valid: ignored"
            } else if self.static_env.contains(name) {
                "from budget run --static-env, for programs that are not budget-enabled"
            } else if *name == "RAYON_NUM_THREADS" {
                "rayon's global pool; budget's pools ignore it"
            } else {
                "caps s.native for its libraries"
            };
            write!(f, "\n{:<23} {value:?} ({role})", format!("{name}:"))?;
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
/// # use budget_core as budget;
/// let report = budget::detect();
/// println!("{report}");
/// assert!(report.total >= 1 && report.total <= budget::MAX_THREADS);
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
/// # use budget_core as budget;
/// let cores = budget::available_cores();
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
    let thread_variables: Vec<(&'static str, String)> = THREAD_VARIABLES
        .iter()
        .filter_map(|&name| env(name).map(|v| (name, v)))
        .collect();
    let static_env = thread_variables
        .iter()
        .filter(|(name, value)| static_env::set_by_run(env, name, value))
        .map(|(name, _)| *name)
        .collect();
    Detected {
        total,
        source,
        available_parallelism: inputs.available_parallelism,
        affinity: inputs.affinity,
        online: inputs.online,
        cgroup_quota: inputs.cgroup_quota,
        slurm_cpus_per_task: slurm_cpus_per_task(env),
        slurm_cpus_per_task_raw: env(ENV_SLURM_CPUS_PER_TASK),
        budget_num_threads: env(ENV_NUM_THREADS),
        thread_variables,
        static_env,
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
    let below_mask = |n: usize| inputs.affinity.is_none_or(|a| n < a);
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

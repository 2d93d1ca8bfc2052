//! How many cores the process may use: the affinity mask, the cgroup CPU quota and
//! the `BUDGET_NUM_THREADS` override.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable that overrides the detected core count.
pub const ENV_NUM_THREADS: &str = "BUDGET_NUM_THREADS";

/// The largest budget accepted from `BUDGET_NUM_THREADS` or the
/// [`Builder`](crate::Builder).
pub const MAX_THREADS: usize = 4096;

/// The cores this process may use, ignoring `BUDGET_NUM_THREADS`: the CPUs in its
/// affinity mask, lowered to the cgroup (v1 or v2) CPU quota rounded down, and at
/// least 1.
///
/// A quota of 1.5 CPUs gives 1: a budget that counts the half would oversubscribe.
/// On systems other than Linux this is `std::thread::available_parallelism`.
///
/// # Examples
///
/// ```
/// let cores = budget_core::available_cores();
/// assert!(cores >= 1);
/// ```
pub fn available_cores() -> usize {
    #[cfg(target_os = "linux")]
    {
        let affinity = affinity_count().unwrap_or_else(std_parallelism);
        let quota = cgroup_quota_from_proc();
        quota.map_or(affinity, |q| q.min(affinity)).max(1)
    }
    #[cfg(not(target_os = "linux"))]
    {
        std_parallelism()
    }
}

fn std_parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The budget's total at start: `BUDGET_NUM_THREADS` when it holds a valid number,
/// the detected cores otherwise. A bad value prints one warning, never panics.
pub(crate) fn configured_total() -> usize {
    match std::env::var_os(ENV_NUM_THREADS) {
        None => available_cores(),
        Some(raw) => {
            let text = raw.to_string_lossy();
            match parse_num_threads(&text) {
                Ok(n) => n,
                Err(why) => {
                    let detected = available_cores();
                    let message = format!(
                        "budget: ignoring {ENV_NUM_THREADS}={text:?}: {why}; using the {detected} \
                         detected core(s) instead. Set it to a whole number from 1 to {MAX_THREADS}."
                    );
                    // Once per process, even if two threads race to make the budget.
                    static WARNED: AtomicBool = AtomicBool::new(false);
                    if !WARNED.swap(true, Ordering::Relaxed) {
                        tracing::warn!("{message}");
                        eprintln!("{message}");
                    }
                    detected
                }
            }
        }
    }
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

#[cfg(target_os = "linux")]
fn cgroup_quota_from_proc() -> Option<usize> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup_quota(&cgroups, &mountinfo, |p| std::fs::read_to_string(p).ok())
}

/// The CPU quota, in whole cores rounded down (at least 1), of the cgroup described
/// by `cgroups` (the text of `/proc/self/cgroup`) and `mountinfo` (of
/// `/proc/self/mountinfo`), reading control files through `read`. Every level from
/// the process's cgroup up to the mount root counts; the tightest wins. `None` when
/// no level sets a quota.
pub(crate) fn cgroup_quota(
    cgroups: &str,
    mountinfo: &str,
    read: impl Fn(&Path) -> Option<String>,
) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut consider = |cores: Option<usize>| {
        if let Some(c) = cores {
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

fn parse_cpu_max(text: &str) -> Option<usize> {
    let mut words = text.split_whitespace();
    let quota = words.next()?;
    let period = words.next().unwrap_or("100000");
    cores_from(quota, period)
}

fn cores_from(quota: &str, period: &str) -> Option<usize> {
    if quota == "max" {
        return None;
    }
    let quota: i64 = quota.parse().ok()?;
    let period: i64 = period.parse().ok()?;
    if quota <= 0 || period <= 0 {
        return None;
    }
    Some(((quota / period) as usize).max(1))
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
        assert_eq!(cgroup_quota("0::/a/b\n", V2_MOUNT, &read), Some(2));
        let tight = fs(&[
            ("/sys/fs/cgroup/a/b/cpu.max", "250000 100000\n"),
            ("/sys/fs/cgroup/a/cpu.max", "150000 100000\n"),
        ]);
        assert_eq!(cgroup_quota("0::/a/b\n", V2_MOUNT, &tight), Some(1));
    }

    #[test]
    fn v2_no_quota_and_fraction_below_one() {
        let none = fs(&[("/sys/fs/cgroup/cpu.max", "max 100000\n")]);
        assert_eq!(cgroup_quota("0::/\n", V2_MOUNT, &none), None);
        let half = fs(&[("/sys/fs/cgroup/cpu.max", "50000 100000\n")]);
        assert_eq!(cgroup_quota("0::/\n", V2_MOUNT, &half), Some(1));
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
            Some(3)
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

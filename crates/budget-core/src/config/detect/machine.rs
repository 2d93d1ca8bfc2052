//! What the kernel says about this process's CPUs: the affinity mask, the online
//! CPUs and the cgroup (v1 or v2) CPU quota, the last parsed from text so that tests
//! can feed it made-up cgroup files.
//!
//! The affinity and cgroup calls are Linux's (elsewhere they say "nothing known" and
//! std's `available_parallelism` decides); the cgroup parsers are plain functions,
//! compiled and unit-tested everywhere, used only on Linux.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::path::{Path, PathBuf};

/// The calling thread's affinity mask: `cpus[i]` is whether CPU `i` is in it.
#[cfg(target_os = "linux")]
pub(crate) fn affinity_cpus() -> Option<Vec<bool>> {
    // SAFETY: cpu_set_t is a plain bit array for which all-zeroes is a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live, writable cpu_set_t and we pass its exact size; pid 0
    // means the calling thread.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return None;
    }
    Some(
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: the index is below CPU_SETSIZE; `set` was filled above.
            .map(|cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect(),
    )
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn affinity_cpus() -> Option<Vec<bool>> {
    None
}

/// The CPUs in the calling thread's affinity mask. std counts them too but does not
/// say so apart from the quota.
pub(super) fn affinity_count() -> Option<usize> {
    affinity_cpus()
        .map(|cpus| cpus.iter().filter(|&&on| on).count())
        .filter(|&n| n > 0)
}

/// The machine's online CPUs: the size of a mask that is "the whole machine".
#[cfg(unix)]
pub(super) fn online_cpus() -> Option<usize> {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0)
}

#[cfg(not(unix))]
pub(super) fn online_cpus() -> Option<usize> {
    None
}

#[cfg(target_os = "linux")]
pub(super) fn cgroup_quota_from_proc() -> Option<f64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup_quota(&cgroups, &mountinfo, |p| std::fs::read_to_string(p).ok())
}

#[cfg(not(target_os = "linux"))]
pub(super) fn cgroup_quota_from_proc() -> Option<f64> {
    None
}

/// The CPU quota, in CPUs (not rounded), of the cgroup described by `cgroups` (the
/// text of `/proc/self/cgroup`) and `mountinfo` (of `/proc/self/mountinfo`), reading
/// control files through `read`. Every level from the process's cgroup up to the
/// mount root counts; the tightest wins. `None` when no level sets a quota.
pub(super) fn cgroup_quota(
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

//! The node budget: tokens shared by the processes of one user on one machine, as
//! classic POSIX byte-range locks (`fcntl` `F_SETLK`) on one file, one byte per
//! token. The kernel drops a process's locks when it dies, so a crash leaks no
//! token; `F_GETLK` names the holder's pid, so `budget info` can list who holds
//! what. Why this lock kind and not `flock` or open-file-description locks is in
//! `README.md` beside this file. On Windows the same bytes are locked with
//! `LockFileEx` (also released by the kernel when a process ends; no holder pid):
//! the OS calls are in `sys/`.
//!
//! One rule comes with it: a process's POSIX locks on a file all go when the process
//! closes *any* descriptor of that file. So each file is opened once per process,
//! with `O_CLOEXEC`, and that descriptor is never closed ([`Member::open`] and
//! [`inspect`] share it).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::sync::plain::Mutex;

use super::sys::{self, Lock};
use super::{is_off, ENV_NODE};

/// Whether this OS has the node budget (Unix: POSIX byte-range locks; Windows:
/// `LockFileEx`). Elsewhere every function of this module returns an
/// `ErrorKind::Unsupported` error and `BUDGET_NODE` is ignored with one warning.
///
/// # Examples
///
/// ```
/// if !budget_core::node::SUPPORTED {
///     assert!(budget_core::node::directory().is_err());
/// }
/// ```
pub const SUPPORTED: bool = sys::NODE_SUPPORTED;

/// The byte where token `i` is locked: `SLOTS_AT + i`, past the text header.
const SLOTS_AT: u64 = 4096;
/// The byte on which a process that waits for tokens holds a shared (read) lock, so
/// holders see that someone waits and give surplus back at once.
const WAIT_AT: u64 = SLOTS_AT - 1;

/// The directory of this user's node budget files: `$XDG_RUNTIME_DIR/budget`, else
/// `/dev/shm/budget-$UID` (or the temp directory's), made with mode 0700.
///
/// # Errors
///
/// When it cannot be made, or exists but belongs to another user.
///
/// # Examples
///
/// ```
/// let dir = budget_core::node::directory().unwrap();
/// assert!(dir.is_dir());
/// ```
pub fn directory() -> io::Result<PathBuf> {
    let uid = sys::uid();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(xdg) if xdg.is_absolute() && xdg.is_dir() => xdg.join("budget"),
        _ if Path::new("/dev/shm").is_dir() => PathBuf::from(format!("/dev/shm/budget-{uid}")),
        _ => std::env::temp_dir().join(format!("budget-{uid}")),
    };
    sys::private_dir(&dir)?;
    Ok(dir)
}

/// Makes a node budget file of `tokens` tokens at `path` unless one exists (made
/// atomically: written aside, then linked into place). Returns the tokens of the
/// file now at `path` (another process may have made it first).
///
/// # Errors
///
/// I/O errors, or a file at `path` that is not a node budget file.
///
/// # Examples
///
/// ```
/// let path = budget_core::node::directory().unwrap().join(format!("doc-example-{}.node", std::process::id()));
/// assert_eq!(budget_core::node::create(&path, 3).unwrap(), 3);
/// assert_eq!(budget_core::node::create(&path, 5).unwrap(), 3); // already there
/// # std::fs::remove_file(&path).unwrap();
/// ```
pub fn create(path: &Path, tokens: usize) -> io::Result<usize> {
    if !path.exists() {
        let aside = path.with_extension(format!("tmp{}", std::process::id()));
        {
            let mut file = sys::create_private(&aside)?;
            write!(
                file,
                "budget-node 1\ntokens {tokens}\ncreator {}\n",
                std::process::id()
            )?;
        }
        let linked = std::fs::hard_link(&aside, path);
        let _ = std::fs::remove_file(&aside);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    header(path).map(|(tokens, _)| tokens)
}

/// Reads a node file's header: its tokens and the pid that made it.
fn header(path: &Path) -> io::Result<(usize, Option<u32>)> {
    let file = shared_file(path)?;
    let mut text = vec![0u8; 256];
    // At offset 0, without moving the shared file offset (nobody else uses it either).
    let n = sys::read_at(file, &mut text, 0)?;
    let text = String::from_utf8_lossy(&text[..n]);
    let mut lines = text.lines();
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a budget node file", path.display()),
        )
    };
    if lines.next() != Some("budget-node 1") {
        return Err(bad());
    }
    let mut tokens = None;
    let mut creator = None;
    for line in lines {
        match line.split_once(' ') {
            Some(("tokens", n)) => tokens = n.parse::<usize>().ok(),
            Some(("creator", n)) => creator = n.parse::<u32>().ok(),
            _ => {}
        }
    }
    match tokens {
        Some(t) if (1..=crate::MAX_THREADS).contains(&t) => Ok((t, creator)),
        _ => Err(bad()),
    }
}

/// The one descriptor of each node file this process ever opens (see the module
/// docs: closing a second one would drop this process's locks). Leaked on purpose.
fn shared_file(path: &Path) -> io::Result<&'static File> {
    static FILES: Mutex<Vec<(PathBuf, &'static File)>> = Mutex::new(Vec::new());
    let mut files = FILES.lock();
    if let Some((_, file)) = files.iter().find(|(p, _)| p == path) {
        return Ok(file);
    }
    let file = sys::open_shared(path)?;
    let file: &'static File = Box::leak(Box::new(file));
    files.push((path.to_path_buf(), file));
    Ok(file)
}

/// The node file of this user, this process's CPU set and its core count (made if
/// missing): `cpus-<mask>-<cores>[-slurm<job>].node`. Disjoint cpusets get different
/// files; so do processes that count different cores on one set (a Slurm step with
/// `--cpus-per-task=1` beside a lone process), and two Slurm jobs without cpusets.
///
/// # Errors
///
/// As [`directory`] and [`create`].
///
/// # Examples
///
/// ```
/// let path = budget_core::node::for_this_cpu_set().unwrap();
/// assert!(path.file_name().unwrap().to_string_lossy().starts_with("cpus-"));
/// ```
pub fn for_this_cpu_set() -> io::Result<PathBuf> {
    let cores = crate::available_cores();
    let job = std::env::var("SLURM_JOB_ID").ok();
    let path = directory()?.join(cpu_set_file_name(&affinity_key(), cores, job.as_deref()));
    create(&path, cores)?;
    Ok(path)
}

/// The file name [`for_this_cpu_set`] uses (a Slurm job id is kept only if it is a
/// plain number, so no value can reach outside the directory).
fn cpu_set_file_name(mask: &str, cores: usize, slurm_job: Option<&str>) -> String {
    match slurm_job.filter(|j| !j.is_empty() && j.bytes().all(|b| b.is_ascii_digit())) {
        Some(job) => format!("cpus-{mask}-{cores}-slurm{job}.node"),
        None => format!("cpus-{mask}-{cores}.node"),
    }
}

/// The key of an affinity mask (`cpus[i]`: CPU `i` is in it) in a file name: hex
/// bytes, lowest CPU first, trailing zero bytes dropped (CPUs 0 and 1: `03`).
pub(crate) fn mask_key(cpus: &[bool]) -> String {
    let mut bytes: Vec<u8> = cpus
        .chunks(8)
        .map(|byte| {
            byte.iter()
                .enumerate()
                .fold(0u8, |acc, (bit, &on)| acc | (u8::from(on) << bit))
        })
        .collect();
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The affinity mask as a file-name key; "all" where the OS gives no mask.
fn affinity_key() -> String {
    crate::detect::affinity_cpus().map_or_else(|| "all".to_owned(), |cpus| mask_key(&cpus))
}

/// This process's membership in a node budget: the node tokens it holds, as locks.
///
/// # Examples
///
/// ```
/// let path = budget_core::node::directory().unwrap().join(format!("doc-member-{}.node", std::process::id()));
/// budget_core::node::create(&path, 2).unwrap();
/// let member = budget_core::node::Member::open(&path).unwrap();
/// assert_eq!(member.try_take(5), 2); // both tokens, no more
/// assert_eq!(member.held(), 2);
/// member.give_back(2);
/// assert_eq!(member.held(), 0);
/// # std::fs::remove_file(&path).unwrap();
/// ```
#[derive(Debug)]
pub struct Member {
    file: &'static File,
    path: PathBuf,
    tokens: usize,
    /// The slots this process holds locks on.
    slots: Mutex<Vec<usize>>,
    /// Whether this process holds its read lock on the wait byte.
    waiting: AtomicBool,
    /// Where the next take looks first.
    cursor: AtomicUsize,
}

impl Member {
    /// Joins the node budget at `path` (holding nothing yet).
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or is not a node budget file.
    pub fn open(path: &Path) -> io::Result<Member> {
        let file = shared_file(path)?;
        let (tokens, _) = header(path)?;
        Ok(Member {
            file,
            path: path.to_path_buf(),
            tokens,
            slots: Mutex::new(Vec::new()),
            waiting: AtomicBool::new(false),
            cursor: AtomicUsize::new(0),
        })
    }

    /// The node budget file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tokens the node budget shares.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Node tokens this process holds through this member.
    pub fn held(&self) -> usize {
        self.slots.lock().len()
    }

    /// Takes up to `n` free node tokens without waiting; returns how many.
    pub fn try_take(&self, n: usize) -> usize {
        self.take_looking_at(n, self.tokens)
    }

    /// Takes up to `n` free node tokens for a region that starts now: as
    /// [`Member::try_take`], but with a bounded number of attempts (`2n + 8` bytes),
    /// so that a region entry in a large node costs a few system calls, not one per
    /// token of the node. Returns how many.
    pub fn try_take_now(&self, n: usize) -> usize {
        self.take_looking_at(n, 2 * n + 8)
    }

    /// Takes up to `n` free node tokens, trying at most `tries` bytes (all of them
    /// when `tries` reaches the node's size), from the one after the byte tried last.
    fn take_looking_at(&self, n: usize, tries: usize) -> usize {
        let mut slots = self.slots.lock();
        let mut at = self.cursor.load(Ordering::Relaxed);
        let mut got = 0;
        for _ in 0..tries.min(self.tokens) {
            if got == n {
                break;
            }
            let slot = at % self.tokens;
            at = slot + 1;
            if !slots.contains(&slot)
                && sys::lock(self.file, Lock::Exclusive, SLOTS_AT + slot as u64).is_ok()
            {
                slots.push(slot);
                got += 1;
            }
        }
        // Relaxed: a hint of where to look next, under the `slots` lock anyway.
        self.cursor.store(at % self.tokens, Ordering::Relaxed);
        got
    }

    /// Gives back up to `n` node tokens (the last taken first).
    pub fn give_back(&self, n: usize) {
        let mut slots = self.slots.lock();
        for _ in 0..n {
            let Some(slot) = slots.pop() else { break };
            // Unlocking a byte we hold cannot fail but for a bad descriptor.
            let _ = sys::lock(self.file, Lock::Unlock, SLOTS_AT + slot as u64);
        }
    }

    /// Says (or stops saying) that this process waits for node tokens: holders then
    /// give their surplus back without a linger.
    pub fn set_waiting(&self, waiting: bool) {
        if self.waiting.swap(waiting, Ordering::Relaxed) != waiting {
            let kind = if waiting { Lock::Shared } else { Lock::Unlock };
            if sys::lock(self.file, kind, WAIT_AT).is_err() && waiting {
                // Not said (on Windows a holder may be probing the byte this very
                // moment): say it again at the next call.
                self.waiting.store(false, Ordering::Relaxed);
            }
        }
    }

    /// Whether another process waits for node tokens.
    pub fn others_waiting(&self) -> bool {
        if sys::HOLDER_SEES_OWN && self.waiting.load(Ordering::Relaxed) {
            // Our own shared lock hides the others' (Windows): we wait ourselves, so
            // there is no surplus to give back early anyway.
            return false;
        }
        sys::holder(self.file, WAIT_AT).is_some()
    }
}

/// A process holding node tokens, from [`inspect`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// Its process id.
    pub pid: u32,
    /// Its command line (from `/proc/<pid>/cmdline`), empty if unreadable.
    pub command: String,
    /// The node tokens it holds.
    pub tokens: usize,
}

/// What a node budget file holds now, from [`inspect`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// The file.
    pub path: PathBuf,
    /// The tokens it shares.
    pub tokens: usize,
    /// The pid that made it.
    pub creator: Option<u32>,
    /// The processes holding its tokens, most tokens first.
    pub holders: Vec<Holder>,
    /// A process waiting for tokens, if any (one of them).
    pub waiting: Option<u32>,
}

/// Who holds the tokens of the node budget at `path` (other processes: a process's
/// own locks never conflict with itself).
///
/// # Errors
///
/// When the file cannot be read or is not a node budget file.
///
/// # Examples
///
/// ```
/// let path = budget_core::node::directory().unwrap().join(format!("doc-inspect-{}.node", std::process::id()));
/// budget_core::node::create(&path, 2).unwrap();
/// let report = budget_core::node::inspect(&path).unwrap();
/// assert_eq!(report.tokens, 2);
/// assert!(report.holders.is_empty());
/// # std::fs::remove_file(&path).unwrap();
/// ```
pub fn inspect(path: &Path) -> io::Result<Report> {
    let file = shared_file(path)?;
    let (tokens, creator) = header(path)?;
    let mut holders: Vec<Holder> = Vec::new();
    for slot in 0..tokens {
        if let Some(pid) = sys::holder(file, SLOTS_AT + slot as u64) {
            match holders.iter_mut().find(|h| h.pid == pid) {
                Some(h) => h.tokens += 1,
                None => holders.push(Holder {
                    pid,
                    command: command_of(pid),
                    tokens: 1,
                }),
            }
        }
    }
    holders.sort_by(|a, b| b.tokens.cmp(&a.tokens).then(a.pid.cmp(&b.pid)));
    Ok(Report {
        path: path.to_path_buf(),
        tokens,
        creator,
        holders,
        waiting: sys::holder(file, WAIT_AT),
    })
}

/// The node budget files in [`directory`].
///
/// # Examples
///
/// ```
/// for path in budget_core::node::list() {
///     println!("{}", path.display());
/// }
/// ```
pub fn list() -> Vec<PathBuf> {
    let Ok(dir) = directory() else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "node"))
        .collect();
    paths.sort();
    paths
}

fn command_of(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The node budget named by `BUDGET_NODE`, joined; `None` (with one warning when the
/// value names nothing usable) otherwise.
pub(crate) fn from_env() -> Option<(Member, usize)> {
    let value = std::env::var_os(ENV_NODE)?;
    let text = value.to_string_lossy().into_owned();
    if is_off(&text) {
        return None;
    }
    let path = if matches!(
        text.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    ) {
        for_this_cpu_set()
    } else {
        Ok(PathBuf::from(&text))
    };
    match path.and_then(|p| Member::open(&p)) {
        Ok(member) => {
            let tokens = member.tokens();
            Some((member, tokens))
        }
        Err(error) => {
            super::jobserver::warn_once(&format!(
                "budget: ignoring {ENV_NODE}={text:?}: {error}; using this process's own budget"
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mask_key;

    #[test]
    fn cpu_set_files_are_per_size_and_slurm_job() {
        use super::cpu_set_file_name as name;
        assert_eq!(name("03", 2, None), "cpus-03-2.node");
        assert_ne!(name("03", 1, None), name("03", 2, None));
        assert_eq!(name("03", 2, Some("4711")), "cpus-03-2-slurm4711.node");
        assert_eq!(name("03", 2, Some("../x")), "cpus-03-2.node");
        assert_eq!(name("03", 2, Some("")), "cpus-03-2.node");
    }

    #[test]
    fn mask_keys_name_cpu_sets() {
        let cpus = |on: &[usize], n: usize| (0..n).map(|i| on.contains(&i)).collect::<Vec<_>>();
        assert_eq!(mask_key(&cpus(&[0, 1], 1024)), "03");
        assert_eq!(mask_key(&cpus(&[8], 1024)), "0001");
        assert_eq!(mask_key(&cpus(&[0, 9, 15], 16)), "0182");
        assert_eq!(mask_key(&cpus(&[], 64)), "");
    }
}

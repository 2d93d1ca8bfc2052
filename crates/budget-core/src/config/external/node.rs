//! The node budget: tokens shared by the processes of one user on one machine, as
//! byte-range locks on one file, one byte per token. The kernel drops a process's
//! locks when it dies, so a crash leaks no token. The lock kind, per OS (in `sys/`):
//!
//! - Linux: open-file-description locks (`F_OFD_SETLK`), owned by the one open of
//!   the file that took them. A program that opens and closes the node file itself
//!   drops nothing, and two [`Member`]s in one process conflict as two processes
//!   would. A forked child closes its copy of the parent's open at once.
//! - macOS and the BSDs: classic POSIX locks (`F_SETLK`), owned by the process. Their
//!   trap: closing *any* descriptor of the file drops all of the process's locks on
//!   it. So each file is opened once per process (`O_CLOEXEC`) and never closed, and
//!   the members of one process share a table of the slots they hold.
//! - Windows: `LockFileEx`, owned by the handle, as Linux's.
//!
//! Why these and not `flock` is argued in `README.md` beside this file.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

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
/// # use budget_core as budget;
/// if !budget::node::SUPPORTED {
///     assert!(budget::node::directory().is_err());
/// }
/// ```
pub const SUPPORTED: bool = sys::NODE_SUPPORTED;

/// The byte where token `i` is locked: `SLOTS_AT + i`, past the text header.
const SLOTS_AT: u64 = 4096;
/// Where the wait bytes start. A process that waits for tokens holds a shared (read)
/// lock on the wait byte of the current *epoch* (`EPOCH_NS` long), moving it as time
/// passes, so holders see that someone waits and give surplus back at once. Holders
/// look at the bytes of this epoch and the one before: a waiter that stopped moving
/// (SIGSTOP, Ctrl-Z, a debugger, a frozen cgroup) is seen as waiting for two epochs
/// at most, not for as long as it is stopped.
const WAIT_AT: u64 = 1 << 30;
/// How many wait bytes there are (the epochs wrap after `WAIT_EPOCHS * EPOCH_NS`,
/// 19 days). `WAIT_AT + WAIT_EPOCHS` stays below 2^31: a 32-bit `off_t` holds it.
const WAIT_EPOCHS: u64 = 1 << 24;
/// The length of an epoch of the wait bytes: 100 ms.
const EPOCH_NS: u64 = 100_000_000;

/// The current epoch of the wait bytes (`CLOCK_MONOTONIC`, shared by the processes
/// of a machine).
fn epoch_now() -> u64 {
    sys::monotonic_ns() / EPOCH_NS
}

/// The wait byte of `epoch`.
fn wait_byte(epoch: u64) -> u64 {
    WAIT_AT + epoch % WAIT_EPOCHS
}

/// The directory of this user's node budget files: the first of
/// `$XDG_RUNTIME_DIR/budget`, `/dev/shm/budget-$UID` and the temp directory's
/// `budget-$UID` that can be made (mode 0700) or is already this user's. A runtime
/// directory that is unset, relative or not a directory is skipped; one where
/// `budget` cannot be made (read-only, taken by a file or by another user) falls
/// through to the next.
///
/// # Errors
///
/// When none of them can be made or is this user's: the error names each path tried
/// and why it failed.
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// let dir = budget::node::directory().unwrap();
/// assert!(dir.is_dir());
/// ```
pub fn directory() -> io::Result<PathBuf> {
    let uid = sys::uid();
    let mut tried = Vec::new();
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if xdg.is_absolute() && xdg.is_dir() {
            tried.push(xdg.join("budget"));
        }
    }
    if Path::new("/dev/shm").is_dir() {
        tried.push(PathBuf::from(format!("/dev/shm/budget-{uid}")));
    }
    tried.push(std::env::temp_dir().join(format!("budget-{uid}")));
    let mut failures = Vec::new();
    let mut kind = io::ErrorKind::PermissionDenied;
    for dir in tried {
        match sys::private_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => return Err(e),
            Err(e) => {
                kind = e.kind();
                // make_dir's own message names the path already.
                let text = e.to_string();
                failures.push(if text.contains(&*dir.to_string_lossy()) {
                    text
                } else {
                    format!("{}: {text}", dir.display())
                });
            }
        }
    }
    Err(io::Error::new(
        kind,
        format!(
            "no directory for node budget files ({}); set XDG_RUNTIME_DIR to a directory \
             of yours",
            failures.join("; ")
        ),
    ))
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
/// # use budget_core as budget;
/// let path = budget::node::directory().unwrap().join(format!("doc-example-{}.node", std::process::id()));
/// assert_eq!(budget::node::create(&path, 3).unwrap(), 3);
/// assert_eq!(budget::node::create(&path, 5).unwrap(), 3); // already there
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
    let file = opened(path)?;
    let mut text = vec![0u8; 256];
    // At offset 0, without moving the file offset (shared with nobody but us).
    let n = sys::read_at(file.file(), &mut text, 0)?;
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

/// An open node file, to read or to look at its locks: a fresh open where locks
/// belong to the open ([`sys::PER_OPEN`]: closing it drops nothing of ours), else the
/// one open of the file this process keeps ([`Shared`]).
enum Opened {
    Fresh(File),
    Shared(&'static Shared),
}

impl Opened {
    fn file(&self) -> &File {
        match self {
            Opened::Fresh(file) => file,
            Opened::Shared(shared) => shared.file,
        }
    }
}

fn opened(path: &Path) -> io::Result<Opened> {
    if sys::PER_OPEN {
        sys::open_shared(path).map(Opened::Fresh)
    } else {
        shared(path).map(Opened::Shared)
    }
}

/// With process-owned (classic POSIX) locks: the one open of a node file this process
/// ever makes (closing a second one would drop this process's locks), and the slots
/// its members hold on it (their locks do not conflict with each other, so they
/// must not both take one slot). Leaked on purpose.
#[derive(Debug)]
struct Shared {
    file: &'static File,
    /// Per slot: held by a member of this process. Reset in a forked child, which
    /// holds none of its parent's locks.
    taken: Mutex<(usize, Vec<bool>)>,
}

fn shared(path: &Path) -> io::Result<&'static Shared> {
    static FILES: Mutex<Vec<(PathBuf, &'static Shared)>> = Mutex::new(Vec::new());
    let mut files = FILES.lock();
    if let Some((_, shared)) = files.iter().find(|(p, _)| p == path) {
        return Ok(shared);
    }
    let shared: &'static Shared = Box::leak(Box::new(Shared {
        file: Box::leak(Box::new(sys::open_shared(path)?)),
        taken: Mutex::new((crate::pool::fork::generation(), Vec::new())),
    }));
    files.push((path.to_path_buf(), shared));
    Ok(shared)
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
/// # use budget_core as budget;
/// let path = budget::node::for_this_cpu_set().unwrap();
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
    crate::config::detect::affinity_cpus().map_or_else(|| "all".to_owned(), |cpus| mask_key(&cpus))
}

/// This process's membership in a node budget: the node tokens it holds, as locks.
///
/// Two members of one file in one process never hold more than the node's tokens
/// between them.
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// let path = budget::node::directory().unwrap().join(format!("doc-member-{}.node", std::process::id()));
/// budget::node::create(&path, 2).unwrap();
/// let member = budget::node::Member::open(&path).unwrap();
/// assert_eq!(member.try_take(5), 2); // both tokens, no more
/// assert_eq!(member.held(), 2);
/// member.give_back(2);
/// assert_eq!(member.held(), 0);
/// # std::fs::remove_file(&path).unwrap();
/// ```
#[derive(Debug)]
pub struct Member {
    file: &'static File,
    /// The process-wide table of slots held on this file (classic POSIX locks), or
    /// `None` where this member's open owns its locks.
    shared: Option<&'static Shared>,
    path: PathBuf,
    tokens: usize,
    /// The fork generation this member was opened in: in a forked child it holds
    /// nothing and touches nothing (on Linux its descriptor is closed there).
    generation: usize,
    /// The slots this member holds locks on, the last taken last; and per slot,
    /// whether it is among them.
    slots: Mutex<(Vec<usize>, Vec<bool>)>,
    /// The wait byte this member holds its shared lock on, if it waits.
    waiting: Mutex<Option<u64>>,
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
        let (tokens, _) = header(path)?;
        let (file, shared) = if sys::PER_OPEN {
            let file: &'static File = Box::leak(Box::new(sys::open_shared(path)?));
            sys::forget_in_child(file);
            (file, None)
        } else {
            let shared = shared(path)?;
            (shared.file, Some(shared))
        };
        Ok(Member {
            file,
            shared,
            path: path.to_path_buf(),
            tokens,
            generation: crate::pool::fork::generation(),
            slots: Mutex::new((Vec::new(), vec![false; tokens])),
            waiting: Mutex::new(None),
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

    /// Node tokens this process holds through this member (none in a child forked
    /// from the process that opened it).
    pub fn held(&self) -> usize {
        if self.stale() {
            return 0;
        }
        self.slots.lock().0.len()
    }

    /// Whether this member was opened before a `fork` of this process.
    fn stale(&self) -> bool {
        self.generation != crate::pool::fork::generation()
    }

    /// Takes up to `n` free node tokens without waiting; returns how many.
    ///
    /// It asks the kernel where others' locks lie (`F_GETLK` over ranges) and tries
    /// only bytes outside them, so a look costs a few system calls per run of locked
    /// bytes, not one per token of the node: a process that waits in a node of 4096
    /// tokens one other process holds polls at the cost of one of 4 (tokens whose
    /// holders interleave cost more: one query per run, see `README.md`).
    pub fn try_take(&self, n: usize) -> usize {
        self.take_looking_at(n, 2 * n + 64)
    }

    /// Takes up to `n` free node tokens for a region that starts now: as
    /// [`Member::try_take`], but with fewer system calls at most (`2n + 8`), so that
    /// a region entry costs a few. Returns how many.
    pub fn try_take_now(&self, n: usize) -> usize {
        self.take_looking_at(n, 2 * n + 8)
    }

    /// Takes up to `n` free node tokens with at most `calls` system calls, looking
    /// from the byte after the one tried last.
    fn take_looking_at(&self, n: usize, calls: usize) -> usize {
        if n == 0 || self.stale() {
            return 0;
        }
        let mut slots = self.slots.lock();
        let mut shared = self.shared.map(|s| {
            let mut taken = s.taken.lock();
            if taken.0 != self.generation || taken.1.len() < self.tokens {
                // First use here, or a forked child: it holds none of the parent's.
                *taken = (self.generation, vec![false; self.tokens]);
            }
            taken
        });
        let start = self.cursor.load(Ordering::Relaxed) % self.tokens;
        // Ranges still to look at, the next one last: from the cursor to the end,
        // then from the start to the cursor.
        let mut todo = vec![(0, start), (start, self.tokens)];
        let (mut got, mut spent, mut next) = (0, 0, start);
        while let Some((lo, hi)) = todo.pop() {
            if got == n || spent >= calls {
                break;
            }
            if lo >= hi {
                continue;
            }
            spent += 1;
            let len = (hi - lo) as u64;
            if let Some((s, e)) = sys::first_conflict(self.file, SLOTS_AT + lo as u64, len) {
                // Others hold [s, e): look on both sides of it, the lower first.
                let s = (s.saturating_sub(SLOTS_AT) as usize).clamp(lo, hi);
                let e = (e.saturating_sub(SLOTS_AT).min(hi as u64) as usize).max(s + 1);
                todo.push((e, hi));
                todo.push((lo, s));
                next = e % self.tokens;
                continue;
            }
            // Nobody else holds a byte of [lo, hi) (or did not a moment ago).
            for slot in lo..hi {
                if got == n || spent >= calls {
                    break;
                }
                let ours = slots.1[slot] || shared.as_ref().is_some_and(|t| t.1[slot]);
                next = (slot + 1) % self.tokens;
                if ours {
                    continue;
                }
                spent += 1;
                if sys::lock(self.file, Lock::Exclusive, SLOTS_AT + slot as u64).is_ok() {
                    slots.0.push(slot);
                    slots.1[slot] = true;
                    if let Some(taken) = shared.as_mut() {
                        taken.1[slot] = true;
                    }
                    got += 1;
                }
            }
        }
        // Relaxed: a hint of where to look next, under the `slots` lock anyway.
        self.cursor.store(next, Ordering::Relaxed);
        got
    }

    /// Gives back up to `n` node tokens (the last taken first).
    pub fn give_back(&self, n: usize) {
        if self.stale() {
            return; // a forked child: the locks are the parent's
        }
        let mut slots = self.slots.lock();
        let mut shared = self.shared.map(|s| s.taken.lock());
        for _ in 0..n {
            let Some(slot) = slots.0.pop() else { break };
            slots.1[slot] = false;
            // Unlocking a byte we hold cannot fail but for a bad descriptor.
            let _ = sys::lock(self.file, Lock::Unlock, SLOTS_AT + slot as u64);
            if let Some(taken) = shared.as_mut().filter(|t| t.0 == self.generation) {
                taken.1[slot] = false;
            }
        }
    }

    /// Says (or stops saying) that this process waits for node tokens: holders then
    /// give their surplus back without a linger. Call it again while waiting (the
    /// supplier does at every tick): the wait byte moves with the epoch, and a
    /// waiter that stops calling stops being seen within two epochs.
    pub fn set_waiting(&self, waiting: bool) {
        if self.stale() {
            return;
        }
        let mut held = self.waiting.lock();
        let want = waiting.then(|| wait_byte(epoch_now()));
        if *held == want {
            return;
        }
        if let Some(byte) = want {
            if sys::lock(self.file, Lock::Shared, byte).is_err() {
                // Not said (on Windows a holder may be probing the byte this very
                // moment): the old byte, if any, still says it; try at the next call.
                return;
            }
        }
        if let Some(old) = held.take() {
            let _ = sys::lock(self.file, Lock::Unlock, old);
        }
        *held = want;
    }

    /// Whether another process waits for node tokens (a waiter seen at this epoch's
    /// wait byte or the last one's).
    pub fn others_waiting(&self) -> bool {
        if self.stale() {
            return false;
        }
        if sys::HOLDER_SEES_OWN && self.waiting.lock().is_some() {
            // Our own shared lock hides the others' (Windows): we wait ourselves, so
            // there is no surplus to give back early anyway.
            return false;
        }
        let now = epoch_now();
        [now, now.wrapping_sub(1)]
            .iter()
            .any(|&e| sys::holder(self.file, wait_byte(e)).is_some())
    }
}

impl Drop for Member {
    /// Gives back every token and the wait byte, and closes this member's own open
    /// of the file (Linux); nothing in a forked child, where they are the parent's.
    fn drop(&mut self) {
        if self.stale() {
            return;
        }
        let held = self.slots.lock().0.len();
        self.give_back(held);
        self.set_waiting(false);
        if self.shared.is_none() {
            // Out of the fork table first: a child forked after this must not close a
            // descriptor number reused by then.
            sys::forget_in_child_undo(self.file);
            // SAFETY: `open` leaked this `File` from a `Box` for this member alone
            // (`shared` is None), nothing else refers to it, and `self` is going.
            drop(unsafe { Box::from_raw(std::ptr::from_ref(self.file).cast_mut()) });
        }
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

/// Who holds the tokens of the node budget at `path` (on Linux every process, this
/// one included; with classic POSIX locks, as on macOS, the other processes: a
/// process's own locks never conflict with itself).
///
/// # Errors
///
/// When the file cannot be read or is not a node budget file.
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// let path = budget::node::directory().unwrap().join(format!("doc-inspect-{}.node", std::process::id()));
/// budget::node::create(&path, 2).unwrap();
/// let report = budget::node::inspect(&path).unwrap();
/// assert_eq!(report.tokens, 2);
/// assert!(report.holders.is_empty());
/// # std::fs::remove_file(&path).unwrap();
/// ```
pub fn inspect(path: &Path) -> io::Result<Report> {
    let (tokens, creator) = header(path)?;
    let opened = opened(path)?;
    let file = opened.file();
    let slots = SLOTS_AT..SLOTS_AT + tokens as u64;
    let now = epoch_now();
    let wait_bytes = [wait_byte(now), wait_byte(now.wrapping_sub(1))];
    let mut counts: Vec<(u32, usize)> = Vec::new();
    let mut add = |pid: u32, n: usize| match counts.iter_mut().find(|(p, _)| *p == pid) {
        Some((_, t)) => *t += n,
        None => counts.push((pid, n)),
    };
    let mut waiting = None;
    // Where the lock query names no pid (Linux's OFD locks), the owners come from
    // the OS's list of locks per open file; otherwise, and if that list shows none
    // (another user's processes, `hidepid`), one query per byte.
    let listed = sys::owners(file).filter(|locks| !locks.is_empty());
    if let Some(mut locks) = listed {
        // Every descriptor of one open file lists its locks (a duplicate, a child
        // before it closed its copy): count each range once. Token locks are
        // exclusive, so two owners never hold one range.
        locks.sort_unstable_by_key(|&(pid, start, end)| (start, end, pid));
        locks.dedup_by_key(|&mut (_, start, end)| (start, end));
        for &(pid, start, end) in &locks {
            let overlap = end.min(slots.end).saturating_sub(start.max(slots.start));
            if overlap > 0 {
                add(pid, overlap as usize);
            }
            if waiting.is_none() && wait_bytes.iter().any(|b| (start..end).contains(b)) {
                waiting = Some(pid);
            }
        }
    } else {
        for slot in slots {
            if let Some(pid) = sys::holder(file, slot) {
                add(pid, 1);
            }
        }
        waiting = wait_bytes.iter().find_map(|&b| sys::holder(file, b));
    }
    let mut holders: Vec<Holder> = counts
        .into_iter()
        .map(|(pid, tokens)| Holder {
            pid,
            command: command_of(pid),
            tokens,
        })
        .collect();
    holders.sort_by(|a, b| b.tokens.cmp(&a.tokens).then(a.pid.cmp(&b.pid)));
    Ok(Report {
        path: path.to_path_buf(),
        tokens,
        creator,
        holders,
        waiting,
    })
}

/// The node budget files in [`directory`].
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// for path in budget::node::list() {
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
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            super::warn_once(&format!(
                "budget: the node budget {text:?} ({ENV_NODE}) is gone: the `budget run` that \
                 made it has ended; using this process's own budget"
            ));
            None
        }
        Err(error) => {
            super::warn_once(&format!(
                "budget: ignoring {ENV_NODE}={text:?}: {error}; using this process's own budget"
            ));
            None
        }
    }
}

/// Whether `BUDGET_NODE` names a node budget file that does not exist: the tree's
/// budget has ended (a process started after its `budget run` exited), and the
/// jobserver in the environment is that run's pipe, which nobody fills any more.
pub(crate) fn named_but_gone() -> bool {
    std::env::var_os(ENV_NODE).is_some_and(|value| {
        let text = value.to_string_lossy();
        let path = Path::new(&*text);
        // Gone only when the OS says so (an unreadable directory is not "gone").
        !is_off(&text) && path.is_absolute() && matches!(path.try_exists(), Ok(false))
    })
}

#[cfg(test)]
mod tests {
    use super::mask_key;

    #[cfg(unix)]
    fn test_node(name: &str, tokens: usize) -> std::path::PathBuf {
        let path = super::directory()
            .unwrap()
            .join(format!("unit-{name}-{}.node", std::process::id()));
        let _ = std::fs::remove_file(&path);
        super::create(&path, tokens).unwrap();
        path
    }

    /// Two members of one file in one process share its tokens, not double them
    /// (they took 4 of a 2-token node when they shared one process-owned lock set);
    /// and reading the file through a descriptor of one's own drops nobody's locks.
    #[test]
    #[cfg_attr(miri, ignore = "fcntl locks: foreign calls")]
    #[cfg(unix)]
    fn two_members_in_one_process_share_the_tokens() {
        let path = test_node("two-members", 2);
        let a = super::Member::open(&path).unwrap();
        let b = super::Member::open(&path).unwrap();
        assert_eq!(a.try_take(2), 2);
        assert_eq!(
            b.try_take(2),
            0,
            "the second member took tokens the first holds"
        );
        std::fs::read(&path).unwrap(); // an open and a close of the user's own
        assert_eq!(
            b.try_take(2),
            0,
            "closing a descriptor dropped the first's locks"
        );
        assert_eq!(b.try_take_now(2), 0);
        a.give_back(1);
        assert_eq!(b.try_take(2), 1);
        assert_eq!((a.held(), b.held()), (1, 1));
        a.give_back(1);
        b.give_back(1);
        assert_eq!(a.try_take(5), 2);
        a.give_back(2);
        std::fs::remove_file(&path).unwrap();
    }

    /// A take looks past runs of bytes others hold with one query each, and finds
    /// the free ones wherever they are: 150 free tokens among 300, in two runs
    /// between runs others hold, cost 150 locks and a handful of queries (a byte by
    /// byte look would need 300 calls).
    #[test]
    #[cfg_attr(miri, ignore = "fcntl locks: foreign calls")]
    #[cfg(unix)]
    fn a_take_skips_runs_that_others_hold() {
        let path = test_node("runs", 300);
        let a = super::Member::open(&path).unwrap();
        let b = super::Member::open(&path).unwrap();
        let c = super::Member::open(&path).unwrap();
        assert_eq!(a.try_take(300), 300); // slots 0..300
        a.give_back(100); // 200..300 free
        assert_eq!(b.try_take(50), 50); // 200..250
        a.give_back(100); // 100..200 free: a 0..100, b 200..250
        assert_eq!(c.take_looking_at(150, 150 + 8), 150);
        assert_eq!(c.try_take(1), 0);
        a.give_back(100);
        b.give_back(50);
        c.give_back(150);
        assert_eq!(c.try_take(300), 300);
        c.give_back(300);
        std::fs::remove_file(&path).unwrap();
    }

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

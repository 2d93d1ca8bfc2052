//! One budget per process, also when cargo cannot see two copies of budget-core.
//!
//! `links = "budget-threads-core"` makes cargo refuse a dependency graph with two
//! copies. Copies it cannot see still meet in one process: two Python extension
//! modules that each link budget-core statically, a plugin (`cdylib`) loaded by an
//! application that has its own copy. Each copy has its own statics, so each would
//! count the machine's cores as its own.
//!
//! **The handshake.** The first copy to start its budget publishes a table of `extern
//! "C"` calls ([`Published`]: take tokens, give them back, the total) at a name of
//! this process's own: a POSIX shared-memory object `/budget-threads-<pid>-<start
//! time>` (made with `O_EXCL`, so exactly one copy publishes; the start time keeps a
//! reused pid from finding a dead process's table) holding the table's address. A
//! later copy finds it and joins that budget as an outside budget: its supplier
//! takes tokens from the first copy (`Backend::Copy` in `mod.rs`), so the process
//! counts each core once. Function pointers are valid across copies: they live in one
//! address space.
//!
//! **Versions.** The table starts with a magic number and [`HANDSHAKE_ABI`]; a copy
//! that finds another ABI refuses to start a budget of its own and says so: its
//! regions run at width 1 (never double counting). The crate version is in the table
//! for that message.
//!
//! The name goes at exit (`atexit`); one left by a process that ended otherwise
//! (`_exit`, a signal) is removed by the next process that publishes.
//!
//! **Limits.** Linux only (the name needs `/proc/self/stat`'s start time); on macOS
//! and Windows copies cargo cannot see still count twice (docs: README, Platforms).
//! The first copy must stay loaded while others run (Python never unloads extension
//! modules; a plugin host that `dlclose`s the first copy must not). A forked child
//! has another pid: its copies meet afresh.

// Off Linux the handshake is not built (see the module docs): its table and checks
// stay, unused, so that the ABI constant and the docs are the same everywhere.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

/// The handshake's ABI version: bumped whenever the table copies publish or the meaning of its
/// calls changes. Copies with different ABIs do not share a budget (the later one
/// runs at width 1 and says why).
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// assert!(budget::HANDSHAKE_ABI >= 1);
/// ```
pub const HANDSHAKE_ABI: u32 = 1;

/// "budget" and a 1: the first word of every table.
const MAGIC: u64 = 0x6275_6467_6574_0001;

/// What the first copy publishes. The first two fields keep their place in every
/// ABI, so any copy can read them.
#[repr(C)]
pub(crate) struct Published {
    magic: u64,
    abi: u32,
    /// The publishing copy's crate version, NUL-padded.
    version: [u8; 24],
    /// Its budget's total.
    pub(crate) total: extern "C" fn() -> usize,
    /// Takes up to `n` of its tokens without waiting; returns how many.
    pub(crate) take: extern "C" fn(usize) -> usize,
    /// Gives back `n` tokens taken with `take`.
    pub(crate) give: extern "C" fn(usize),
}

const fn version() -> [u8; 24] {
    let text = env!("CARGO_PKG_VERSION").as_bytes();
    let mut out = [0u8; 24];
    let mut i = 0;
    while i < text.len() && i < out.len() {
        out[i] = text[i];
        i += 1;
    }
    out
}

impl Published {
    /// This copy's table: its version and ABI, and the three calls into its budget
    /// (`process.rs` defines them, over the process's registry).
    pub(crate) const fn ours(
        total: extern "C" fn() -> usize,
        take: extern "C" fn(usize) -> usize,
        give: extern "C" fn(usize),
    ) -> Published {
        Published {
            magic: MAGIC,
            abi: HANDSHAKE_ABI,
            version: version(),
            total,
            take,
            give,
        }
    }
}

/// What a copy found when its budget started.
pub(crate) enum Met {
    /// The first copy in this process (or no handshake on this OS): its own budget.
    First,
    /// Another copy's budget, to join.
    Other(&'static Published),
    /// Another copy that speaks another ABI: the message says which.
    Incompatible(String),
}

/// Publishes this copy's table, or finds the one another copy published.
pub(crate) fn meet(ours: &'static Published) -> Met {
    // Not under Miri: `shm_open` and `mmap` of another copy's table are foreign calls.
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        match linux::meet(ours) {
            Some(addr) if addr == ours as *const Published as usize => Met::First,
            // SAFETY: the address was published by a copy of budget-core in this very
            // process (the name holds our pid and start time) and points to its
            // `static OURS`, which lives as long as that copy stays loaded (see the
            // module docs); `check` reads only the fields every ABI keeps first.
            Some(addr) => check(unsafe { &*(addr as *const Published) }),
            None => Met::First,
        }
    }
    #[cfg(any(not(target_os = "linux"), miri))]
    {
        let _ = ours;
        Met::First
    }
}

/// Whether `other` is a table this copy can join.
pub(crate) fn check(other: &'static Published) -> Met {
    if other.magic != MAGIC || other.abi != HANDSHAKE_ABI {
        let version = String::from_utf8_lossy(&other.version)
            .trim_end_matches('\0')
            .to_owned();
        return Met::Incompatible(format!(
            "budget: another copy of budget-core runs in this process (version {version}, \
             handshake ABI {}) that this copy (version {}, ABI {HANDSHAKE_ABI}) cannot share \
             a budget with; not starting a second budget: this copy's regions run at width \
             1. Build both with one version of budget-threads-core.",
            other.abi,
            env!("CARGO_PKG_VERSION"),
        ));
    }
    Met::Other(other)
}

#[cfg(target_os = "linux")]
mod linux {
    use super::Published;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The start time of process `pid` (clock ticks since boot, field 22 of
    /// `/proc/<pid>/stat`); `None` when it is gone.
    fn start_of(pid: &str) -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces: count fields after its ')'.
        let after = &stat[stat.rfind(')')? + 1..];
        after.split_whitespace().nth(19).map(str::to_owned)
    }

    /// This process's handshake name: its pid and start time, so a later process
    /// that reuses the pid never reads a dead one's address.
    fn name() -> Option<std::ffi::CString> {
        let pid = std::process::id().to_string();
        let start = start_of(&pid)?;
        std::ffi::CString::new(format!("/{PREFIX}{pid}-{start}")).ok()
    }

    const PREFIX: &str = "budget-threads-";

    /// Removes the names of processes that ended without their `atexit` handler (a
    /// forked worker that left with `_exit`, a killed process): each is a page of
    /// shared memory until reboot otherwise. Run by each process that publishes.
    fn sweep() {
        let Ok(entries) = std::fs::read_dir("/dev/shm") else {
            return;
        };
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(rest) = file.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
                continue;
            };
            let Some((pid, start)) = rest.split_once('-') else {
                continue;
            };
            if start_of(pid).as_deref() != Some(start) {
                if let Ok(name) = std::ffi::CString::new(format!("/{}", file.to_string_lossy())) {
                    // SAFETY: a valid C string naming a dead process's object.
                    unsafe { libc::shm_unlink(name.as_ptr()) };
                }
            }
        }
    }

    /// The published address: ours if we are first (we publish it), the first
    /// copy's otherwise; `None` when shared memory is unusable here.
    pub(super) fn meet(ours: &'static Published) -> Option<usize> {
        let shm = name()?;
        let size = std::mem::size_of::<AtomicUsize>();
        // SAFETY: a valid C string; shm_open has no other precondition.
        let fd = unsafe {
            libc::shm_open(
                shm.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                0o600,
            )
        };
        let (fd, first) = if fd >= 0 {
            // SAFETY: our own new descriptor; sized before it is mapped.
            if unsafe { libc::ftruncate(fd, size as libc::off_t) } != 0 {
                // SAFETY: as above.
                unsafe { libc::close(fd) };
                return None;
            }
            (fd, true)
        } else {
            // SAFETY: as above, opening what another copy made.
            let fd = unsafe { libc::shm_open(shm.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC, 0) };
            if fd < 0 {
                return None;
            }
            // The maker may not have sized it yet (two threads of one process starting
            // the budget at once both get here): a mapping past the end of the object
            // raises SIGBUS when read. Wait until it is sized, at most a second.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
            loop {
                // SAFETY: stat is plain data, filled by fstat on our open descriptor.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: as above.
                let sized = unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_size as usize >= size;
                if sized {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    // SAFETY: our descriptor.
                    unsafe { libc::close(fd) };
                    return None;
                }
                std::thread::yield_now();
            }
            (fd, false)
        };
        // SAFETY: maps `size` bytes of an object at least that long, shared, at an
        // address of the kernel's choice; the descriptor can be closed afterwards.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        // SAFETY: our descriptor, no longer needed once mapped.
        unsafe { libc::close(fd) };
        if map == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: the mapping is page-aligned, at least `size` bytes, zero-filled when
        // made, and never unmapped (leaked on purpose: other copies read it); all
        // copies access it only through this atomic.
        let slot: &'static AtomicUsize = unsafe { &*(map as *const AtomicUsize) };
        if first {
            // Release pairs with the Acquire loads below: the table is a static,
            // complete before any copy reads its address.
            slot.store(ours as *const Published as usize, Ordering::Release);
            extern "C" fn unlink_at_exit() {
                if let Some(name) = name() {
                    // SAFETY: a valid C string.
                    unsafe { libc::shm_unlink(name.as_ptr()) };
                }
            }
            // SAFETY: a plain `extern "C" fn()` that lives for the whole program.
            unsafe { libc::atexit(unlink_at_exit) };
            sweep();
            return Some(ours as *const Published as usize);
        }
        // The first copy may be between its `O_EXCL` open and its store: wait for it
        // (microseconds), at most a second.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            let addr = slot.load(Ordering::Acquire);
            if addr != 0 {
                return Some(addr);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" fn zero() -> usize {
        0
    }
    extern "C" fn none(_: usize) -> usize {
        0
    }
    extern "C" fn nothing(_: usize) {}

    #[test]
    fn a_copy_with_another_abi_is_refused_with_its_version() {
        static OTHER: Published = Published {
            magic: MAGIC,
            abi: HANDSHAKE_ABI + 1,
            version: *b"9.9.9\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
            total: zero,
            take: none,
            give: nothing,
        };
        match check(&OTHER) {
            Met::Incompatible(why) => {
                assert!(why.contains("version 9.9.9"), "{why}");
                assert!(why.contains("width 1"), "{why}");
            }
            _ => panic!("another ABI was accepted"),
        }
        assert!(matches!(check(&crate::pool::process::OURS), Met::Other(_)));
    }
}

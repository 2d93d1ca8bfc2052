//! `budget run`: a process tree under one node budget, its exit status passed back.
//! The run itself is the same everywhere; what the OS adds is in `os`: on Unix the
//! tree is also offered a make jobserver backed by the node's tokens, and the signals
//! another process sends are passed on to the command; on Windows (compile-checked
//! only) the node budget alone, and Ctrl-C reaches the console's whole group by
//! itself.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use budget_core::node;

use crate::{machine_budget, RunArgs};

/// The variables `--static-env` sets.
const STATIC_VARS: [&str; 7] = [
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "RAYON_NUM_THREADS",
];

/// Runs `args.command` under a node budget of `-j` tokens (the machine's budget by
/// default); returns its exit status (125: no node budget, 126: cannot run, 127: not
/// found, 128 + n: killed by signal n).
pub(crate) fn run(args: RunArgs) -> ExitCode {
    if !node::SUPPORTED {
        eprintln!("budget run: not supported on this OS (no crash-released file locks)");
        return ExitCode::from(125);
    }
    let program = &args.command[0];
    if let Some(hint) = make_jobs_hint(&args.command) {
        eprintln!("{hint}");
    }
    let mut cmd = Command::new(program);
    cmd.args(&args.command[1..]);
    if let Some(k) = args.static_env {
        let k = k.to_string();
        for var in STATIC_VARS {
            cmd.env(var, &k);
        }
        // For programs that are not budget-enabled: budget-enabled ones see in this
        // list that the counts are ours, not a cap, and keep their dynamic widths.
        let marker = budget_core::static_env_marker(STATIC_VARS.map(|var| (var, k.as_str())));
        cmd.env(budget_core::ENV_STATIC_ENV, marker);
    }
    // Inside a tree that already shares a node budget (a `budget run` in a `budget
    // run`, or as a recipe of a make under one), join it, as a sub-make joins its
    // parent's jobserver: one pool for the whole tree. Its `-j` then caps each
    // process of this subtree (`BUDGET_NUM_THREADS`) instead of adding tokens.
    let path = match inherited_node() {
        Some(_) => {
            if let Some(cap) = args.jobs {
                cmd.env(budget_core::ENV_NUM_THREADS, cap.to_string());
            }
            // BUDGET_NODE and the tree's jobserver pass on unchanged.
            None
        }
        None => {
            let tokens = args.jobs.unwrap_or_else(|| machine_budget().total);
            let path = match make_node(tokens) {
                Ok(path) => path,
                Err(error) => {
                    eprintln!("budget: cannot make the node budget file: {error}");
                    return ExitCode::from(125);
                }
            };
            cmd.env(budget_core::ENV_NODE, &path);
            os::offer_jobserver(&path, tokens, &mut cmd);
            Some(path)
        }
    };
    os::install_forwarding();
    let status = match cmd.spawn() {
        Ok(mut child) => {
            os::note_child(child.id());
            child.wait()
        }
        Err(error) => {
            if let Some(path) = &path {
                let _ = std::fs::remove_file(path);
            }
            let name = program.to_string_lossy();
            return if error.kind() == std::io::ErrorKind::NotFound {
                eprintln!("budget: {name}: command not found");
                ExitCode::from(127)
            } else {
                eprintln!("budget: cannot run {name}: {error}");
                ExitCode::from(126)
            };
        }
    };
    if let Some(path) = &path {
        let _ = std::fs::remove_file(path);
    }
    match status {
        Ok(status) => os::exit_code(status),
        Err(error) => {
            eprintln!("budget: waiting for the command failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A one-line hint when CMD is make given its own job count (`make -j4`, `-j 4`,
/// `--jobs=4`): that count, not the budget, bounds its recipes.
fn make_jobs_hint(command: &[std::ffi::OsString]) -> Option<String> {
    let name = std::path::Path::new(command.first()?)
        .file_name()?
        .to_str()?;
    if !matches!(name, "make" | "gmake") {
        return None;
    }
    let args: Vec<&str> = command[1..].iter().filter_map(|a| a.to_str()).collect();
    let jobs = args.iter().enumerate().find_map(|(i, a)| {
        let n = a
            .strip_prefix("--jobs=")
            .or_else(|| a.strip_prefix("-j").filter(|n| !n.is_empty()))
            .or_else(|| {
                matches!(*a, "-j" | "--jobs")
                    .then(|| args.get(i + 1).copied())
                    .flatten()
            })?;
        n.parse::<usize>().ok()
    })?;
    Some(format!(
        "budget: `{name} -j{jobs}` runs up to {jobs} recipes at once whatever the budget; \
         under budget run give make no -j (it takes the budget's jobserver from MAKEFLAGS)"
    ))
}

/// The node budget this process's tree already shares: `BUDGET_NODE` naming a node
/// file that opens (a `budget run` above us, or `share_node`). `1` (the CPU set's
/// file, chosen by each process) does not count: a run makes a tree of its own then.
fn inherited_node() -> Option<PathBuf> {
    let value = std::env::var_os(budget_core::ENV_NODE)?;
    let path = PathBuf::from(value);
    (path.is_absolute() && node::Member::open(&path).is_ok()).then_some(path)
}

/// A node budget file of `tokens` for this run, named by our pid.
fn make_node(tokens: usize) -> std::io::Result<PathBuf> {
    let path = node::directory()?.join(format!("run-{}.node", std::process::id()));
    let _ = std::fs::remove_file(&path); // a stale one of a dead run with our pid
    node::create(&path, tokens)?;
    Ok(path)
}

#[cfg(unix)]
mod os {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::ExitStatusExt;
    use std::path::Path;
    use std::process::{Command, ExitCode, ExitStatus};
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::time::Duration;

    use budget_core::node;

    /// The pid of the command `budget run` waits for, for the signal handler.
    static CHILD: AtomicI32 = AtomicI32::new(0);

    /// The signals a shell passes on to its job, and `budget run` to its command.
    const FORWARDED: [libc::c_int; 7] = [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGWINCH,
    ];

    extern "C" fn forward(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
        let code = unsafe { (*info).si_code };
        // From another process (kill), not the terminal: the terminal's signals reach
        // the whole foreground group, CMD included, by themselves.
        let sent = code <= 0;
        let child = CHILD.load(Ordering::SeqCst);
        // SAFETY: kill, getpid and raise are async-signal-safe.
        unsafe {
            match signal {
                libc::SIGTSTP => {
                    // Stop the command, then ourselves, as a shell's job control does
                    // (the terminal's Ctrl-Z stopped the command already).
                    if sent && child > 0 {
                        libc::kill(child, libc::SIGTSTP);
                    }
                    libc::raise(libc::SIGSTOP);
                }
                libc::SIGCONT => {
                    // We run again (the kernel resumed us): so does the command.
                    if child > 0 {
                        libc::kill(child, libc::SIGCONT);
                    }
                }
                _ => {
                    if sent && child > 0 {
                        libc::kill(child, signal);
                    }
                }
            }
        }
    }

    /// Passes on the signals a shell passes on (HUP, INT, QUIT, TERM, USR1, USR2,
    /// WINCH) to the command, whose exit status `budget run` then returns; a TSTP
    /// stops the command and then `budget`, a CONT resumes both.
    pub(super) fn install_forwarding() {
        for signal in FORWARDED.into_iter().chain([libc::SIGTSTP, libc::SIGCONT]) {
            // SAFETY: sigaction is plain data; all-zeroes is a valid start.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = forward as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            // SAFETY: a valid action whose handler only does async-signal-safe work.
            unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
        }
    }

    /// The command's pid, for the signal handler.
    pub(super) fn note_child(pid: u32) {
        CHILD.store(pid as i32, Ordering::SeqCst);
    }

    /// The command's exit code, or 128 + the signal that killed it.
    pub(super) fn exit_code(status: ExitStatus) -> ExitCode {
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitCode::from(code as u8),
            (None, Some(signal)) => ExitCode::from((128 + signal) as u8),
            (None, None) => ExitCode::FAILURE,
        }
    }

    /// Offers the tree a make jobserver backed by the node's tokens.
    pub(super) fn offer_jobserver(path: &Path, tokens: usize, cmd: &mut Command) {
        match jobserver_bridge(path, tokens) {
            Ok(client) => client.configure_make(cmd),
            Err(error) => {
                eprintln!("budget: no jobserver for the tree ({error}); going on without")
            }
        }
    }

    /// The jobserver offered to the tree: a pipe, empty at first. A thread of ours
    /// keeps one spare byte in it while a node token is free and no budget-enabled
    /// process waits, holding a node token for each byte it put in (in the pipe or
    /// taken by make); it takes a spare byte back when a process waits, and puts at
    /// most `tokens - 1` out (make's own implicit token is the N-th).
    fn jobserver_bridge(path: &Path, tokens: usize) -> std::io::Result<jobserver::Client> {
        let client = jobserver::Client::new(0)?;
        let member = node::Member::open(path)?;
        // Our own read end with O_NONBLOCK (a new open file description via /proc, so
        // the children's blocking reads are untouched).
        let auth = client_fds(&client)?;
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(format!("/proc/self/fd/{}", auth.0))?;
        let writer = client.clone();
        std::thread::Builder::new()
            .name("budget-jobserver".into())
            .spawn(move || {
                let limit = tokens.saturating_sub(1);
                loop {
                    let spare = writer.available().unwrap_or(0);
                    let put_out = member.held();
                    if spare == 0 && put_out < limit && !member.others_waiting() {
                        if member.try_take(1) == 1 && writer.release_raw().is_err() {
                            member.give_back(1);
                        }
                    } else if spare > 1 || (spare == 1 && member.others_waiting()) {
                        let mut byte = [0u8; 1];
                        if matches!(reader.read(&mut byte), Ok(1)) {
                            member.give_back(1);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })?;
        Ok(client)
    }

    /// The read and write descriptors of a pipe client (`R,W`).
    fn client_fds(client: &jobserver::Client) -> std::io::Result<(i32, i32)> {
        let mut cmd = Command::new("true");
        client.configure(&mut cmd);
        let value = cmd
            .get_envs()
            .find(|(k, _)| *k == "CARGO_MAKEFLAGS")
            .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let auth = value
            .split_whitespace()
            .find_map(|w| w.strip_prefix("--jobserver-auth="))
            .unwrap_or("");
        match auth.split_once(',').map(|(r, w)| (r.parse(), w.parse())) {
            Some((Ok(r), Ok(w))) => Ok((r, w)),
            _ => Err(std::io::Error::other(format!(
                "unexpected jobserver {auth:?}"
            ))),
        }
    }
}

#[cfg(not(unix))]
mod os {
    use std::path::Path;
    use std::process::{Command, ExitCode, ExitStatus};

    /// No jobserver bridge here (it reads its pipe through `/proc`): the tree shares
    /// the node budget only.
    pub(super) fn offer_jobserver(_path: &Path, _tokens: usize, _cmd: &mut Command) {}

    /// Nothing to forward: Ctrl-C reaches the console's whole process group.
    pub(super) fn install_forwarding() {}

    pub(super) fn note_child(_pid: u32) {}

    /// The command's exit code.
    pub(super) fn exit_code(status: ExitStatus) -> ExitCode {
        match status.code() {
            Some(code) => ExitCode::from(code as u8),
            None => ExitCode::FAILURE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::make_jobs_hint;

    fn hint(args: &[&str]) -> Option<String> {
        let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        make_jobs_hint(&args)
    }

    #[test]
    fn make_given_its_own_job_count_gets_a_hint() {
        for args in [
            &["make", "-j4"][..],
            &["make", "-j", "4"],
            &["/usr/bin/make", "--jobs=4", "all"],
            &["gmake", "-C", "dir", "--jobs", "4"],
        ] {
            let h = hint(args).unwrap_or_else(|| panic!("no hint for {args:?}"));
            assert!(h.contains("-j4") && h.contains("4 recipes"), "{h}");
        }
        for args in [
            &["make"][..],
            &["make", "all"],
            &["make", "-j"],
            &["cargo", "-j4"],
        ] {
            assert_eq!(hint(args), None, "{args:?}");
        }
    }
}

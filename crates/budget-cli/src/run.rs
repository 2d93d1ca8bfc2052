//! `budget run`: a process tree under one node budget, also offered to it as a make
//! jobserver; signals passed on to the command, its exit status passed back. Unix
//! only (the node budget needs POSIX byte-range locks, the forwarding Unix signals);
//! elsewhere it says so.

#[cfg(unix)]
pub(crate) use unix::run;

/// `budget run` where the node budget is not built: says so (exit 125).
#[cfg(not(unix))]
pub(crate) fn run(_args: crate::RunArgs) -> std::process::ExitCode {
    eprintln!(
        "budget run: not supported on this OS (the node budget needs POSIX byte-range \
         locks; see the README's platform table)"
    );
    std::process::ExitCode::from(125)
}

#[cfg(unix)]
mod unix {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::ExitStatusExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, ExitCode};
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::time::Duration;

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

    /// The pid of the command `budget run` waits for, for the signal handler.
    static CHILD: AtomicI32 = AtomicI32::new(0);

    extern "C" fn forward(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // Only what another process sent (kill, not the terminal: the terminal's
        // SIGINT reaches the whole foreground group, CMD included, by itself).
        // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
        let code = unsafe { (*info).si_code };
        let child = CHILD.load(Ordering::SeqCst);
        if code <= 0 && child > 0 {
            // SAFETY: kill is async-signal-safe.
            unsafe { libc::kill(child, signal) };
        }
    }

    fn install_forwarding() {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: sigaction is plain data; all-zeroes is a valid start.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = forward as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            // SAFETY: a valid action whose handler only does async-signal-safe work.
            unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
        }
    }

    pub(crate) fn run(args: RunArgs) -> ExitCode {
        let tokens = args.jobs.unwrap_or_else(|| machine_budget().total);
        let path = match make_node(tokens) {
            Ok(path) => path,
            Err(error) => {
                eprintln!("budget: cannot make the node budget file: {error}");
                return ExitCode::from(125);
            }
        };
        let program = &args.command[0];
        let mut cmd = Command::new(program);
        cmd.args(&args.command[1..]);
        cmd.env(budget_core::ENV_NODE, &path);
        if let Some(k) = args.static_env {
            for var in STATIC_VARS {
                cmd.env(var, k.to_string());
            }
        }
        match jobserver_bridge(&path, tokens) {
            Ok(client) => client.configure_make(&mut cmd),
            Err(error) => {
                eprintln!("budget: no jobserver for the tree ({error}); going on without")
            }
        }
        install_forwarding();
        let status = match cmd.spawn() {
            Ok(mut child) => {
                CHILD.store(child.id() as i32, Ordering::SeqCst);
                child.wait()
            }
            Err(error) => {
                let _ = std::fs::remove_file(&path);
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
        let _ = std::fs::remove_file(&path);
        match status {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => ExitCode::from(code as u8),
                (None, Some(signal)) => ExitCode::from((128 + signal) as u8),
                (None, None) => ExitCode::FAILURE,
            },
            Err(error) => {
                eprintln!("budget: waiting for the command failed: {error}");
                ExitCode::FAILURE
            }
        }
    }

    /// A node budget file of `tokens` for this run, named by our pid.
    fn make_node(tokens: usize) -> std::io::Result<PathBuf> {
        let path = node::directory()?.join(format!("run-{}.node", std::process::id()));
        let _ = std::fs::remove_file(&path); // a stale one of a dead run with our pid
        node::create(&path, tokens)?;
        Ok(path)
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

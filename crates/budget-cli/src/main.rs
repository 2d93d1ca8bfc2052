//! `budget`: run a process tree under one node budget, and show where the budget of
//! this machine comes from. See `budget --help`.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use budget_core::node;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "budget",
    version,
    about = "One core budget for a whole process tree."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs CMD with a node budget of N tokens shared by its whole process tree.
    ///
    /// Budget-enabled programs in the tree (Rust crates built on budget, the Python
    /// module) share the N tokens: each process runs its own thread and takes more
    /// tokens only while they are free; a process that dies gives its tokens back at
    /// once. The tree also gets a make-compatible jobserver (MAKEFLAGS,
    /// CARGO_MAKEFLAGS) drawing on the same N tokens, so `make -j` and cargo inside
    /// share them; under make 4.3 only recipes marked `+` see it.
    ///
    /// Programs that are not budget-enabled get nothing from the budget: OpenMP,
    /// OpenBLAS or MKL in them start one thread per core as usual. Pass
    /// --static-env K to give them K threads each through OMP_NUM_THREADS and its kin.
    ///
    /// The exit status is CMD's (128 + the signal's number when a signal ended it);
    /// SIGINT and SIGTERM sent to budget are passed on to CMD; 127 when CMD does
    /// not exist.
    Run(RunArgs),
    /// Shows this machine's budget and where each number comes from, the jobserver
    /// or node budget this environment joins, and who holds node tokens now.
    Info {
        /// Prints one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Tokens for the whole tree (default: this machine's budget).
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = parse_jobs)]
    jobs: Option<usize>,
    /// Also sets OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS,
    /// BLIS_NUM_THREADS, VECLIB_MAXIMUM_THREADS, NUMEXPR_NUM_THREADS and
    /// RAYON_NUM_THREADS to K for programs that are not budget-enabled.
    #[arg(long = "static-env", value_name = "K", value_parser = parse_jobs)]
    static_env: Option<usize>,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

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

fn parse_jobs(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=budget_core::MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?} is not a token count: give a whole number from 1 to {}",
            budget_core::MAX_THREADS
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run(args) => run(args),
        Cmd::Info { json } => info(json),
    }
}

/// This machine's budget and what set it (`budget_core::detect`).
fn machine_budget() -> budget_core::Detected {
    budget_core::detect()
}

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

fn run(args: RunArgs) -> ExitCode {
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
        Err(error) => eprintln!("budget: no jobserver for the tree ({error}); going on without"),
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

fn info(json: bool) -> ExitCode {
    let report = machine_budget();
    // The jobserver of this environment, looked at as a budget-enabled child would.
    // SAFETY: called first thing in this short-lived process; the crate checks the
    // descriptors are pipes.
    let found = unsafe { jobserver::Client::from_env_ext(true) };
    let absent = found.client.as_ref().err().is_some_and(|e| {
        matches!(
            e.kind(),
            jobserver::FromEnvErrorKind::NoEnvVar | jobserver::FromEnvErrorKind::NoJobserver
        )
    });
    let jobserver = match (&found.var, &found.client) {
        (None, _) => serde_json::Value::Null,
        _ if absent => serde_json::Value::Null,
        (Some((var, value)), client) => serde_json::json!({
            "variable": var,
            "value": value.to_string_lossy(),
            "usable": client.is_ok(),
            "error": client.as_ref().err().map(|e| e.to_string()),
            "disabled": std::env::var(budget_core::ENV_JOBSERVER).ok(),
        }),
    };
    let node_env = std::env::var(budget_core::ENV_NODE).ok();
    let reports: Vec<serde_json::Value> = node::list()
        .iter()
        .filter_map(|p| node::inspect(p).ok())
        .map(|r| {
            let alive = r
                .creator
                .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            serde_json::json!({
                "path": r.path,
                "tokens": r.tokens,
                "creator": r.creator,
                "creator_alive": alive,
                "waiting": r.waiting,
                "holders": r.holders.iter().map(|h| serde_json::json!({
                    "pid": h.pid, "tokens": h.tokens, "command": h.command,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let value = serde_json::json!({
        "budget": report.total,
        "budget_from": report.source.key(),
        "affinity": report.affinity,
        "online": report.online,
        "cgroup_quota": report.cgroup_quota,
        "available_parallelism": report.available_parallelism,
        "SLURM_CPUS_PER_TASK": report.slurm_cpus_per_task,
        "BUDGET_NUM_THREADS": report.budget_num_threads,
        "thread_variables": report
            .thread_variables
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.as_str())))
            .collect::<serde_json::Map<_, _>>(),
        "jobserver": jobserver,
        "BUDGET_NODE": node_env,
        "node_budgets": reports,
    });
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    println!("{report}");
    match &value["jobserver"] {
        serde_json::Value::Null => println!("jobserver: none in the environment"),
        j => println!(
            "jobserver: {} ({}){}",
            j["variable"].as_str().unwrap_or(""),
            if j["usable"].as_bool() == Some(true) {
                "usable".to_owned()
            } else {
                format!("not usable: {}", j["error"].as_str().unwrap_or(""))
            },
            if node_env.is_some() {
                "; the node budget wins"
            } else {
                ""
            }
        ),
    }
    match &node_env {
        Some(v) => println!("node budget joined: BUDGET_NODE={v}"),
        None => println!("node budget joined: none (BUDGET_NODE unset)"),
    }
    for r in value["node_budgets"].as_array().into_iter().flatten() {
        println!(
            "node budget {} : {} token(s){}",
            r["path"].as_str().unwrap_or(""),
            r["tokens"],
            if r["creator_alive"] == false && r["path"].as_str().unwrap_or("").contains("run-") {
                " (stale: its budget run is gone)"
            } else {
                ""
            }
        );
        for h in r["holders"].as_array().into_iter().flatten() {
            println!(
                "  pid {:>7}  {} token(s)  {}",
                h["pid"],
                h["tokens"],
                h["command"].as_str().unwrap_or("")
            );
        }
        if let Some(pid) = r["waiting"].as_u64() {
            println!("  pid {pid:>7}  waiting for tokens");
        }
    }
    ExitCode::SUCCESS
}

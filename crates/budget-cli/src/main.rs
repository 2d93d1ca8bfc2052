//! `budget`: run a process tree under one node budget, and show where the budget of
//! this machine comes from. See `budget --help`.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

mod run;

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
    /// Inside a tree that already shares a node budget (a budget run within a budget
    /// run), it joins that budget instead of making a new one, and -j caps each
    /// process below it.
    ///
    /// Programs that are not budget-enabled get nothing from the budget: OpenMP,
    /// OpenBLAS or MKL in them start one thread per core as usual. Pass
    /// --static-env K to give them K threads each through OMP_NUM_THREADS and its kin;
    /// budget-enabled programs in the tree ignore those counts and keep their dynamic
    /// widths (a count changed inside the tree afterwards caps them as usual).
    ///
    /// The exit status is CMD's (128 + the signal's number when a signal ended it);
    /// 127 when CMD does not exist. HUP, INT, QUIT, TERM, USR1, USR2 and WINCH sent
    /// to budget are passed on to CMD; TSTP stops CMD and then budget, CONT resumes
    /// both, as a shell's job control does.
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
pub(crate) struct RunArgs {
    /// Tokens for the whole tree (default: this machine's budget).
    #[arg(
        short = 'j',
        long = "jobs",
        value_name = "N",
        value_parser = parse_jobs,
        allow_negative_numbers = true
    )]
    jobs: Option<usize>,
    /// Also sets OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS,
    /// BLIS_NUM_THREADS, VECLIB_MAXIMUM_THREADS, NUMEXPR_NUM_THREADS and
    /// RAYON_NUM_THREADS to K for programs that are not budget-enabled, and lists
    /// them in BUDGET_STATIC_ENV: budget-enabled programs do not take them as caps.
    #[arg(
        long = "static-env",
        value_name = "K",
        value_parser = parse_jobs,
        allow_negative_numbers = true
    )]
    static_env: Option<usize>,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true)]
    command: Vec<OsString>,
}

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
        Cmd::Run(args) => run::run(args),
        Cmd::Info { json } => info(json),
    }
}

/// This machine's budget and what set it (`budget_core::detect`).
fn machine_budget() -> budget_core::Detected {
    budget_core::detect()
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
    let node_env = std::env::var_os(budget_core::ENV_NODE)
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|v| !v.is_empty());
    // The node files of this user's directory, and the one BUDGET_NODE names when it
    // lives elsewhere.
    let mut paths = node::list();
    if let Some(named) = std::env::var_os(budget_core::ENV_NODE).map(std::path::PathBuf::from) {
        if named.is_absolute() && named.is_file() && !paths.contains(&named) {
            paths.push(named);
        }
    }
    let reports: Vec<serde_json::Value> = paths
        .iter()
        .filter_map(|p| node::inspect(p).ok())
        .map(|r| {
            let alive = r
                .creator
                .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            // A file made for one process tree (`budget run`'s run-<pid>.node, Python's
            // share_node() python-<pid>.node) is stale once its maker is gone; the
            // shared cpus-*.node files never are.
            let name = r.path.file_name().map(|n| n.to_string_lossy().into_owned());
            let per_tree = name
                .as_deref()
                .is_some_and(|n| n.starts_with("run-") || n.starts_with("python-"));
            let stale = per_tree && !alive && cfg!(target_os = "linux");
            serde_json::json!({
                // A path that is not UTF-8 (a directory named so) is shown lossily.
                "path": r.path.to_string_lossy(),
                "tokens": r.tokens,
                "creator": r.creator,
                "creator_alive": alive,
                "stale": stale,
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
        "static_env": report.static_env,
        "jobserver": jobserver,
        "BUDGET_NODE": node_env,
        "node_budget_supported": node::SUPPORTED,
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
        _ if !node::SUPPORTED => {
            println!("node budget: not supported on this OS (it needs POSIX byte-range locks)")
        }
        Some(v) => println!("node budget joined: BUDGET_NODE={v}"),
        None => println!("node budget joined: none (BUDGET_NODE unset)"),
    }
    for r in value["node_budgets"].as_array().into_iter().flatten() {
        println!(
            "node budget {} : {} token(s){}",
            r["path"].as_str().unwrap_or(""),
            r["tokens"],
            if r["stale"] == true {
                " (stale: the process that made it is gone; nobody joins it, safe to remove)"
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

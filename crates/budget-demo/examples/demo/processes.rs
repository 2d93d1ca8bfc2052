//! The processes scenario's machinery: worker processes (this executable again, with
//! a hidden `--worker` argument) that each run the QR loop once per order, and the
//! node budget file the budget workers share.
//!
//! A worker makes its matrices, sets its thread counts, prints a ready line, and
//! then runs its loop once for each line it reads on stdin, printing a done line
//! after each; it ends at the end of stdin. So the processes start (and make their
//! matrices) once per strategy, outside the timed rounds: a round times the loops of
//! the three processes from the first go to the last done, the makespan.

use std::cell::RefCell;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use rayon::prelude::*;

use super::probe;
use super::qr::{budget_qr_loop, QR_N};
use budget_testkit::blas::matrices;
use budget_testkit::kernels::Blas;

/// How the demo starts a worker process, given the worker's arguments: by default
/// [`this_executable`]; the demo's test starts its own test binary instead.
pub(crate) type Launcher = fn(&[String]) -> Command;

/// This executable with `--worker` and the worker's arguments (handled at the top
/// of the demo's `main`).
pub(crate) fn this_executable(args: &[String]) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("the demo's own path"));
    command.arg("--worker").args(args);
    command
}

/// What a worker prints before its ready and done lines (other lines on its stdout,
/// such as a test harness's, are skipped).
const MARK: &str = "budget-demo-worker:";

/// How a worker runs its QR loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Setting {
    /// rayon on a pool of every core, OpenBLAS at its default (every core).
    AllCores,
    /// rayon on a pool of 1 thread, OpenBLAS at 1.
    RayonOne,
    /// rayon on a pool of every core, OpenBLAS at 1.
    RayonAll,
    /// A budget region around the rayon loop, each QR in `s.native`: the demo's
    /// budget QR loop, in a process that joined the node budget.
    Budget,
}

impl Setting {
    fn key(self) -> &'static str {
        match self {
            Setting::AllCores => "all-cores",
            Setting::RayonOne => "rayon-1",
            Setting::RayonAll => "rayon-all",
            Setting::Budget => "budget",
        }
    }

    fn from_key(key: &str) -> Option<Setting> {
        [
            Setting::AllCores,
            Setting::RayonOne,
            Setting::RayonAll,
            Setting::Budget,
        ]
        .into_iter()
        .find(|s| s.key() == key)
    }
}

/// A worker process's main: `args` are `SETTING CORES MATRICES` (what
/// [`Group::spawn`] passes). Exits the process with status 2 on bad arguments or
/// when OpenBLAS cannot be loaded.
pub(crate) fn worker(args: &[String]) {
    let (setting, cores, count) = match args {
        [setting, cores, count] => (
            Setting::from_key(setting),
            cores.parse::<usize>().ok().filter(|&n| n > 0),
            count.parse::<usize>().ok(),
        ),
        _ => (None, None, None),
    };
    let (Some(setting), Some(cores), Some(count)) = (setting, cores, count) else {
        fail(&format!("expected SETTING CORES MATRICES, got {args:?}"))
    };
    let blas = Blas::load().unwrap_or_else(|e| fail(&e));
    let mats = matrices(count, QR_N);
    let pool = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a rayon pool")
    };
    let (blas, mats) = (&blas, &mats);
    let in_pool = move |pool: rayon::ThreadPool| {
        move || pool.install(|| mats.par_iter().for_each(|m| blas.qr(m, QR_N)))
    };
    let run: Box<dyn Fn() + '_> = match setting {
        Setting::AllCores => Box::new(in_pool(pool(cores))),
        Setting::RayonOne => {
            blas.set_threads(1);
            Box::new(in_pool(pool(1)))
        }
        Setting::RayonAll => {
            blas.set_threads(1);
            Box::new(in_pool(pool(cores)))
        }
        Setting::Budget => Box::new(move || budget_qr_loop(blas, mats)),
    };
    let mut out = std::io::stdout().lock();
    let mut say = |what: &str| {
        writeln!(out, "{MARK}{what}")
            .and_then(|()| out.flush())
            .unwrap_or_else(|e| fail(&format!("cannot write to the demo: {e}")))
    };
    say("ready");
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        run();
        say("done");
    }
}

/// Ends a worker process that cannot run, saying why.
fn fail(message: &str) -> ! {
    eprintln!("demo worker: {message}");
    std::process::exit(2)
}

/// One worker process, with the pipes to order its loops.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    /// Waits for the worker's next `what` line; `Err` when it ended first.
    fn wait_for(&mut self, what: &str) -> Result<(), String> {
        let mut line = String::new();
        loop {
            line.clear();
            match self.stdout.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let status = self.child.wait().map(|s| s.to_string());
                    return Err(format!(
                        "a demo worker process ended before saying {what:?} ({}); its \
                         message is above",
                        status.unwrap_or_else(|e| e.to_string())
                    ));
                }
                Ok(_) => {
                    if line.trim_end().ends_with(&format!("{MARK}{what}")) {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("the worker's stdin, open");
        stdin
            .write_all(b"go\n")
            .and_then(|()| stdin.flush())
            .expect("a demo worker process ended early; its message is above");
    }

    fn done(&mut self) {
        if let Err(e) = self.wait_for("done") {
            panic!("{e}");
        }
    }
}

/// Worker processes of one setting; they run their loops when told to, and end
/// when the group is dropped.
pub(crate) struct Group {
    workers: RefCell<Vec<Worker>>,
}

impl Group {
    /// Starts `processes` workers at `setting`, each with `count` matrices, and waits
    /// until they are ready. Budget workers join the node budget file `node` (through
    /// `BUDGET_NODE`); the others are kept out of any node budget the demo itself
    /// runs under.
    pub(crate) fn spawn(
        launch: Launcher,
        setting: Setting,
        processes: usize,
        cores: usize,
        count: usize,
        node: Option<&Path>,
    ) -> Result<Group, String> {
        let args = [
            setting.key().to_owned(),
            cores.to_string(),
            count.to_string(),
        ];
        // Dropped on an early return: the workers started so far end with it.
        let mut group = Group {
            workers: RefCell::new(Vec::with_capacity(processes)),
        };
        for _ in 0..processes {
            let mut command = launch(&args);
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            match node {
                Some(path) => command.env(budget::ENV_NODE, path),
                None => command.env_remove(budget::ENV_NODE),
            };
            let mut child = command
                .spawn()
                .map_err(|e| format!("cannot start a demo worker process ({command:?}): {e}"))?;
            probe::watch(child.id());
            let worker = Worker {
                stdin: child.stdin.take(),
                stdout: BufReader::new(child.stdout.take().expect("piped stdout")),
                child,
            };
            group.workers.get_mut().push(worker);
        }
        for worker in group.workers.get_mut() {
            worker.wait_for("ready")?;
        }
        Ok(group)
    }

    /// Every worker runs its loop, all at once; returns when the last is done.
    pub(crate) fn together(&self) {
        let mut workers = self.workers.borrow_mut();
        workers.iter_mut().for_each(Worker::go);
        workers.iter_mut().for_each(Worker::done);
    }

    /// Every worker runs its loop, one after another.
    pub(crate) fn in_turn(&self) {
        for worker in self.workers.borrow_mut().iter_mut() {
            worker.go();
            worker.done();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for worker in self.workers.get_mut().iter_mut() {
            worker.stdin = None; // the end of its orders: it returns
        }
        for worker in self.workers.get_mut().iter_mut() {
            // Read what it still prints (a test harness's summary) so that it never
            // blocks on a full pipe, then reap it.
            let _ = worker.stdout.read_to_end(&mut Vec::new());
            let _ = worker.child.wait();
            probe::unwatch(worker.child.id());
        }
    }
}

/// A node budget file of this demo run, removed when dropped.
pub(crate) struct NodeFile(PathBuf);

impl NodeFile {
    /// Makes `demo-<pid>.node` with `tokens` tokens in this user's node budget
    /// directory.
    pub(crate) fn create(tokens: usize) -> Result<NodeFile, String> {
        let made = budget::node::directory().and_then(|dir| {
            let path = dir.join(format!("demo-{}.node", std::process::id()));
            let _ = std::fs::remove_file(&path); // a stale one of a dead run with our pid
            budget::node::create(&path, tokens).map(|_| path)
        });
        made.map(NodeFile)
            .map_err(|e| format!("cannot make a node budget file: {e}"))
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for NodeFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

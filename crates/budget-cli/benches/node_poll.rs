//! What waiting in a node budget costs, and what a region's entry costs in a
//! process that joined one.
//!
//! - **Polling.** A holder process takes every token of a node of N tokens (4, 64,
//!   512, 4096; and 4096 held by two processes in alternate tokens, one lock record
//!   per token: the worst case of a take that skips runs of locks); a waiter that
//!   joined it runs a region whose tasks sleep (50 ms each), so everything it burns
//!   is budget's looking for tokens. Figure: the
//!   waiter's CPU time over 3 s, as % of one core (`/proc/<pid>/task/*/schedstat`,
//!   nanoseconds), beside a control waiter with its own budget (no node).
//! - **Entry.** `BUDGET_NODE=<a node of N>`: the median of 200 regions' entries, 10 ms
//!   apart (each takes outside tokens at entry, the linger having passed).
//!
//! `cargo bench -p budget-threads-cli --bench node_poll` measures this build;
//! `-- --vs PATH` also runs PATH (this file built from another commit: its child
//! modes are the same) and interleaves the two, run by run (A B A B), with medians
//! and spreads of 3 runs each.

#[cfg(unix)]
fn main() {
    imp::main();
}

#[cfg(not(unix))]
fn main() {
    println!("node_poll: the node budget benchmark reads /proc: not supported on this OS");
}

#[cfg(unix)]
mod imp {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    const SIZES: [usize; 4] = [4, 64, 512, 4096];
    const ROUNDS: usize = 3;

    pub(crate) fn main() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        match args.first().map(String::as_str) {
            Some("hold-all") => hold_all(Path::new(&args[1])),
            Some("hold-alternate") => hold_alternate(Path::new(&args[1]), args[2] == "1"),
            Some("wait") => wait(),
            Some("entry") => entry(),
            _ => {
                let vs = args
                    .iter()
                    .position(|a| a == "--vs")
                    .and_then(|i| args.get(i + 1))
                    .map(PathBuf::from);
                drive(vs);
            }
        }
    }

    /// Child: takes every token of the node at `path` and holds them until killed.
    fn hold_all(path: &Path) {
        let member = budget_core::node::Member::open(path).expect("open the node");
        let got = member.try_take(member.tokens());
        assert_eq!(got, member.tokens(), "the holder took all tokens");
        println!("holding {got}");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    /// Child: locks every other token of the node at `path` (the odd ones when `odd`),
    /// byte by byte with classic POSIX locks, which conflict with budget's and are
    /// never merged into runs: with two such holders the node is one lock record per
    /// token, the worst case of the range-query take. The byte of token `i` is
    /// `4096 + i` (`SLOTS_AT` in budget-core's `external/node.rs`).
    fn hold_alternate(path: &Path, odd: bool) {
        use std::os::unix::io::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("open the node");
        let tokens = budget_core::node::inspect(path)
            .expect("a node file")
            .tokens;
        for i in (usize::from(odd)..tokens).step_by(2) {
            // SAFETY: flock is plain data; all-zeroes is valid and we set every field used.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = libc::F_WRLCK as libc::c_short;
            fl.l_whence = libc::SEEK_SET as libc::c_short;
            fl.l_start = (4096 + i) as libc::off_t;
            fl.l_len = 1;
            // SAFETY: an open descriptor and a valid flock.
            let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) };
            assert_eq!(rc, 0, "lock token {i}");
        }
        println!("holding");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    /// Child: a region whose tasks sleep, for longer than the measurement.
    fn wait() {
        budget_core::scope(|s| {
            s.for_each(0..400usize, |_| {
                std::thread::sleep(Duration::from_millis(50))
            });
        });
    }

    /// Child: the median entry of 200 regions, 10 ms apart.
    fn entry() {
        let _ = budget_core::scope(|s| s.width());
        let mut us = Vec::new();
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(10));
            let t = Instant::now();
            let _ = budget_core::scope(|s| s.width());
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        us.sort_by(f64::total_cmp);
        println!("{:.2}", us[us.len() / 2]);
    }

    /// CPU nanoseconds of all threads of `pid` so far.
    fn cpu_ns(pid: u32) -> u64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return 0;
        };
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    struct Killed(Child);

    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn node_file(tokens: usize) -> PathBuf {
        let path = budget_core::node::directory()
            .expect("node directory")
            .join(format!("bench-poll-{}-{tokens}.node", std::process::id()));
        let _ = std::fs::remove_file(&path);
        budget_core::node::create(&path, tokens).expect("make the node");
        path
    }

    /// The waiter's CPU, % of one core over 3 s, with a holder of all `tokens` (or with
    /// its own budget when `tokens` is 0).
    /// A holder child of this build (holders are the same whichever build waits),
    /// returned once it holds.
    fn holder(args: &[&std::ffi::OsStr]) -> Killed {
        let me = std::env::current_exe().expect("own path");
        let mut h = Command::new(me)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("holder");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(h.stdout.take().unwrap()),
            &mut line,
        )
        .expect("holder says it holds");
        Killed(h)
    }

    fn poll_cost(bin: &Path, tokens: usize, alternate: bool) -> f64 {
        let mut waiter = Command::new(bin);
        waiter
            .arg("wait")
            .env_remove("MAKEFLAGS")
            .env_remove("CARGO_MAKEFLAGS");
        let mut _holders = Vec::new();
        let mut path = None;
        if tokens > 0 {
            let p = node_file(tokens);
            if alternate {
                for parity in ["0", "1"] {
                    _holders.push(holder(&[
                        "hold-alternate".as_ref(),
                        p.as_os_str(),
                        parity.as_ref(),
                    ]));
                }
            } else {
                _holders.push(holder(&["hold-all".as_ref(), p.as_os_str()]));
            }
            waiter.env("BUDGET_NODE", &p);
            path = Some(p);
        } else {
            waiter
                .env("BUDGET_NODE", "0")
                .env("BUDGET_NUM_THREADS", "1");
        }
        let waiter = Killed(waiter.spawn().expect("waiter"));
        std::thread::sleep(Duration::from_millis(500));
        let (t0, c0) = (Instant::now(), cpu_ns(waiter.0.id()));
        std::thread::sleep(Duration::from_secs(3));
        let (t1, c1) = (Instant::now(), cpu_ns(waiter.0.id()));
        drop(waiter);
        drop(_holders);
        if let Some(p) = path {
            let _ = std::fs::remove_file(p);
        }
        (c1 - c0) as f64 / (t1 - t0).as_nanos() as f64 * 100.0
    }

    /// The median region entry (µs) in a process joined to a node of `tokens`.
    fn entry_cost(bin: &Path, tokens: usize) -> f64 {
        let path = node_file(tokens);
        let out = Command::new(bin)
            .arg("entry")
            .env("BUDGET_NODE", &path)
            .env_remove("MAKEFLAGS")
            .output()
            .expect("entry child");
        let _ = std::fs::remove_file(&path);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(f64::NAN)
    }

    fn spread(mut v: Vec<f64>) -> String {
        v.sort_by(f64::total_cmp);
        format!("{:.2} ({:.2}–{:.2})", v[v.len() / 2], v[0], v[v.len() - 1])
    }

    fn drive(vs: Option<PathBuf>) {
        let me = std::env::current_exe().expect("own path");
        let mut bins = vec![("this build", me)];
        if let Some(other) = vs {
            bins.push(("--vs", other));
        }
        println!(
            "load: {}",
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
        println!("waiting process's CPU, % of one core (median (min–max) of {ROUNDS}):");
        let mut cases: Vec<(usize, bool)> = vec![(0, false)];
        cases.extend(SIZES.iter().map(|&n| (n, false)));
        cases.push((4096, true));
        for (tokens, alternate) in cases {
            let mut figures = vec![Vec::new(); bins.len()];
            for _ in 0..ROUNDS {
                for (i, (_, bin)) in bins.iter().enumerate() {
                    figures[i].push(poll_cost(bin, tokens, alternate));
                }
            }
            let what = match (tokens, alternate) {
                (0, _) => "own budget (control)".to_owned(),
                (_, false) => format!("node of {tokens}, all held by another"),
                (_, true) => format!("node of {tokens}, held alternately by two"),
            };
            let cols: Vec<String> = bins
                .iter()
                .zip(figures)
                .map(|((name, _), f)| format!("{name}: {} %", spread(f)))
                .collect();
            println!("  {what:<40} {}", cols.join("   "));
        }
        println!("region entry in a joined process (node of N, free), median µs of 200:");
        for tokens in [2, 4096] {
            let mut figures = vec![Vec::new(); bins.len()];
            for _ in 0..ROUNDS {
                for (i, (_, bin)) in bins.iter().enumerate() {
                    figures[i].push(entry_cost(bin, tokens));
                }
            }
            let cols: Vec<String> = bins
                .iter()
                .zip(figures)
                .map(|((name, _), f)| format!("{name}: {} µs", spread(f)))
                .collect();
            println!("  node of {tokens:<33} {}", cols.join("   "));
        }
    }
}

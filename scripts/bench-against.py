#!/usr/bin/env python3
"""Compare this checkout's benchmarks with another revision's, in one session.

    scripts/bench-against.py REV [--suites core,rayon,native] [--rounds 2] [--filter RE]

Builds REV (a commit, tag or branch) in a worktree of its own under
target/bench-against/, builds this checkout, then runs each criterion suite of both
builds in turn, `--rounds` times, alternating which goes first. Criterion's middle
estimate of every benchmark is collected per run; the table gives, per benchmark, the
median over the rounds of each build with its min-max, and new / old. The load
average is printed before every run: the figures only mean something on an otherwise
idle machine. A suite or benchmark that REV does not have is reported as missing.

Suites: core (`--bench core`), rayon (`--bench rayon`), native
(`-p budget-threads-native --bench native`, needs scripts/setup-native.sh), adoption
(`--bench adoption`).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITES = {
    "core": ["--bench", "core"],
    "rayon": ["--bench", "rayon"],
    "native": ["--manifest-path", "crates/budget-native/Cargo.toml", "--bench", "native"],
    "adoption": ["--bench", "adoption"],
}
# criterion prints the id on a line of its own (or before "time:" when it is short),
# then "time:   [low mid high]" with units.
TIME = re.compile(r"^(\S.*?)?\s*time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]")
UNIT = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}


def sh(cmd, cwd, env=None):
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def worktree(rev):
    sha = sh(["git", "rev-parse", "--short", rev + "^{commit}"], ROOT).strip()
    path = os.path.join(ROOT, "target", "bench-against", sha)
    if not os.path.isdir(path):
        sh(["git", "worktree", "add", "--detach", path, sha], ROOT)
    # The native libraries found by scripts/setup-native.sh (.cache/native/libs.env),
    # which benches read relative to their own checkout.
    cache = os.path.join(path, ".cache")
    if os.path.isdir(os.path.join(ROOT, ".cache")) and not os.path.exists(cache):
        os.symlink(os.path.join(ROOT, ".cache"), cache)
    return sha, path


def build(path, suite):
    """The bench executable of `suite` built in `path`, or None if it has none."""
    cmd = ["cargo", "bench", "--no-run", "--message-format=json"] + SUITES[suite]
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(path, "target"))
    done = subprocess.run(cmd, cwd=path, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  {suite}: no such benchmark at {path} ({done.stderr.strip().splitlines()[-1:]})")
        return None
    for line in done.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["kind"] == ["bench"]:
            return msg["executable"]
    return None


def run(exe, cwd, filt, extra):
    """Criterion's middle estimate (ns) of every benchmark `exe` ran."""
    args = [exe, "--bench", "--noplot"] + extra + ([filt] if filt else [])
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  {exe} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    out = done.stdout
    times, last = {}, None
    for line in out.splitlines():
        m = TIME.match(line)
        if m:
            name = (m.group(1) or last or "?").strip()
            times[name] = float(m.group(2)) * UNIT[m.group(3)]
            last = None
        elif line and not line.startswith((" ", "Benchmarking", "Found", "Warning", "change", "No change",
                                           "Performance", "Change", "Gnuplot")):
            last = line.strip()
    return times


def fmt(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rev")
    p.add_argument("--suites", default="core,rayon,native")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--filter", default=None, help="criterion filter (a regex on benchmark ids)")
    p.add_argument("--criterion", default="", help="extra criterion arguments, e.g. '--measurement-time 3'")
    args = p.parse_args()
    sha, old_path = worktree(args.rev)
    head = sh(["git", "rev-parse", "--short", "HEAD"], ROOT).strip()
    extra = args.criterion.split()
    for suite in args.suites.split(","):
        old, new = build(old_path, suite), build(ROOT, suite)
        if not new:
            sys.exit(f"{suite}: this checkout does not build it")
        results = {"old": [], "new": []}
        for r in range(args.rounds):
            for side in (("old", "new") if r % 2 == 0 else ("new", "old")):
                exe = old if side == "old" else new
                if not exe:
                    continue
                load = os.getloadavg()[0]
                print(f"[{suite}] round {r + 1}/{args.rounds}: {side} ({sha if side == 'old' else head + '+'}), "
                      f"load {load:.2f}", flush=True)
                results[side].append(run(exe, old_path if side == "old" else ROOT, args.filter, extra))
        names = sorted({n for runs in results.values() for t in runs for n in t})
        print(f"\n{suite}: {sha} (old) against {head} with local changes (new), "
              f"medians of {args.rounds} runs each (min-max)\n")
        print(f"| benchmark | old | new | new / old |\n|---|---|---|---|")
        for n in names:
            cells = []
            for side in ("old", "new"):
                v = [t[n] for t in results[side] if n in t]
                cells.append((statistics.median(v), min(v), max(v)) if v else None)
            show = [f"{fmt(c[0])} ({fmt(c[1])}–{fmt(c[2])})" if c else "missing" for c in cells]
            ratio = f"{cells[1][0] / cells[0][0]:.2f}" if all(cells) else "-"
            print(f"| `{n}` | {show[0]} | {show[1]} | {ratio} |")
        print(flush=True)


if __name__ == "__main__":
    main()

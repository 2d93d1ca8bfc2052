//! The main demo in quick mode, at a tiny scale: every scenario produces a row per
//! strategy (or says why it was skipped), every strategy ran once per round (the
//! rounds interleaved), and `--json` writes the stable schema. The processes
//! scenario's workers are this test binary again, running only [`demo_worker`].

use std::process::Command;
use std::time::Duration;

#[allow(dead_code)]
#[path = "../examples/demo/main.rs"]
mod demo;

/// The variable that hands a worker's arguments to [`demo_worker`].
const WORKER_ARGS: &str = "BUDGET_DEMO_WORKER_ARGS";

/// Starts a worker of the demo's processes scenario: this test binary, running only
/// [`demo_worker`] (the demo binary would run itself with `--worker`).
fn launcher(args: &[String]) -> Command {
    let mut command = budget_testkit::child::test_command("demo_worker");
    command
        .args(["--ignored", "-q"])
        .env(WORKER_ARGS, args.join(" "));
    command
}

/// A worker process of the demo's processes scenario, started by [`launcher`] (not
/// a check of its own: ignored in a plain test run).
#[test]
#[ignore = "a worker process of the demo's processes scenario, started by the demo test"]
fn demo_worker() {
    let args = std::env::var(WORKER_ARGS)
        .unwrap_or_else(|_| panic!("started by the demo test only, with {WORKER_ARGS} set"));
    let args: Vec<String> = args.split(' ').map(String::from).collect();
    demo::processes::worker(&args);
}

#[test]
fn quick_json_has_every_scenario_and_strategy() {
    // A watchdog: the demo (and its worker processes) must end; say so if it hangs.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(600));
        eprintln!("watchdog: the quick demo did not end in 600 s");
        std::process::exit(1);
    });
    let dir = std::env::temp_dir().join(format!("budget-demo-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, svg) = (dir.join("demo.json"), dir.join("demo.svg"));
    let mut opts = demo::Options::parse(
        [
            "--quick",
            "--scale",
            "0.01",
            "--reps",
            "2",
            "--no-progress",
            "--json",
            json.to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
        ]
        .map(String::from),
    )
    .unwrap();
    opts.worker = Some(launcher);
    let rows = demo::run(&opts).unwrap();
    let cores = budget::stats().total;

    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("valid JSON");
    assert_eq!(doc["schema"], "budget-demo/2");
    assert_eq!(doc["cores"], cores);
    assert_eq!(doc["quick"], true);
    assert_eq!(doc["reps"], 2);
    assert_eq!(doc["interleaved"], true);
    let json_rows = doc["rows"].as_array().expect("rows");
    assert_eq!(json_rows.len(), rows.len());
    assert_eq!(rows.len(), 6 * 4, "six scenarios × four strategies");

    let scenarios = [
        "rayon × OpenBLAS QR",
        "rayon × OpenMP kernel",
        "nested rayon",
        "imbalanced nested",
        "mixed big+small BLAS",
        "3 processes × rayon × QR",
    ];
    let strategies = ["serial", "all_cores", "best_static", "budget"];
    for scenario in scenarios {
        for strategy in strategies {
            let matching: Vec<&serde_json::Value> = json_rows
                .iter()
                .filter(|r| r["scenario"] == scenario && r["strategy"] == strategy)
                .collect();
            assert_eq!(matching.len(), 1, "{scenario} / {strategy}: one row");
            let row = matching[0];
            for field in [
                "scenario",
                "strategy",
                "setting",
                "seconds",
                "seconds_min",
                "seconds_max",
                "samples",
                "ratio_to_ideal",
                "ratio_to_best_static",
                "round_ratio_min",
                "round_ratio_max",
                "call",
                "cores",
                "peak_busy_threads",
                "skipped",
            ] {
                assert!(row.get(field).is_some(), "{scenario} / {strategy}: {field}");
            }
            assert_eq!(row["cores"], cores);
            if let Some(reason) = row["skipped"].as_str() {
                assert!(reason.contains("install"), "{reason}");
                assert!(row["seconds"].is_null());
            } else {
                let seconds = row["seconds"].as_f64().expect("seconds");
                assert!(seconds > 0.0, "{scenario} / {strategy}: {seconds}");
                // One sample per round; the median lies within the spread.
                let samples: Vec<f64> = row["samples"]
                    .as_array()
                    .expect("samples")
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                assert_eq!(samples.len(), 2, "{scenario} / {strategy}: {samples:?}");
                let (lo, hi) = (
                    row["seconds_min"].as_f64().unwrap(),
                    row["seconds_max"].as_f64().unwrap(),
                );
                assert!(lo <= seconds && seconds <= hi, "{lo} {seconds} {hi}");
                assert_eq!(lo, samples.iter().copied().fold(f64::INFINITY, f64::min));
                assert!(row["round_ratio_min"].as_f64().unwrap() > 0.0);
                // Two rounds are too few to call a winner.
                if strategy == "budget" {
                    assert_eq!(row["call"], "too_few_rounds", "{scenario}");
                } else {
                    assert!(row["call"].is_null());
                }
                assert!(row["ratio_to_ideal"].as_f64().unwrap() > 0.0);
                assert!(row["ratio_to_best_static"].as_f64().unwrap() > 0.0);
            }
        }
        let best = json_rows
            .iter()
            .find(|r| r["scenario"] == scenario && r["strategy"] == "best_static")
            .unwrap();
        if best["skipped"].is_null() {
            assert!((best["ratio_to_best_static"].as_f64().unwrap() - 1.0).abs() < 1e-9);
            assert!(!best["setting"].as_str().unwrap().is_empty());
        }
    }
    // The pure-Rust scenarios always run.
    for scenario in ["nested rayon", "imbalanced nested"] {
        assert!(json_rows
            .iter()
            .filter(|r| r["scenario"] == scenario)
            .all(|r| r["skipped"].is_null()));
    }
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
    std::fs::remove_dir_all(&dir).ok();
}

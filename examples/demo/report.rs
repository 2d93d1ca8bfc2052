//! The results: rows, the table, the JSON file and the SVG bar chart.

use std::fmt::Write as _;

use super::scenarios::Outcome;

/// The strategies, in the order they print.
pub(crate) const STRATEGIES: [&str; 4] = ["serial", "all_cores", "best_static", "budget"];

/// One scenario × strategy.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    /// The scenario's name.
    pub(crate) scenario: String,
    /// One of [`STRATEGIES`].
    pub(crate) strategy: &'static str,
    /// For `best_static`: the setting that won; empty otherwise.
    pub(crate) setting: String,
    /// Best wall time; `None` when skipped.
    pub(crate) seconds: Option<f64>,
    /// `seconds / (serial / cores)`.
    pub(crate) ratio_to_ideal: Option<f64>,
    /// `seconds / best_static seconds`.
    pub(crate) ratio_to_best_static: Option<f64>,
    /// Cores in the budget.
    pub(crate) cores: usize,
    /// Peak busy threads seen.
    pub(crate) peak_busy_threads: Option<usize>,
    /// Why the scenario did not run (what to install).
    pub(crate) skipped: Option<String>,
}

/// The rows of one scenario.
pub(crate) fn rows(scenario: &str, outcome: &Result<Outcome, String>, cores: usize) -> Vec<Row> {
    STRATEGIES
        .iter()
        .map(|&strategy| {
            let mut row = Row {
                scenario: scenario.to_string(),
                strategy,
                setting: String::new(),
                seconds: None,
                ratio_to_ideal: None,
                ratio_to_best_static: None,
                cores,
                peak_busy_threads: None,
                skipped: None,
            };
            match outcome {
                Err(reason) => row.skipped = Some(reason.clone()),
                Ok(o) => {
                    let m = match strategy {
                        "serial" => o.serial,
                        "all_cores" => o.all_cores,
                        "best_static" => {
                            row.setting = o.best_static.0.clone();
                            o.best_static.1
                        }
                        _ => o.budget,
                    };
                    let ideal = o.serial.seconds / cores as f64;
                    row.seconds = Some(m.seconds);
                    row.ratio_to_ideal = Some(m.seconds / ideal);
                    row.ratio_to_best_static = Some(m.seconds / o.best_static.1.seconds);
                    row.peak_busy_threads = m.peak_busy;
                }
            }
            row
        })
        .collect()
}

fn find<'a>(rows: &'a [Row], scenario: &str, strategy: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.scenario == scenario && r.strategy == strategy)
}

fn ms(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{:.1} ms", s * 1e3))
}

fn ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.2}×"))
}

fn peak(r: Option<&Row>) -> String {
    r.and_then(|r| r.peak_busy_threads)
        .map_or("-".into(), |p| p.to_string())
}

/// The table: one line per scenario.
pub(crate) fn table(names: &[&str], rows: &[Row], cores: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:>9} │ {:>10} {:>7} │ {:>10} {:>7} {:<29}│ {:>10} {:>7} {:>7} │ {:>15}",
        "scenario",
        format!("ideal={cores}"),
        "all cores",
        "/ideal",
        "best static",
        "/ideal",
        " (setting)",
        "budget",
        "/ideal",
        "/static",
        "peak busy a/s/b"
    );
    for name in names {
        let get = |s| find(rows, name, s);
        let Some(budget) = get("budget") else {
            continue;
        };
        if let Some(reason) = &budget.skipped {
            let _ = writeln!(out, "{name:<22} {reason}");
            continue;
        }
        let (all, stat, serial) = (get("all_cores"), get("best_static"), get("serial"));
        let ideal = serial.and_then(|r| r.seconds).map(|s| s / cores as f64);
        let _ = writeln!(
            out,
            "{:<22} {:>9} │ {:>10} {:>7} │ {:>10} {:>7} {:<29}│ {:>10} {:>7} {:>7} │ {:>15}",
            name,
            ms(ideal),
            ms(all.and_then(|r| r.seconds)),
            ratio(all.and_then(|r| r.ratio_to_ideal)),
            ms(stat.and_then(|r| r.seconds)),
            ratio(stat.and_then(|r| r.ratio_to_ideal)),
            format!(" ({})", stat.map_or("", |r| r.setting.as_str())),
            ms(budget.seconds),
            ratio(budget.ratio_to_ideal),
            ratio(budget.ratio_to_best_static),
            format!("{}/{}/{}", peak(all), peak(stat), peak(Some(budget))),
        );
    }
    out
}

/// The evidence checks, one line each.
pub(crate) fn verdict(names: &[&str], rows: &[Row]) -> String {
    let (mut ran, mut near_fastest, mut eligible, mut near_ideal) = (0, 0, 0, 0);
    for name in names {
        let secs = |s| find(rows, name, s).and_then(|r| r.seconds);
        let ratio = |s| find(rows, name, s).and_then(|r| r.ratio_to_ideal);
        let (Some(all), Some(stat), Some(budget)) =
            (secs("all_cores"), secs("best_static"), secs("budget"))
        else {
            continue;
        };
        ran += 1;
        near_fastest += usize::from(budget <= 1.05 * all.min(stat));
        if ratio("best_static").is_some_and(|r| r <= 1.1) {
            eligible += 1;
            near_ideal += usize::from(ratio("budget").is_some_and(|r| r <= 1.15));
        }
    }
    format!(
        "budget fastest or within 5% of the fastest: {near_fastest} of {ran} scenarios\n\
         budget within 1.15× of ideal where the best static setting is within 1.1×: \
         {near_ideal} of {eligible} scenarios"
    )
}

/// The results as JSON (schema `budget-demo/1`).
pub(crate) fn json(rows: &[Row], cores: usize, quick: bool, scale: f64) -> String {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "scenario": r.scenario,
                "strategy": r.strategy,
                "setting": r.setting,
                "seconds": r.seconds,
                "ratio_to_ideal": r.ratio_to_ideal,
                "ratio_to_best_static": r.ratio_to_best_static,
                "cores": r.cores,
                "peak_busy_threads": r.peak_busy_threads,
                "skipped": r.skipped,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "schema": "budget-demo/1",
        "cores": cores,
        "available_parallelism": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "quick": quick,
        "scale": scale,
        "rows": rows,
    });
    serde_json::to_string_pretty(&doc).expect("JSON") + "\n"
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A grouped bar chart of each strategy's time relative to the ideal.
pub(crate) fn svg(names: &[&str], rows: &[Row], cores: usize) -> String {
    const BARS: [(&str, &str, &str); 3] = [
        ("all_cores", "every layer at all cores", "#d9534f"),
        ("best_static", "best static setting", "#9e9e9e"),
        ("budget", "budget", "#2e8b57"),
    ];
    let ran: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| find(rows, n, "budget").is_some_and(|r| r.seconds.is_some()))
        .collect();
    let max = rows
        .iter()
        .filter(|r| r.strategy != "serial")
        .filter_map(|r| r.ratio_to_ideal)
        .fold(1.0f64, f64::max)
        .ceil()
        .clamp(2.0, 4.0); // taller bars are cut at the top, their value printed

    let (left, top, plot_h, group_w, bar_w) = (60.0, 62.0, 260.0, 170.0, 40.0);
    let width = left + group_w * ran.len().max(1) as f64 + 20.0;
    let height = top + plot_h + 70.0;
    let y = |v: f64| top + plot_h - v / max * plot_h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="20" font-size="14" font-weight="bold">Time / ideal (serial / {cores} cores): lower is better, 1 = ideal (bars cut at {max}×, value printed)</text>"#
    );
    for (i, (_, label, colour)) in BARS.iter().enumerate() {
        let x = left + i as f64 * 190.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="30" width="12" height="12" fill="{colour}"/><text x="{}" y="40">{label}</text>"#,
            x + 16.0
        );
    }
    let mut tick = 0.0;
    while tick <= max {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y0}" y2="{y0}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{tick}×</text>"##,
            width - 20.0,
            left - 6.0,
            y(tick) + 4.0,
            y0 = y(tick)
        );
        tick += 0.5;
    }
    let _ = writeln!(
        s,
        r#"<line x1="{left}" x2="{}" y1="{y1}" y2="{y1}" stroke="black" stroke-dasharray="4 3"/>"#,
        width - 20.0,
        y1 = y(1.0)
    );
    for (g, name) in ran.iter().enumerate() {
        let x0 = left + g as f64 * group_w + 15.0;
        for (b, (strategy, _, colour)) in BARS.iter().enumerate() {
            let Some(v) = find(rows, name, strategy).and_then(|r| r.ratio_to_ideal) else {
                continue;
            };
            let x = x0 + b as f64 * (bar_w + 4.0);
            let (v, shown) = (v.min(max), v);
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="{:.1}" width="{bar_w}" height="{:.1}" fill="{colour}"/><text x="{}" y="{:.1}" text-anchor="middle" font-size="10">{shown:.2}</text>"#,
                y(v),
                plot_h - (y(v) - top),
                x + bar_w / 2.0,
                y(v) - 3.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x0 + 1.5 * (bar_w + 4.0) - 2.0,
            top + plot_h + 18.0,
            escape(name)
        );
    }
    let skipped: Vec<&str> = names.iter().copied().filter(|n| !ran.contains(n)).collect();
    if !skipped.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="{}">skipped (libraries missing): {}</text>"#,
            top + plot_h + 45.0,
            escape(&skipped.join(", "))
        );
    }
    s.push_str("</svg>\n");
    s
}

//! The results: rows, the table, the JSON file and the SVG bar chart.

use std::fmt::Write as _;

use super::scenarios::Outcome;

/// Fewest timed rounds for which the demo calls a winner between budget and the best
/// static setting: with every one of `n` paired rounds on one side, the chance of
/// that by luck between equals is 2 / 2^n (6 % at 5 rounds, 0.4 % at 9).
pub(crate) const MIN_ROUNDS_TO_CALL: usize = 5;

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
    /// Median wall time of the rounds; `None` when skipped.
    pub(crate) seconds: Option<f64>,
    /// The fastest and the slowest round.
    pub(crate) range: Option<(f64, f64)>,
    /// Every round's time, in round order.
    pub(crate) samples: Vec<f64>,
    /// `seconds / (serial / cores)`.
    pub(crate) ratio_to_ideal: Option<f64>,
    /// `seconds / best_static seconds`: the ratio of the medians.
    pub(crate) ratio_to_best_static: Option<f64>,
    /// This strategy's time over the best static setting's in the same round: the
    /// smallest and largest over the rounds.
    pub(crate) round_ratio_range: Option<(f64, f64)>,
    /// For `budget`: who is faster than whom, or why no one can be called.
    pub(crate) call: Option<Call>,
    /// Cores in the budget.
    pub(crate) cores: usize,
    /// Peak busy threads seen.
    pub(crate) peak_busy_threads: Option<usize>,
    /// Why the scenario did not run (what to install).
    pub(crate) skipped: Option<String>,
}

/// Budget against the best static setting, from the paired rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    /// Budget was faster in every round.
    Budget,
    /// The best static setting was faster in every round.
    BestStatic,
    /// The per-round ratios fall on both sides of 1: too close for the noise.
    TooClose,
    /// Fewer than [`MIN_ROUNDS_TO_CALL`] rounds.
    TooFewRounds,
}

impl Call {
    /// Its JSON name.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Call::Budget => "budget",
            Call::BestStatic => "best_static",
            Call::TooClose => "too_close",
            Call::TooFewRounds => "too_few_rounds",
        }
    }

    fn of(ratios: &[f64]) -> Call {
        if ratios.len() < MIN_ROUNDS_TO_CALL {
            Call::TooFewRounds
        } else if ratios.iter().all(|&r| r < 1.0) {
            Call::Budget
        } else if ratios.iter().all(|&r| r > 1.0) {
            Call::BestStatic
        } else {
            Call::TooClose
        }
    }
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
                range: None,
                samples: Vec::new(),
                ratio_to_ideal: None,
                ratio_to_best_static: None,
                round_ratio_range: None,
                call: None,
                cores,
                peak_busy_threads: None,
                skipped: None,
            };
            match outcome {
                Err(reason) => row.skipped = Some(reason.clone()),
                Ok(o) => {
                    let m = match strategy {
                        "serial" => &o.serial,
                        "all_cores" => &o.all_cores,
                        "best_static" => {
                            row.setting = o.best_static.0.clone();
                            &o.best_static.1
                        }
                        _ => &o.budget,
                    };
                    let stat = &o.best_static.1;
                    let ideal = o.serial.median() / cores as f64;
                    row.seconds = Some(m.median());
                    row.range = Some((m.min(), m.max()));
                    row.samples = m.samples.clone();
                    row.ratio_to_ideal = Some(m.median() / ideal);
                    row.ratio_to_best_static = Some(m.median() / stat.median());
                    let ratios: Vec<f64> = m
                        .samples
                        .iter()
                        .zip(&stat.samples)
                        .map(|(a, b)| a / b)
                        .collect();
                    row.round_ratio_range = Some((
                        ratios.iter().copied().fold(f64::INFINITY, f64::min),
                        ratios.iter().copied().fold(0.0, f64::max),
                    ));
                    if strategy == "budget" {
                        row.call = Some(Call::of(&ratios));
                    }
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

/// The table of medians: one line per scenario.
pub(crate) fn table(names: &[&str], rows: &[Row], cores: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:>9} │ {:>10} {:>7} │ {:>10} {:>7} {:<29}│ {:>10} {:>7} {:>7} │ {:>15}",
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
            let _ = writeln!(out, "{name:<24} {reason}");
            continue;
        }
        let (all, stat, serial) = (get("all_cores"), get("best_static"), get("serial"));
        let ideal = serial.and_then(|r| r.seconds).map(|s| s / cores as f64);
        let _ = writeln!(
            out,
            "{:<24} {:>9} │ {:>10} {:>7} │ {:>10} {:>7} {:<29}│ {:>10} {:>7} {:>7} │ {:>15}",
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

/// `lo–hi` times `scale`, with `digits` decimals and `unit`.
fn span(range: Option<(f64, f64)>, scale: f64, digits: usize, unit: &str) -> String {
    range.map_or("-".into(), |(lo, hi)| {
        format!("{:.digits$}–{:.digits$}{unit}", lo * scale, hi * scale)
    })
}

/// The spread of each strategy over the rounds and budget's call against the best
/// static setting, one line per scenario.
pub(crate) fn spread(names: &[&str], rows: &[Row], reps: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:>20} {:>20} {:>20} │ {:>13}  call",
        "scenario", "all cores min–max", "best static min–max", "budget min–max", "budget/static",
    );
    let _ = writeln!(
        out,
        "{:<24} {:>20} {:>20} {:>20} │ {:>13}",
        "", "", "", "", "by round"
    );
    for name in names {
        let get = |s| find(rows, name, s);
        let Some(budget) = get("budget").filter(|r| r.skipped.is_none()) else {
            continue;
        };
        let call = match budget.call {
            Some(Call::Budget) => format!("budget faster in all {reps} rounds"),
            Some(Call::BestStatic) => format!("best static faster in all {reps} rounds"),
            Some(Call::TooClose) => "too close to call: rounds fall on both sides".to_owned(),
            Some(Call::TooFewRounds) | None => {
                format!("not called: fewer than {MIN_ROUNDS_TO_CALL} rounds")
            }
        };
        let _ = writeln!(
            out,
            "{:<24} {:>20} {:>20} {:>20} │ {:>13}  {call}",
            name,
            span(get("all_cores").and_then(|r| r.range), 1e3, 1, " ms"),
            span(get("best_static").and_then(|r| r.range), 1e3, 1, " ms"),
            span(budget.range, 1e3, 1, " ms"),
            span(budget.round_ratio_range, 1.0, 2, "×"),
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
    let calls = |c| {
        rows.iter()
            .filter(|r| r.strategy == "budget" && r.call == Some(c))
            .count()
    };
    let near_ideal = if eligible == 0 {
        "no scenario has its best static setting within 1.1× of ideal".to_owned()
    } else {
        format!("{near_ideal} of {eligible} scenarios")
    };
    format!(
        "budget fastest or within 5% of the fastest (medians): {near_fastest} of {ran} scenarios\n\
         budget within 1.15× of ideal where the best static setting is within 1.1×: \
         {near_ideal}\n\
         budget against the best static setting, round by round: faster in every round in {}, \
         slower in every round in {}, too close to call in {} of {ran} scenarios",
        calls(Call::Budget),
        calls(Call::BestStatic),
        calls(Call::TooClose) + calls(Call::TooFewRounds),
    )
}

/// The schema name of [`json`]'s output.
pub(crate) const SCHEMA: &str = "budget-demo/2";

/// The results as JSON (schema [`SCHEMA`]): `seconds` is the median of the rounds,
/// `samples` every round in order, `seconds_min`/`seconds_max` the spread,
/// `ratio_to_best_static` the ratio of medians, `round_ratio_min`/`round_ratio_max`
/// the range of the per-round ratios to the best static setting, and `call` (budget
/// rows) `budget`, `best_static`, `too_close` or `too_few_rounds`.
pub(crate) fn json(rows: &[Row], cores: usize, quick: bool, scale: f64, reps: usize) -> String {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "scenario": r.scenario,
                "strategy": r.strategy,
                "setting": r.setting,
                "seconds": r.seconds,
                "seconds_min": r.range.map(|x| x.0),
                "seconds_max": r.range.map(|x| x.1),
                "samples": r.samples,
                "ratio_to_ideal": r.ratio_to_ideal,
                "ratio_to_best_static": r.ratio_to_best_static,
                "round_ratio_min": r.round_ratio_range.map(|x| x.0),
                "round_ratio_max": r.round_ratio_range.map(|x| x.1),
                "call": r.call.map(Call::key),
                "cores": r.cores,
                "peak_busy_threads": r.peak_busy_threads,
                "skipped": r.skipped,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "schema": SCHEMA,
        "cores": cores,
        "available_parallelism": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "quick": quick,
        "scale": scale,
        "reps": reps,
        "interleaved": true,
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
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="20" font-size="14" font-weight="bold">Median time / ideal (serial / {cores} cores), whiskers min–max over the rounds: lower is better, 1 = ideal (bars cut at {max}×)</text>"#
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
            let Some(row) = find(rows, name, strategy) else {
                continue;
            };
            let Some(v) = row.ratio_to_ideal else {
                continue;
            };
            let x = x0 + b as f64 * (bar_w + 4.0);
            let xm = x + bar_w / 2.0;
            let (v, shown) = (v.min(max), v);
            // The spread over the rounds: a whisker from the fastest to the slowest.
            let (lo, hi) = match (row.range, row.seconds) {
                (Some((lo, hi)), Some(median)) => (
                    (lo / median * shown).min(max),
                    (hi / median * shown).min(max),
                ),
                _ => (v, v),
            };
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="{:.1}" width="{bar_w}" height="{:.1}" fill="{colour}"/><text x="{xm}" y="{:.1}" text-anchor="middle" font-size="10">{shown:.2}</text>"#,
                y(v),
                plot_h - (y(v) - top),
                y(v.max(hi)) - 3.0
            );
            let _ = writeln!(
                s,
                r#"<path d="M{xm} {:.1}V{:.1}M{:.1} {:.1}h10M{:.1} {:.1}h10" stroke="black"/>"#,
                y(lo),
                y(hi),
                xm - 5.0,
                y(lo),
                xm - 5.0,
                y(hi),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_winner_is_called_only_when_every_round_agrees() {
        assert_eq!(Call::of(&[0.9, 0.95, 0.97, 0.99, 0.8]), Call::Budget);
        assert_eq!(Call::of(&[1.1, 1.05, 1.2, 1.01, 1.3]), Call::BestStatic);
        // The mixed-BLAS figures measured before: 0.84×, 1.57×, 1.01×.
        assert_eq!(Call::of(&[0.84, 1.57, 1.01, 0.9, 0.95]), Call::TooClose);
        assert_eq!(Call::of(&[0.5, 0.5, 0.5, 0.5]), Call::TooFewRounds);
        // A tie in one round is not a win.
        assert_eq!(Call::of(&[0.9, 0.9, 1.0, 0.9, 0.9]), Call::TooClose);
    }
}

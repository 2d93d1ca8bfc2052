//! Small helpers for the benchmarks' figures.

/// The median of `v` (the mean of the middle two for an even count); `NaN` when empty.
///
/// # Examples
///
/// ```
/// assert_eq!(budget_testkit::measure::median(&[3.0, 1.0, 2.0]), 2.0);
/// assert_eq!(budget_testkit::measure::median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
/// ```
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

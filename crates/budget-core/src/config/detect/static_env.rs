//! The thread counts `budget run --static-env K` sets, told apart from the user's.
//!
//! `budget run --static-env K` sets `OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS` and
//! their kin to K for the programs of its tree that are not budget-enabled, and
//! [`ENV_STATIC_ENV`] to the list of what it set (`NAME=VALUE` pairs). Those counts
//! are not a limit anyone asked of a budget-enabled program, which shares the tree's
//! node budget instead: it reads a thread-count variable through
//! [`user_thread_variable`], which passes over a value that still equals what
//! `budget run` set. A value set or changed inside the tree afterwards (a user's
//! `OMP_NUM_THREADS=1 prog`) differs from the list and is the user's again. A value
//! set back to exactly what `budget run` set cannot be told apart, and counts as
//! `budget run`'s.

/// The environment variable in which `budget run --static-env K` lists the
/// thread-count variables it set and their values, as `NAME=VALUE` pairs separated
/// by spaces (`OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 ...`). Budget-enabled
/// processes do not read those values as caps (see [`user_thread_variable`]).
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// assert_eq!(budget::ENV_STATIC_ENV, "BUDGET_STATIC_ENV");
/// ```
pub const ENV_STATIC_ENV: &str = "BUDGET_STATIC_ENV";

/// The value of [`ENV_STATIC_ENV`] for the variables `vars` set to their values:
/// `NAME=VALUE` pairs separated by spaces. `budget run --static-env` exports it
/// beside the variables themselves.
///
/// Names and values must not contain spaces or `=` in a name (thread counts and
/// variable names never do); such a pair would not be recognised later, so its
/// value would stay a cap.
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// let marker = budget::static_env_marker([("OMP_NUM_THREADS", "2"), ("MKL_NUM_THREADS", "2")]);
/// assert_eq!(marker, "OMP_NUM_THREADS=2 MKL_NUM_THREADS=2");
/// ```
pub fn static_env_marker<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    vars.into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The value of the thread-count variable `name` (`OMP_NUM_THREADS`,
/// `OPENBLAS_NUM_THREADS`, ...) as the user or a scheduler set it: `None` when it is
/// unset, or when it still holds the value `budget run --static-env` set for the
/// programs that are not budget-enabled (listed in [`ENV_STATIC_ENV`]).
///
/// budget-native reads the caps of `s.native` and `limit` through it, so a
/// budget-enabled program under `budget run --static-env K` keeps its dynamic widths,
/// while a count set inside the tree afterwards still caps the library it names.
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// // Outside `budget run --static-env`, it is the variable itself.
/// if std::env::var_os(budget::ENV_STATIC_ENV).is_none() {
///     assert_eq!(
///         budget::user_thread_variable("OMP_NUM_THREADS"),
///         std::env::var("OMP_NUM_THREADS").ok()
///     );
/// }
/// ```
pub fn user_thread_variable(name: &str) -> Option<String> {
    user_value(&|n| std::env::var(n).ok(), name)
}

/// [`user_thread_variable`] in the environment `env`.
pub(crate) fn user_value(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    let value = env(name)?;
    (!set_by_run(env, name, &value)).then_some(value)
}

/// Whether `name=value` is one of the pairs `budget run --static-env` listed.
pub(crate) fn set_by_run(env: &dyn Fn(&str) -> Option<String>, name: &str, value: &str) -> bool {
    env(ENV_STATIC_ENV).is_some_and(|marker| {
        marker
            .split_whitespace()
            .any(|pair| pair.split_once('=') == Some((name, value)))
    })
}

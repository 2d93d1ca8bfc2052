//! The thread counts set in the environment at start (`OMP_NUM_THREADS` and its kin)
//! as caps that [`limit`](crate::limit) and `s.native` respect.
//!
//! Schedulers hand a worker its share through these variables: Ray sets
//! `OMP_NUM_THREADS` to the task's `num_cpus`, Spark to `spark.task.cpus`, Dask's
//! nanny sets `OMP_NUM_THREADS`, `MKL_NUM_THREADS` and `OPENBLAS_NUM_THREADS` to 1 per
//! worker. A library left alone would run at that count; budget never sets it wider.
//! Narrower is allowed: the count set for a call is `min(width, cap)`.
//!
//! Each family's cap is the variable the library itself reads first, as its own
//! documentation gives the order: OpenMP runtimes `OMP_NUM_THREADS` (the first entry
//! of a list such as `4,2`); OpenBLAS `OPENBLAS_NUM_THREADS`, then `GOTO_NUM_THREADS`,
//! then `OMP_NUM_THREADS`; MKL `MKL_NUM_THREADS`, then `OMP_NUM_THREADS`; BLIS
//! `BLIS_NUM_THREADS`, then `OMP_NUM_THREADS`; FlexiBLAS `FLEXIBLAS_NUM_THREADS`,
//! then `OMP_NUM_THREADS`. A value that is not a positive whole number is no cap.
//! `BUDGET_NATIVE_ENV_CAP=off` turns the caps off (budget then sets every library to
//! the region's width, as it did before). The environment is read once, at the first
//! native call; changing it later has no effect (as for the libraries themselves).
//!
//! The counts `budget run --static-env K` set are for the programs of its tree that
//! are not budget-enabled, not caps: a value that still equals what `budget run` set
//! ([`budget_core::ENV_STATIC_ENV`]) is passed over
//! ([`budget_core::user_thread_variable`]), so a budget-enabled program there sets its
//! libraries to its regions' widths; a count changed inside the tree afterwards caps.

use std::sync::OnceLock;

use crate::Family;

/// The variable that turns the caps off (`off` or `0`).
pub(crate) const ENV_SWITCH: &str = "BUDGET_NATIVE_ENV_CAP";

/// The count for `family` in a call of width `width`: the width, lowered to the
/// family's cap from the environment at start.
pub(crate) fn capped(family: Family, width: usize) -> usize {
    static CAPS: OnceLock<Caps> = OnceLock::new();
    let caps = CAPS.get_or_init(|| {
        Caps::from_env(&|name| {
            if name == ENV_SWITCH {
                std::env::var(name).ok()
            } else {
                budget_core::user_thread_variable(name)
            }
        })
    });
    caps.of(family).map_or(width, |cap| width.min(cap))
}

/// One cap per family, `None` for no cap.
#[derive(Debug, Default, PartialEq, Eq)]
struct Caps {
    openmp: Option<usize>,
    openblas: Option<usize>,
    mkl: Option<usize>,
    blis: Option<usize>,
    flexiblas: Option<usize>,
}

impl Caps {
    fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Caps {
        if env(ENV_SWITCH).is_some_and(|v| matches!(v.trim(), "off" | "0")) {
            return Caps::default();
        }
        let count = |name: &str| {
            let value = env(name)?;
            // OMP_NUM_THREADS may list one count per nesting level: the first is ours.
            let first = value.split(',').next()?.trim();
            first.parse::<usize>().ok().filter(|&n| n >= 1)
        };
        let first_of = |names: &[&str]| names.iter().find_map(|n| count(n));
        Caps {
            openmp: first_of(&["OMP_NUM_THREADS"]),
            openblas: first_of(&[
                "OPENBLAS_NUM_THREADS",
                "GOTO_NUM_THREADS",
                "OMP_NUM_THREADS",
            ]),
            mkl: first_of(&["MKL_NUM_THREADS", "OMP_NUM_THREADS"]),
            blis: first_of(&["BLIS_NUM_THREADS", "OMP_NUM_THREADS"]),
            flexiblas: first_of(&["FLEXIBLAS_NUM_THREADS", "OMP_NUM_THREADS"]),
        }
    }

    fn of(&self, family: Family) -> Option<usize> {
        match family {
            Family::OpenMp => self.openmp,
            Family::OpenBlas => self.openblas,
            Family::Mkl => self.mkl,
            Family::Blis => self.blis,
            Family::FlexiBlas => self.flexiblas,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn caps(pairs: &[(&str, &str)]) -> Caps {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        Caps::from_env(&|name| map.get(name).map(|v| v.to_string()))
    }

    #[test]
    fn each_family_reads_its_own_variable_first_then_omp() {
        assert_eq!(caps(&[]), Caps::default());
        // Ray / Spark: OMP_NUM_THREADS only, read by every family.
        let c = caps(&[("OMP_NUM_THREADS", "4")]);
        for family in [
            Family::OpenMp,
            Family::OpenBlas,
            Family::Mkl,
            Family::Blis,
            Family::FlexiBlas,
        ] {
            assert_eq!(c.of(family), Some(4), "{family}");
        }
        // A common setting: BLAS single-threaded, OpenMP kernels free.
        let c = caps(&[("OPENBLAS_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "2")]);
        assert_eq!(c.of(Family::OpenBlas), Some(1));
        assert_eq!(c.of(Family::Mkl), Some(2));
        assert_eq!(c.of(Family::OpenMp), None);
        assert_eq!(c.of(Family::Blis), None);
        // The library's own variable wins over OMP_NUM_THREADS, also when larger.
        let c = caps(&[("OMP_NUM_THREADS", "1"), ("BLIS_NUM_THREADS", "3")]);
        assert_eq!(
            (c.of(Family::Blis), c.of(Family::OpenMp)),
            (Some(3), Some(1))
        );
        assert_eq!(
            caps(&[("GOTO_NUM_THREADS", "2")]).of(Family::OpenBlas),
            Some(2)
        );
    }

    #[test]
    fn lists_bad_values_and_the_switch() {
        assert_eq!(caps(&[("OMP_NUM_THREADS", "4,2")]).openmp, Some(4));
        assert_eq!(caps(&[("OMP_NUM_THREADS", " 3 ")]).openmp, Some(3));
        for bad in ["0", "-1", "", "abc", "1.5"] {
            assert_eq!(
                caps(&[("OMP_NUM_THREADS", bad)]),
                Caps::default(),
                "{bad:?}"
            );
        }
        // A bad library variable falls through to OMP_NUM_THREADS.
        let c = caps(&[("OPENBLAS_NUM_THREADS", "x"), ("OMP_NUM_THREADS", "2")]);
        assert_eq!(c.of(Family::OpenBlas), Some(2));
        for off in ["off", "0", " off "] {
            let c = caps(&[(ENV_SWITCH, off), ("OMP_NUM_THREADS", "1")]);
            assert_eq!(c, Caps::default(), "{off:?}");
        }
        assert_eq!(
            caps(&[(ENV_SWITCH, "on"), ("OMP_NUM_THREADS", "1")]).openmp,
            Some(1)
        );
    }

    #[test]
    fn narrower_only() {
        let c = caps(&[("OMP_NUM_THREADS", "3")]);
        let cap = |w: usize| c.of(Family::OpenMp).map_or(w, |cap| w.min(cap));
        assert_eq!((cap(1), cap(2), cap(3), cap(8)), (1, 2, 3, 3));
    }
}

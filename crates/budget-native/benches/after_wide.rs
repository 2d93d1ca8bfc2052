//! A rayon loop right after a wide BLAS call: the pattern of numerical code where a
//! library's QR loop follows a big matrix product. One `dgemm` 1536² at full width
//! (not timed), then at once a rayon loop over 48 QR factorisations of 192² (timed),
//! then a pause of 250 ms (past OpenBLAS's spin window, so every repetition starts
//! alike). The strategies are interleaved round by round, and each figure is a ratio
//! against the best static setting and the best hand schedule measured in the same
//! run, for the loop alone and for the call and the loop together.
//!
//! ```sh
//! scripts/setup-native.sh
//! cargo bench -p budget-threads-native --bench after_wide            # 15 rounds
//! cargo bench -p budget-threads-native --bench after_wide -- 30      # 30 rounds
//! ```
//!
//! Strategies:
//! - `static`: the best static setting for the loop, `OPENBLAS_NUM_THREADS=1` as a
//!   user sets it (the big call runs on one thread too, so no worker spins);
//! - `hand`: the best hand schedule: the big call at all cores, the loop at 1 (the
//!   big call's workers spin beside the loop, as with budget);
//! - `default`: OpenBLAS at all cores everywhere (every QR call inside the loop at
//!   full width: threads × BLAS threads);
//! - `app+lib`: the application and the library both on budget (`budget::scope` +
//!   `install` around the loop, `s.native` around each QR; the big call in `s.native`);
//! - `lib only`: only the library on budget: the application's loop is plain rayon on
//!   its global pool, each QR in `budget::scope(|s| s.native(..))`;
//! - `lib fair`: the same, the library asking for its fair share of the foreign pool
//!   (`scope_with(cores / rayon::current_num_threads(), ..)`).
//!
//! No `OPENBLAS_*` or `OMP_*` variable is set: the spinning workers are the library's
//! defaults (run it with `OPENBLAS_THREAD_TIMEOUT=4` to see the loop without them).
//! Goal (the never-slower issue): each budget strategy's slowest round within 1.3× of
//! the best, its median within 1.1×.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use budget_native::NativeExt;
use budget_rayon::RayonExt;
use budget_testkit::kernels::Blas;
use budget_testkit::measure::median;
use rayon::prelude::*;

const STRATEGIES: [&str; 6] = [
    "static", "hand", "default", "app+lib", "lib only", "lib fair",
];

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(15);
    let blas = Blas::load().unwrap_or_else(|e| panic!("{e}"));
    let cores = budget_core::stats().total;
    let default_threads = blas.default_threads;
    let (big, n) = (1536, 192);
    let (a, b) = (vec![1.0f64; big * big], vec![0.5f64; big * big]);
    let mut c = vec![0.0f64; big * big];
    let mats = budget_testkit::blas::matrices(48, n);
    with_load(|load| {
        eprintln!(
            "after_wide: {cores} cores, OpenBLAS default {default_threads} threads, {rounds} \
             rounds, load {load}"
        )
    });
    // (the big call, the loop) per strategy and round, in ms.
    let mut times: Vec<Vec<(f64, f64)>> = vec![Vec::new(); STRATEGIES.len()];
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for round in 0..rounds + 1 {
        for k in 0..STRATEGIES.len() {
            // Rotate the order each round: what one strategy leaves behind falls on
            // each of the others in turn.
            let k = (k + round) % STRATEGIES.len();
            let t0 = Instant::now();
            let (call, looped) = match k {
                // static (the big call at 1 too) and hand (the big call at all
                // cores): both run the loop at BLAS = 1.
                0 | 1 => {
                    blas.set_threads(if k == 0 { 1 } else { cores });
                    blas.gemm(&a, &b, &mut c, big);
                    let call = ms(t0);
                    let t = Instant::now();
                    blas.set_threads(1);
                    mats.par_iter().for_each(|m| blas.qr(m, n));
                    let looped = ms(t);
                    blas.set_threads(default_threads);
                    (call, looped)
                }
                2 => {
                    blas.set_threads(default_threads);
                    blas.gemm(&a, &b, &mut c, big);
                    let call = ms(t0);
                    let t = Instant::now();
                    mats.par_iter().for_each(|m| blas.qr(m, n));
                    (call, ms(t))
                }
                3 => {
                    budget_core::scope(|s| s.native(|| blas.gemm(&a, &b, &mut c, big)));
                    let call = ms(t0);
                    let t = Instant::now();
                    budget_core::scope(|s| {
                        s.install(|| {
                            mats.par_iter()
                                .for_each(|m| budget_core::scope(|i| i.native(|| blas.qr(m, n))))
                        })
                    });
                    (call, ms(t))
                }
                4 => {
                    budget_core::scope(|s| s.native(|| blas.gemm(&a, &b, &mut c, big)));
                    let call = ms(t0);
                    let t = Instant::now();
                    mats.par_iter()
                        .for_each(|m| budget_core::scope(|i| i.native(|| blas.qr(m, n))));
                    (call, ms(t))
                }
                _ => {
                    budget_core::scope(|s| s.native(|| blas.gemm(&a, &b, &mut c, big)));
                    let call = ms(t0);
                    let t = Instant::now();
                    // The library asks for its fair share of the foreign pool's cores.
                    let share = (cores / rayon::current_num_threads()).max(1);
                    mats.par_iter().for_each(|m| {
                        budget_core::scope_with(share, |i| i.native(|| blas.qr(m, n)))
                    });
                    (call, ms(t))
                }
            };
            if round > 0 {
                // Round 0 warms up (pools, pages).
                times[k].push((call, looped));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    report(&times);
    with_load(|load| println!("load at the end {load}"));
    println!("{}", budget_core::stats());
}

fn with_load(f: impl FnOnce(&str)) {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    f(text.split_whitespace().next().unwrap_or("?"));
}

fn spread(v: &[f64]) -> (f64, f64) {
    (
        v.iter().copied().fold(f64::MAX, f64::min),
        v.iter().copied().fold(0.0, f64::max),
    )
}

fn report(times: &[Vec<(f64, f64)>]) {
    let loops = |k: usize| times[k].iter().map(|t| t.1).collect::<Vec<_>>();
    let wholes = |k: usize| times[k].iter().map(|t| t.0 + t.1).collect::<Vec<_>>();
    for (title, pick) in [
        ("the loop alone", &loops as &dyn Fn(usize) -> Vec<f64>),
        ("the call and the loop", &wholes),
    ] {
        let (base, hand) = (median(&pick(0)), median(&pick(1)));
        println!(
            "\n{title}, {} rounds (ms: median [min-max]; ratio: median [min-max] against \
             static, then against hand)",
            times[0].len()
        );
        for (k, name) in STRATEGIES.iter().enumerate() {
            let v = pick(k);
            let (lo, hi) = spread(&v);
            let m = median(&v);
            println!(
                "  {name:<9} {m:>7.1} [{lo:>6.1}-{hi:>6.1}]   {:.2}x [{:.2}-{:.2}]   {:.2}x \
                 [{:.2}-{:.2}]",
                m / base,
                lo / base,
                hi / base,
                m / hand,
                lo / hand,
                hi / hand
            );
        }
    }
}

//! Test support for the `budget` workspace (`publish = false`), shared by the tests,
//! the benchmarks and the demo instead of `#[path]` includes:
//!
//! - [`libs`]: where `scripts/setup-native.sh` put the real OpenBLAS / BLIS / MKL /
//!   OpenMP libraries, and a `dlopen` handle to load one by path ([`Lib`]);
//! - [`blas`]: the BLAS/LAPACK prototypes and calls the tests, benches and demo use;
//! - [`child`]: running a test body in a child process of its own (the test binary
//!   again), with a watchdog, so that libraries of different families never meet;
//! - [`workloads`] and [`kernels`]: the demo's pure-Rust and native (OpenBLAS QR,
//!   OpenMP C kernel) workloads, also timed by the benchmarks and the processes
//!   example;
//! - [`budget`]: an exact-size budget shared by the tests of one binary, and polling
//!   with a deadline;
//! - [`watch`]: the watchdogs, one mechanism: a hang ends the process with a report.
//!
//! # Examples
//!
//! ```
//! let env = budget_testkit::libs::libs_env();
//! assert!(env.ends_with(".cache/native/libs.env"));
//! ```

pub mod blas;
pub mod budget;
pub mod child;
#[cfg(unix)]
pub mod forked;
pub mod kernels;
pub mod libs;
pub mod measure;
pub mod watch;
pub mod workloads;

pub use child::{in_child, in_child_env};
pub use libs::Lib;

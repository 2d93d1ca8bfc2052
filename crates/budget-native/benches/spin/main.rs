//! What a native library's spinning workers cost a neighbour that computes: the bench
//! is in `linux.rs` (it loads Linux's libraries, pins threads and reads the process's
//! CPU time); elsewhere it says so.
#![allow(missing_docs)]

#[cfg(target_os = "linux")]
mod linux;

fn main() {
    #[cfg(target_os = "linux")]
    linux::main();
    #[cfg(not(target_os = "linux"))]
    eprintln!("spin: this benchmark runs on Linux only");
}

//! Empty on purpose: it exists because `links = "budget-threads-core"` in Cargo.toml
//! (one copy of budget-core per dependency graph) needs a build script.

fn main() {}

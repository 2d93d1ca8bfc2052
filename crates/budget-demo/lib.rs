//! Nothing here: this package exists for its example, the main demo
//! (`examples/demo/`; `cargo run --release --example demo` at the workspace root),
//! and the demo's test (`tests/demo.rs`).

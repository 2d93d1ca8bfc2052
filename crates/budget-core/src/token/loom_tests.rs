//! Loom models of the token protocol (filled in below).

//! Fuzz target bodies for pklock. The cargo-fuzz binaries (fuzz_targets/) call them, and
//! so does lockd/tests/fuzz_corpus.rs, which replays the committed corpus on stable Rust
//! in `cargo test`. Each `run` takes one raw fuzz input and panics when a check fails.

pub mod frame;
#[path = "../../lockd/tests/model/mod.rs"]
pub mod model;
pub mod request;
pub mod table;

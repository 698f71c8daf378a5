//! Replays the committed fuzz corpus (fuzz/corpus/<target>/*) through the same target
//! bodies the cargo-fuzz binaries run (fuzz/src), on stable Rust and without libFuzzer,
//! so `cargo test` keeps every past finding and seed passing. docs/FUZZING.md explains
//! how to fuzz for real.

#[path = "../../fuzz/src/lib.rs"]
mod fuzz;

use std::path::Path;

/// Runs `body` on every file of fuzz/corpus/`target`, naming the file that fails.
fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no corpus", dir.display());
    for file in files {
        let input = std::fs::read(&file).expect("corpus file");
        if std::panic::catch_unwind(|| body(&input)).is_err() {
            panic!("fuzz target {target} fails on {}", file.display());
        }
    }
}

#[test]
fn frame_corpus() {
    replay("frame", fuzz::frame::run);
}

#[test]
fn request_corpus() {
    replay("request", fuzz::request::run);
}

#[test]
fn table_corpus() {
    replay("table", fuzz::table::run);
}

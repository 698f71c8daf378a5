//! cargo-fuzz entry point for the `table` target; the body is in src/table.rs, shared with
//! the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pklock_fuzz::table::run(data));

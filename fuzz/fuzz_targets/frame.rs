//! cargo-fuzz entry point for the `frame` target; the body is in src/frame.rs, shared with
//! the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pklock_fuzz::frame::run(data));

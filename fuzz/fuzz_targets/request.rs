//! cargo-fuzz entry point for the `request` target; the body is in src/request.rs, shared with
//! the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pklock_fuzz::request::run(data));

//! Fuzz target: `Module::parse` on arbitrary bytes must return Ok or Err, never panic, hang
//! or allocate without bound. Seeds: the fixtures under tests/data/ (see fuzz/README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kmx::verify::Module::parse(data);
});

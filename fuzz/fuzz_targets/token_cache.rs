#![no_main]
//! deq-lm token caches (header, fingerprint, ids).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = deq_zoo_fuzz::file("tokens.ids", data);
    let _ = deq_lm::data::cache::read_ids(&p, 0x1234_5678_9abc_def0);
});

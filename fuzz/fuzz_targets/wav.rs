#![no_main]
//! WAV audio (deq-inr).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = deq_inr::wav::Audio::parse(data);
});

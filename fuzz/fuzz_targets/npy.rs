#![no_main]
//! NumPy .npy arrays (deq-train).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = deq_train::data::parse_npy(data);
});

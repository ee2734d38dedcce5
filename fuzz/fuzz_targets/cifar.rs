#![no_main]
//! CIFAR-10 binary batches (deq-train).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = deq_train::data::parse_cifar10(data);
});

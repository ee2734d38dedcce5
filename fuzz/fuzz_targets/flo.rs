#![no_main]
//! Middlebury .flo optical flow (deq-flow).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = deq_flow::io::flo::parse(data);
});

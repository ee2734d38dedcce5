#![no_main]
//! PFM images and flow (deq-flow).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = deq_flow::io::pfm::parse(data);
});

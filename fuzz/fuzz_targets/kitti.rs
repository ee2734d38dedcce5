#![no_main]
//! KITTI 16-bit PNG flow with validity (deq-flow).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = deq_zoo_fuzz::file("flow.png", data);
    let _ = deq_flow::io::kitti::read(&p);
});

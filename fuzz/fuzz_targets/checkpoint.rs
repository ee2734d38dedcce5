#![no_main]
//! A checkpoint sidecar (latest.json) next to a valid tensor file (deq-train).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = deq_zoo_fuzz::scratch();
    let tensors = dir.join("step-00000002.safetensors");
    if !tensors.exists() {
        let t = candle_core::Tensor::arange(0f32, 6.0, &candle_core::Device::Cpu).unwrap();
        candle_core::safetensors::save(&std::collections::HashMap::from([("w".to_string(), t)]), &tensors).unwrap();
    }
    let p = deq_zoo_fuzz::file("latest.json", data);
    let _ = deq_train::Checkpointer::load(&p, &candle_core::Device::Cpu);
});

#![no_main]
//! safetensors tensor files as checkpoints load them (candle).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = candle_core::safetensors::load_buffer(data, &candle_core::Device::Cpu);
});

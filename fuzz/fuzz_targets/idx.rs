#![no_main]
//! IDX images and labels, raw or gzipped (deq-train).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = deq_train::data::parse_idx(data, deq_train::data::idx::IDX_IMAGES_MAGIC, "image");
    let _ = deq_train::data::parse_idx(data, deq_train::data::idx::IDX_LABELS_MAGIC, "label");
});

#![no_main]
//! tokenizer.json vocabularies (deq-lm).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = deq_zoo_fuzz::file("tokenizer.json", data);
    let _ = deq_lm::data::Vocab::load(&p);
});

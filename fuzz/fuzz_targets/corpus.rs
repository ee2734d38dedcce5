#![no_main]
//! Text corpora as lines (deq-lm).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = deq_zoo_fuzz::file("corpus.txt", data);
    let _ = deq_lm::data::read_lines(&p);
});

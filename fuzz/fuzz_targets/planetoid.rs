#![no_main]
//! Planetoid text folders (ignn): meta, edges, features, labels, split.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let d = deq_zoo_fuzz::folder(data, &["meta.txt", "edges.txt", "features.txt", "labels.txt", "split.txt"]);
    let _ = ignn::planetoid::load_planetoid(&d);
});

#![no_main]
//! GraphSAGE JSON + npy folders (ignn).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let d = deq_zoo_fuzz::folder(data, &["ppi-G.json", "ppi-id_map.json", "ppi-class_map.json", "ppi-feats.npy"]);
    let _ = ignn::ppi::load_graphsage(&d, "ppi", true);
});

#![no_main]
//! TU graph-classification folders (ignn).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let d = deq_zoo_fuzz::folder(data, &["MINI_A.txt", "MINI_graph_indicator.txt", "MINI_graph_labels.txt", "MINI_node_labels.txt", "MINI_node_attributes.txt"]);
    let _ = ignn::tu::load_tu(&d, "MINI");
});

//! Damaged configurations: each committed `configs/mdeq` file cut at every length and mutated
//! with a fixed seed must load or fail with an error naming the file, never panic. (The image
//! readers mdeq uses are deq-train's, checked there.)

use deq_train::hostile::check_configs;
use std::path::Path;

#[test]
fn configurations() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/mdeq");
    assert!(check_configs::<mdeq::RunConfig>(&dir, 500).unwrap() >= 4);
}

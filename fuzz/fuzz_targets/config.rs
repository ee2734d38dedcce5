#![no_main]
//! Run configurations of every trainer (TOML, unknown keys refused, validated).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = deq_zoo_fuzz::file("config.toml", data);
    let _ = deq_train::hostile::load_config::<mdeq::RunConfig>(&p);
    let _ = deq_train::hostile::load_config::<ignn::config::RunConfig>(&p);
    let _ = deq_train::hostile::load_config::<deq_inr::config::RunConfig>(&p);
    let _ = deq_train::hostile::load_config::<deq_lm::config::RunConfig>(&p);
    let _ = deq_train::hostile::load_config::<deq_flow::config::RunConfig>(&p);
    let _ = deq_train::hostile::load_config::<deq_ddim::config::RunConfig>(&p);
});

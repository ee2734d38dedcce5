//! `deq-lm-bench`: time one deq-lm training step of a configuration on random tokens; prints
//! one JSON line in the format of `scripts/bench_lm_torch.py` (compare with
//! `scripts/bench_lm_compare.sh`). The benchmark itself is [`deq_lm::bench`].

use anyhow::Result;
use clap::Parser;
use deq_lm::bench::BenchArgs;

deq_train::fast_allocator!(counting);

fn main() -> Result<()> {
    let args = BenchArgs::parse();
    deq_train::runtime::configure_cpu(Some(args.threads));
    deq_train::run_on_pool(move || deq_lm::bench::run(&args))
}

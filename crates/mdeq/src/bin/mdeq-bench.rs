//! `mdeq-bench`: time one MDEQ training step (forward solve, phantom-gradient backward, SGD
//! update) of the zoo's CIFAR-small model on random CIFAR-shaped data; prints one JSON line in
//! the format of `scripts/bench_mdeq_torch.py` (compare with `scripts/bench_mdeq_compare.sh`,
//! which has both sides read one instance written by `--write-instance`: the batch, its labels
//! and the initial weights). The benchmark itself is [`mdeq::bench`].

use anyhow::Result;
use clap::Parser;
use mdeq::bench::BenchArgs;

fn main() -> Result<()> {
    let args = BenchArgs::parse();
    deq_train::runtime::configure_cpu(Some(args.threads));
    deq_train::run_on_pool(move || mdeq::bench::run(&args))
}

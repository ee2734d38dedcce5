//! `conv-bench`: times 2-D convolutions (forward, and input + weight gradient) on the shapes
//! of the zoo's models (`configs/bench/conv-shapes.txt`), one JSON object per shape and
//! implementation. `scripts/bench_conv_torch.py` times the same shapes in PyTorch and
//! `scripts/bench_conv_compare.sh` runs both side by side and prints the table of README.
//!
//! `--impl deq` is `deq_core::nn::conv2d_with` / `conv2d_backward` (the kernels the models
//! use), `--impl candle` candle's `conv2d` and its autograd (for reference).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use clap::Parser;
use deq_core::nn::{conv2d_backward, conv2d_with, Conv2dSpec};
use deq_core::rng::DeqRng;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Times conv2d forward and backward on the zoo's shapes; prints JSON lines")]
struct Args {
    /// The shape table.
    #[arg(long, default_value = "configs/bench/conv-shapes.txt")]
    shapes: std::path::PathBuf,
    /// Only shapes whose name contains this string (repeatable).
    #[arg(long)]
    filter: Vec<String>,
    /// Implementation: `deq` (deq-core's kernels) or `candle`.
    #[arg(long = "impl", default_value = "deq")]
    imp: String,
    /// Compute threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Minimum timed runs of each pass.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Keep timing each pass until this many seconds have passed.
    #[arg(long, default_value_t = 1.0)]
    min_time: f64,
    /// f32 or f64.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

/// One row of the shape table.
#[derive(Debug, Clone)]
struct Shape {
    name: String,
    x: [usize; 4],
    k: [usize; 4],
    spec: Conv2dSpec,
}

impl Shape {
    fn out_hw(&self) -> (usize, usize) {
        let span = |len: usize, k: usize, pad: usize| (len + 2 * pad - self.spec.dilation * (k - 1) - 1) / self.spec.stride + 1;
        (span(self.x[2], self.k[2], self.spec.padding.0), span(self.x[3], self.k[3], self.spec.padding.1))
    }
    /// Multiply-adds times two of the forward pass (each gradient costs the same).
    fn flops(&self) -> f64 {
        let (ho, wo) = self.out_hw();
        2.0 * (self.x[0] * self.k[0] * ho * wo * self.k[1] * self.k[2] * self.k[3]) as f64
    }
}

fn read_shapes(path: &std::path::Path) -> Result<Vec<Shape>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 12 {
            bail!("{}:{}: 12 columns expected (name n c h w o kh kw stride pad_h pad_w groups), found {}", path.display(), i + 1, f.len());
        }
        let v: Vec<usize> = f[1..].iter().map(|s| s.parse::<usize>()).collect::<Result<_, _>>().with_context(|| format!("{}:{}: a column is not a number", path.display(), i + 1))?;
        let groups = v[10];
        if groups == 0 || v[1] % groups != 0 {
            bail!("{}:{}: {} groups do not divide {} input channels", path.display(), i + 1, groups, v[1]);
        }
        out.push(Shape { name: f[0].to_string(), x: [v[0], v[1], v[2], v[3]], k: [v[4], v[1] / groups, v[5], v[6]], spec: Conv2dSpec { padding: (v[8], v[9]), stride: v[7], dilation: 1, groups } });
    }
    Ok(out)
}

/// Median seconds of `f` over at least `runs` calls and `min_time` seconds, after one warm-up.
fn time(runs: usize, min_time: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < runs || start.elapsed().as_secs_f64() < min_time {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
        if times.len() >= 1000 {
            break;
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

fn bench(s: &Shape, args: &Args, dtype: DType) -> Result<serde_json::Value> {
    let dev = Device::Cpu;
    let mut rng = DeqRng::new(0);
    let x = rng.randn(s.x.to_vec(), dtype, &dev)?;
    let k = (rng.randn(s.k.to_vec(), dtype, &dev)? * 0.1)?;
    let (ho, wo) = s.out_hw();
    let dy = rng.randn((s.x[0], s.k[0], ho, wo), dtype, &dev)?;
    let (fwd, bwd) = match args.imp.as_str() {
        "deq" => (
            time(args.runs, args.min_time, || {
                conv2d_with(&x, &k, &s.spec)?;
                Ok(())
            })?,
            time(args.runs, args.min_time, || {
                conv2d_backward(&x, &k, &dy, &s.spec)?;
                Ok(())
            })?,
        ),
        "candle" => {
            let (ph, pw) = s.spec.padding;
            let conv = |x: &Tensor, k: &Tensor| -> candle_core::Result<Tensor> {
                if ph == pw {
                    x.conv2d(k, ph, s.spec.stride, s.spec.dilation, s.spec.groups)
                } else {
                    x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?.conv2d(k, 0, s.spec.stride, s.spec.dilation, s.spec.groups)
                }
            };
            let fwd = time(args.runs, args.min_time, || {
                conv(&x, &k)?;
                Ok(())
            })?;
            let (xv, kv) = (Var::from_tensor(&x)?, Var::from_tensor(&k)?);
            let bwd = time(args.runs, args.min_time, || {
                let y = conv(xv.as_tensor(), kv.as_tensor())?;
                (y * &dy)?.sum_all()?.backward()?;
                Ok(())
            })?;
            (fwd, bwd)
        }
        other => bail!("--impl {other}: deq or candle"),
    };
    let flops = s.flops();
    Ok(serde_json::json!({
        "workload": format!("conv/{}", s.name),
        "impl": args.imp,
        "threads": args.threads,
        "dtype": args.dtype,
        "forward_s": fwd,
        "backward_s": bwd,
        "forward_gflops": flops / fwd / 1e9,
        "backward_gflops": 2.0 * flops / bwd / 1e9,
    }))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dtype = match args.dtype.as_str() {
        "f32" => DType::F32,
        "f64" => DType::F64,
        other => bail!("--dtype {other}: f32 or f64"),
    };
    let shapes = read_shapes(&args.shapes)?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads.max(1)).build()?;
    for s in shapes.iter().filter(|s| args.filter.is_empty() || args.filter.iter().any(|f| s.name.contains(f.as_str()))) {
        let row = pool.install(|| bench(s, &args, dtype))?;
        println!("{row}");
    }
    Ok(())
}

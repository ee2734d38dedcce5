//! Pruned vector-Jacobian products (cargo feature `pruned-vjp`).
//!
//! This module walks candle's autograd graph through `Tensor::op`, which candle-core keeps
//! crate-private; it compiles only against a candle-core whose `Tensor::op` is public, such as
//! the copy under `vendor/candle-core` that this repository's workspace uses through
//! `[patch.crates-io]`. A crate that depends on deq-core and wants this path adds the same
//! `[patch.crates-io]` entry to its own workspace and enables the feature.
//!
//! The adjoint solve of implicit differentiation, the power method and the Jacobian
//! regulariser all need `v^T d out / d z` many times at the same point. candle's `backward`
//! computes the gradient of *every* tracked node, so each of those products also pays for the
//! parameter gradients (for `tanh(z W^T + x U^T)`: four matrix products instead of one) and
//! for a hash-map entry plus a zero tensor per node.
//!
//! [`VjpPlan`] walks the graph of `out` once, keeps only the nodes that depend on the chosen
//! inputs, in reverse topological order, and then propagates cotangents through those nodes
//! only. It also fixes three of candle's backward rules on the way: `scatter_add` (candle masks
//! the gradient of the destination, which is wrong: addition passes it through unchanged),
//! `scatter` (candle passes the destination's gradient through the overwritten positions) and
//! `max_pool2d` (candle scales the gradient of a unique maximum by `1 / (kh * kw)`).
//! Ops whose backward it does not implement (bilinear upsampling, transposed 1-d convolution,
//! ceil) make [`VjpPlan::new`] fail; [`Vjp`] then falls back to candle's full backward.

use candle_core::op::{BinaryOp, Op, ReduceOp, UnaryOp};
use candle_core::{Tensor, TensorId};
use std::collections::{HashMap, HashSet};

/// The inputs of `op` through which a gradient can flow, and the name of the op when its
/// backward is not implemented here.
fn op_inputs(op: &Op) -> (Vec<&Tensor>, Option<&'static str>) {
    match op {
        Op::Binary(a, b, _) | Op::Matmul(a, b) => (vec![a, b], None),
        Op::Unary(_, UnaryOp::Floor | UnaryOp::Round | UnaryOp::Sign) | Op::Cmp(..) => (vec![], None),
        Op::Reduce(_, ReduceOp::ArgMin | ReduceOp::ArgMax, _) => (vec![], None),
        Op::Unary(a, UnaryOp::Ceil) => (vec![a], Some("ceil")),
        Op::Unary(a, _) | Op::Reduce(a, _, _) | Op::Copy(a) | Op::Broadcast(a) | Op::Reshape(a) | Op::ToDevice(a) => (vec![a], None),
        Op::Transpose(a, ..) | Op::Permute(a, _) | Op::Narrow(a, ..) | Op::Elu(a, _) | Op::Powf(a, _) => (vec![a], None),
        Op::ToDType(a) => (if a.dtype().is_float() { vec![a] } else { vec![] }, None),
        Op::Affine { arg, mul, .. } => (if *mul == 0.0 { vec![] } else { vec![arg] }, None),
        Op::Gather(a, _, _) | Op::IndexSelect(a, _, _) => (vec![a], None),
        Op::Scatter(a, _, s, _) | Op::ScatterAdd(a, _, s, _) | Op::IndexAdd(a, _, s, _) => (vec![a, s], None),
        Op::WhereCond(_, t, f) => (vec![t, f], None),
        Op::Conv1D { arg, kernel, .. } | Op::Conv2D { arg, kernel, .. } | Op::ConvTranspose2D { arg, kernel, .. } => {
            (vec![arg, kernel], None)
        }
        Op::ConvTranspose1D { arg, kernel, .. } => (vec![arg, kernel], Some("conv-transpose1d")),
        Op::AvgPool2D { arg, kernel_size, stride } | Op::MaxPool2D { arg, kernel_size, stride } => {
            (vec![arg], if kernel_size != stride { Some("pool2d with kernel != stride") } else { None })
        }
        Op::UpsampleNearest1D { arg, .. } | Op::UpsampleNearest2D { arg, .. } => (vec![arg], None),
        Op::UpsampleBilinear2D { arg, .. } => (vec![arg], Some("upsample-bilinear2d")),
        Op::Cat(args, _) => (args.iter().collect(), None),
        Op::SliceScatter0(a, b, _) => (vec![a, b], None),
        Op::CustomOp1(a, _) => (vec![a], None),
        Op::CustomOp2(a, b, _) => (vec![a, b], None),
        Op::CustomOp3(a, b, c, _) => (vec![a, b, c], None),
    }
}

/// Error of [`VjpPlan::new`]: the graph holds an op whose backward is not implemented here.
#[derive(Debug, Clone, thiserror::Error)]
#[error("pruned vector-Jacobian product: no backward rule for `{0}`")]
pub struct UnsupportedOp(pub &'static str);

/// A reusable, pruned reverse pass from `outs` to `wrt` (see the module docs).
#[derive(Debug, Clone)]
pub struct VjpPlan {
    outs: Vec<Tensor>,
    wrt: Vec<Tensor>,
    /// Interior nodes that depend on `wrt`, inputs before outputs.
    order: Vec<Tensor>,
    live: HashSet<TensorId>,
    /// Contiguous transposes of constant right-hand sides of matrix products on the path,
    /// by node id (a product with a transposed view is much slower than with a contiguous one).
    rhs_t: HashMap<TensorId, Tensor>,
}

impl VjpPlan {
    /// Walks the graph of `outs` and keeps the nodes that depend on `wrt`.
    pub fn new(outs: &[Tensor], wrt: &[Tensor]) -> Result<Self, UnsupportedOp> {
        let wrt_ids: HashSet<TensorId> = wrt.iter().map(|t| t.id()).collect();
        let (plan, _) = Self::build(outs, |t| wrt_ids.contains(&t.id()), true)?;
        Ok(Self { wrt: wrt.to_vec(), ..plan })
    }

    /// A plan with respect to every variable the graph of `outs` reaches (in the order found),
    /// for a single reverse pass.
    pub fn for_variables(outs: &[Tensor]) -> Result<Self, UnsupportedOp> {
        let (plan, vars) = Self::build(outs, |t| t.is_variable(), false)?;
        Ok(Self { wrt: vars, ..plan })
    }

    fn build(outs: &[Tensor], is_wrt: impl Fn(&Tensor) -> bool, cache_transposes: bool) -> Result<(Self, Vec<Tensor>), UnsupportedOp> {
        let mut found = Vec::new();
        let mut live: HashMap<TensorId, bool> = HashMap::new();
        let mut order = Vec::new();
        // Iterative post-order walk (deep graphs must not overflow the stack).
        let mut stack: Vec<(Tensor, bool)> = outs.iter().rev().map(|t| (t.clone(), false)).collect();
        while let Some((t, expanded)) = stack.pop() {
            if live.contains_key(&t.id()) {
                continue;
            }
            if is_wrt(&t) {
                live.insert(t.id(), true);
                found.push(t.clone());
                continue;
            }
            let Some(op) = t.op() else {
                live.insert(t.id(), false);
                continue;
            };
            let (inputs, unsupported) = op_inputs(op);
            if !expanded {
                stack.push((t.clone(), true));
                for i in inputs.into_iter().rev() {
                    if !live.contains_key(&i.id()) {
                        stack.push((i.clone(), false));
                    }
                }
            } else {
                let l = inputs.iter().any(|i| live.get(&i.id()).copied().unwrap_or(false));
                if l {
                    if let Some(name) = unsupported {
                        return Err(UnsupportedOp(name));
                    }
                    order.push(t.clone());
                }
                live.insert(t.id(), l);
            }
        }
        let live: HashSet<TensorId> = live.into_iter().filter(|(_, l)| *l).map(|(id, _)| id).collect();
        let mut rhs_t = HashMap::new();
        if cache_transposes {
            for node in &order {
                if let Some(Op::Matmul(a, b)) = node.op() {
                    if live.contains(&a.id()) && !live.contains(&b.id()) {
                        if let Ok(t) = crate::ops::transpose_last2(&b.detach()) {
                            rhs_t.insert(node.id(), t);
                        }
                    }
                }
            }
        }
        Ok((Self { outs: outs.to_vec(), wrt: Vec::new(), order, live, rhs_t }, found))
    }

    /// The tensors the products are taken with respect to.
    pub fn wrt(&self) -> &[Tensor] {
        &self.wrt
    }

    /// Number of graph nodes the reverse pass visits.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when no output depends on the inputs (every product is zero).
    pub fn is_empty(&self) -> bool {
        self.order.is_empty() && !self.outs.iter().any(|o| self.live.contains(&o.id()))
    }

    /// `sum_k cotangents[k]^T d outs[k] / d wrt[j]` for every `j`, detached.
    pub fn apply(&self, cotangents: &[Tensor]) -> candle_core::Result<Vec<Tensor>> {
        if cotangents.len() != self.outs.len() {
            candle_core::bail!("vjp: {} cotangents for {} outputs", cotangents.len(), self.outs.len());
        }
        let mut grads = Grads { map: HashMap::new(), live: &self.live, rhs_t: &self.rhs_t };
        for (o, c) in self.outs.iter().zip(cotangents) {
            if o.shape() != c.shape() {
                candle_core::bail!("vjp: cotangent shape {:?} for an output of shape {:?}", c.dims(), o.dims());
            }
            grads.add(o, c.detach())?;
        }
        for node in self.order.iter().rev() {
            let Some(g) = grads.map.remove(&node.id()) else { continue };
            let op = node.op().as_ref().expect("interior nodes have an op");
            backprop(node, op, &g.detach(), &mut grads)?;
        }
        self.wrt
            .iter()
            .map(|w| match grads.map.remove(&w.id()) {
                Some(g) => Ok(g.detach()),
                None => w.zeros_like(),
            })
            .collect()
    }
}

struct Grads<'a> {
    map: HashMap<TensorId, Tensor>,
    live: &'a HashSet<TensorId>,
    rhs_t: &'a HashMap<TensorId, Tensor>,
}

impl Grads<'_> {
    fn needs(&self, t: &Tensor) -> bool {
        self.live.contains(&t.id())
    }
    /// Accumulates `g` into the gradient of `t` if `t` is on a path to the inputs.
    fn add(&mut self, t: &Tensor, g: Tensor) -> candle_core::Result<()> {
        if !self.needs(t) {
            return Ok(());
        }
        let g = if g.shape() != t.shape() { g.broadcast_as(t.shape())? } else { g };
        match self.map.remove(&t.id()) {
            Some(prev) => {
                self.map.insert(t.id(), (prev + g)?);
            }
            None => {
                self.map.insert(t.id(), g);
            }
        }
        Ok(())
    }
    /// Like [`Grads::add`] but computes the contribution only when it is needed.
    fn add_with(&mut self, t: &Tensor, g: impl FnOnce() -> candle_core::Result<Tensor>) -> candle_core::Result<()> {
        if self.needs(t) {
            self.add(t, g()?)
        } else {
            Ok(())
        }
    }
}

fn broadcast_back(arg: &Tensor, t: &Tensor, reduced_dims: &[usize]) -> candle_core::Result<Tensor> {
    if arg.rank() == t.rank() {
        t.broadcast_as(arg.shape())
    } else {
        t.reshape(reduced_dims)?.broadcast_as(arg.shape())
    }
}

/// Sums `g` over blocks of `sh x sw` (the adjoint of nearest upsampling by integer factors).
fn sum_blocks_2d(g: &Tensor, h: usize, w: usize) -> candle_core::Result<Tensor> {
    let (n, c, th, tw) = g.dims4()?;
    if th % h != 0 || tw % w != 0 {
        candle_core::bail!("vjp: nearest upsampling {h}x{w} -> {th}x{tw} is not by integer factors");
    }
    g.contiguous()?.reshape((n, c, h, th / h, w, tw / w))?.sum(5)?.sum(3)
}

/// `x.sum_keepdim` over the adjacent dimensions `from..to` of a contiguous `x`: one product
/// with a ones row per leading index on the CPU in f32/f64 (the block is `(pre, n, post)`),
/// candle's reduction elsewhere.
fn sum_block(x: &Tensor, from: usize, to: usize) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let (pre, n, post): (usize, usize, usize) = (dims[..from].iter().product(), dims[from..to].iter().product(), dims[to..].iter().product());
    let mut shape = dims.to_vec();
    for d in &mut shape[from..to] {
        *d = 1;
    }
    if x.device().is_cpu() && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64) && n > 1 {
        let s = if post == 1 {
            x.reshape((pre, n))?.sum_keepdim(1)?
        } else if pre == 1 {
            Tensor::ones((1, n), x.dtype(), x.device())?.matmul(&x.reshape((n, post))?)?
        } else {
            Tensor::ones((1, 1, n), x.dtype(), x.device())?.broadcast_as((pre, 1, n))?.matmul(&x.reshape((pre, n, post))?)?
        };
        return s.reshape(shape);
    }
    let mut s = x.clone();
    for d in (from..to).rev() {
        s = s.sum_keepdim(d)?;
    }
    Ok(s)
}

fn backprop(node: &Tensor, op: &Op, g: &Tensor, grads: &mut Grads<'_>) -> candle_core::Result<()> {
    let d = |t: &Tensor| t.detach();
    match op {
        Op::Binary(a, b, BinaryOp::Add) => {
            grads.add(a, g.clone())?;
            grads.add(b, g.clone())?;
        }
        Op::Binary(a, b, BinaryOp::Sub) => {
            grads.add(a, g.clone())?;
            grads.add_with(b, || g.neg())?;
        }
        Op::Binary(a, b, BinaryOp::Mul) => {
            grads.add_with(a, || g * d(b))?;
            grads.add_with(b, || g * d(a))?;
        }
        Op::Binary(a, b, BinaryOp::Div) => {
            grads.add_with(a, || g / d(b))?;
            grads.add_with(b, || (g * d(a))?.div(&d(b).sqr()?)?.neg())?;
        }
        Op::Binary(a, b, BinaryOp::Minimum | BinaryOp::Maximum) => {
            let n = d(node);
            let ma = n.eq(&d(a))?.to_dtype(g.dtype())?;
            let mb = n.eq(&d(b))?.to_dtype(g.dtype())?;
            // Ties share the gradient equally, as in candle.
            grads.add_with(a, || (&ma * g)?.div(&(&mb + 1.0)?))?;
            grads.add_with(b, || (&mb * g)?.div(&(&ma + 1.0)?))?;
        }
        Op::Matmul(a, b) => {
            let bt = grads.rhs_t.get(&node.id()).cloned();
            grads.add_with(a, || match bt {
                Some(bt) => matmul_any_layout(g, &bt),
                None => matmul_any_layout(g, &d(b).t()?),
            })?;
            grads.add_with(b, || matmul_any_layout(&d(a).t()?, g))?;
        }
        Op::Unary(a, u) => {
            let x = d(a);
            let y = d(node);
            let ga = match u {
                UnaryOp::Exp => (g * y)?,
                UnaryOp::Log => (g / x)?,
                UnaryOp::Sin => (g * x.cos()?)?,
                UnaryOp::Cos => (g * x.sin()?)?.neg()?,
                UnaryOp::Tanh => (g * (1.0 - y.sqr()?)?)?,
                UnaryOp::Abs => (g * x.ge(&x.zeros_like()?)?.where_cond(&x.ones_like()?, &x.ones_like()?.neg()?)?)?,
                UnaryOp::Neg => g.neg()?,
                UnaryOp::Recip => (g / x.sqr()?)?.neg()?,
                UnaryOp::Sqr => (g * x)?.affine(2.0, 0.0)?,
                UnaryOp::Sqrt => (g / y)?.affine(0.5, 0.0)?,
                UnaryOp::Relu => (g * x.ge(&x.zeros_like()?)?.to_dtype(x.dtype())?)?,
                UnaryOp::Silu => {
                    let s = (x.neg()?.exp()? + 1.0)?.recip()?;
                    (g * ((&s * (1.0 - &y)?)? + &y)?)?
                }
                UnaryOp::Gelu => {
                    let cube = x.powf(3.0)?;
                    let t = ((0.0356774 * &cube)? + (0.797885 * &x)?)?.tanh()?;
                    let dg = (((0.5 * &t)? + ((0.0535161 * cube)? + (0.398942 * &x)?)? * (1.0 - t.sqr()?)?)? + 0.5)?;
                    (g * dg)?
                }
                UnaryOp::Erf => (g * ((2.0 / std::f64::consts::PI.sqrt()) * x.sqr()?.neg()?.exp()?)?)?,
                UnaryOp::GeluErf => {
                    let e = (0.398942 * (x.sqr()?.neg()? / 2.0)?.exp()? * &x)?;
                    let erf = (0.5 * (&x / 2f64.sqrt())?.erf()?)?;
                    (g * ((0.5 + e)? + erf)?)?
                }
                UnaryOp::Floor | UnaryOp::Round | UnaryOp::Sign | UnaryOp::Ceil => return Ok(()),
            };
            grads.add(a, ga)?;
        }
        Op::Elu(a, alpha) => {
            grads.add_with(a, || {
                let x = d(a);
                let pos = x.gt(&x.zeros_like()?)?.to_dtype(x.dtype())?;
                let neg = x.le(&x.zeros_like()?)?.to_dtype(x.dtype())?;
                g * (pos + (neg * (d(node) + *alpha)?)?)?
            })?;
        }
        Op::Powf(a, e) => grads.add_with(a, || (g * d(a).powf(e - 1.0)?)?.affine(*e, 0.0))?,
        Op::Affine { arg, mul, .. } => grads.add_with(arg, || g.affine(*mul, 0.0))?,
        Op::Reduce(a, ReduceOp::Sum, dims) => grads.add_with(a, || broadcast_back(a, g, dims))?,
        Op::Reduce(a, ReduceOp::Max | ReduceOp::Min, dims) => {
            grads.add_with(a, || {
                let n = broadcast_back(a, &d(node), dims)?;
                let gb = broadcast_back(a, g, dims)?;
                n.eq(&d(a))?.to_dtype(g.dtype())? * gb
            })?;
        }
        Op::Reduce(_, ReduceOp::ArgMin | ReduceOp::ArgMax, _) | Op::Cmp(..) => {}
        Op::ToDType(a) => grads.add_with(a, || g.to_dtype(a.dtype()))?,
        Op::Copy(a) => grads.add(a, g.clone())?,
        Op::ToDevice(a) => grads.add_with(a, || g.to_device(a.device()))?,
        Op::Reshape(a) => grads.add_with(a, || g.reshape(a.dims()))?,
        Op::Transpose(a, d1, d2) => grads.add_with(a, || g.transpose(*d1, *d2))?,
        Op::Permute(a, dims) => {
            grads.add_with(a, || {
                let mut inv = vec![0; dims.len()];
                for (i, &k) in dims.iter().enumerate() {
                    inv[k] = i;
                }
                g.permute(inv)
            })?;
        }
        Op::Broadcast(a) => {
            grads.add_with(a, || {
                let (ad, nd) = (a.dims(), node.dims());
                let left = nd.len() - ad.len();
                let mut sum_dims: Vec<usize> = (0..left).collect();
                for (i, (n, k)) in nd[left..].iter().zip(ad).enumerate() {
                    if n != k {
                        sum_dims.push(i + left);
                    }
                }
                // Runs of adjacent broadcast dimensions are summed as one block, from the
                // innermost, each as a product with a ones row (GEMM kernels instead of candle's
                // strided fold, which was the largest cost of backpropagating through biases and
                // group, batch and layer norms).
                let mut s = g.clone();
                let mut runs: Vec<(usize, usize)> = Vec::new();
                for &d in &sum_dims {
                    match runs.last_mut() {
                        Some((_, end)) if *end == d => *end = d + 1,
                        _ => runs.push((d, d + 1)),
                    }
                }
                for &(from, to) in runs.iter().rev() {
                    s = sum_block(&s.contiguous()?, from, to)?;
                }
                for _ in 0..left {
                    s = s.squeeze(0)?;
                }
                Ok(s)
            })?;
        }
        Op::Narrow(a, dim, start, len) => {
            grads.add_with(a, || {
                let ad = a.dims();
                let mut parts = Vec::with_capacity(3);
                if *start > 0 {
                    let mut s = ad.to_vec();
                    s[*dim] = *start;
                    parts.push(Tensor::zeros(s, g.dtype(), g.device())?);
                }
                parts.push(g.clone());
                let right = ad[*dim] - start - len;
                if right > 0 {
                    let mut s = ad.to_vec();
                    s[*dim] = right;
                    parts.push(Tensor::zeros(s, g.dtype(), g.device())?);
                }
                if parts.len() == 1 {
                    Ok(g.clone())
                } else {
                    Tensor::cat(&parts, *dim)
                }
            })?;
        }
        Op::Cat(args, dim) => {
            let mut start = 0;
            for a in args {
                let len = a.dims()[*dim];
                grads.add_with(a, || g.narrow(*dim, start, len))?;
                start += len;
            }
        }
        Op::SliceScatter0(a, b, start) => {
            grads.add_with(b, || g.narrow(0, *start, b.dim(0)?))?;
            grads.add_with(a, || g.slice_scatter0(&b.zeros_like()?, *start))?;
        }
        Op::WhereCond(p, t, f) => {
            let p = d(p);
            grads.add_with(t, || p.where_cond(g, &g.zeros_like()?))?;
            grads.add_with(f, || p.where_cond(&g.zeros_like()?, g))?;
        }
        Op::Gather(a, idx, dim) => grads.add_with(a, || a.zeros_like()?.scatter_add(&idx.contiguous()?, &g.contiguous()?, *dim))?,
        Op::Scatter(a, idx, s, dim) => {
            // The destination's gradient is zero where `scatter` overwrote it.
            grads.add_with(a, || {
                let keep = g.ones_like()?.scatter(&idx.contiguous()?, &d(s).zeros_like()?, *dim)?;
                g * keep
            })?;
            grads.add_with(s, || g.gather(idx, *dim))?;
        }
        Op::ScatterAdd(a, idx, s, dim) => {
            grads.add(a, g.clone())?;
            grads.add_with(s, || g.gather(idx, *dim))?;
        }
        Op::IndexSelect(a, idx, dim) => {
            grads.add_with(a, || a.zeros_like()?.index_add(&idx.contiguous()?, &g.contiguous()?, *dim))?;
        }
        Op::IndexAdd(a, idx, s, dim) => {
            grads.add(a, g.clone())?;
            grads.add_with(s, || g.index_select(idx, *dim))?;
        }
        Op::Conv1D { arg, kernel, padding, stride, dilation } => {
            grads.add_with(arg, || {
                let k = kernel.dim(2)?;
                let out = (g.dim(2)? - 1) * stride + dilation * (k - 1) + 1 - 2 * padding;
                let out_pad = arg.dim(2)? - out;
                if *padding == 0 {
                    // candle's conv_transpose1d takes a col2im path without padding that gives
                    // wrong results for batch entries after the first when its input is square
                    // (e.g. a stride-2 conv1d of length 9 with 4 channels); the same product as a
                    // 2-d transposed convolution of height 1 is right.
                    let k2 = d(kernel).unsqueeze(2)?;
                    return g.unsqueeze(2)?.conv_transpose2d(&k2, 0, out_pad, *stride, *dilation)?.narrow(2, 0, 1)?.squeeze(2);
                }
                g.conv_transpose1d(&d(kernel), *padding, out_pad, *stride, *dilation, 1)
            })?;
            grads.add_with(kernel, || {
                // candle's conv1d reads a non-contiguous kernel as if it were contiguous (wrong
                // results, no error), and candle's own backward hands it `g^T`: copy first.
                let gk = d(arg).transpose(0, 1)?.contiguous()?.conv1d(&g.transpose(0, 1)?.contiguous()?, *padding, *dilation, *stride, 1)?.transpose(0, 1)?;
                gk.narrow(2, 0, kernel.dim(2)?)
            })?;
        }
        Op::Conv2D { arg, kernel, padding, stride, dilation } => {
            grads.add_with(arg, || {
                let (kh, kw) = (kernel.dim(2)?, kernel.dim(3)?);
                if *stride == 1 && *dilation == 1 && kh == kw && *padding < kh {
                    // Stride 1: the input gradient is a plain convolution of the output
                    // gradient with the flipped, transposed kernel (candle's transposed
                    // convolution is 3-6x slower than its convolution on the CPU).
                    let wt = d(kernel).flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
                    return g.conv2d(&wt, kh - 1 - padding, 1, 1, 1);
                }
                let k = kernel.dim(2)?;
                let out = (g.dim(2)? - 1) * stride + dilation * (k - 1) + 1 - 2 * padding;
                let out_pad = arg.dim(2)? - out;
                g.conv_transpose2d(&d(kernel), *padding, out_pad, *stride, *dilation)
            })?;
            grads.add_with(kernel, || {
                let gk = d(arg).transpose(0, 1)?.conv2d(&g.transpose(0, 1)?, *padding, *dilation, *stride, 1)?.transpose(0, 1)?;
                gk.narrow(2, 0, kernel.dim(2)?)?.narrow(3, 0, kernel.dim(3)?)
            })?;
        }
        Op::ConvTranspose2D { arg, kernel, padding, stride, dilation, .. } => {
            grads.add_with(arg, || g.conv2d(&d(kernel), *padding, *stride, *dilation, 1))?;
            grads.add_with(kernel, || {
                let gk = g.transpose(0, 1)?.conv2d(&d(arg).transpose(0, 1)?, *padding, *dilation, *stride, 1)?.transpose(0, 1)?;
                gk.narrow(2, 0, kernel.dim(2)?)?.narrow(3, 0, kernel.dim(3)?)
            })?;
        }
        Op::AvgPool2D { arg, kernel_size, .. } => {
            grads.add_with(arg, || {
                let (_, _, h, w) = arg.dims4()?;
                let up = g.upsample_nearest2d(h, w)?;
                up.affine(1.0 / (kernel_size.0 * kernel_size.1) as f64, 0.0)
            })?;
        }
        Op::MaxPool2D { arg, kernel_size, stride } => {
            grads.add_with(arg, || {
                let (_, _, h, w) = arg.dims4()?;
                let x = d(arg);
                let mask = x.eq(&d(node).upsample_nearest2d(h, w)?)?.to_dtype(x.dtype())?;
                // Ties share the window's gradient equally (candle multiplies by the mean of the
                // mask instead, which scales a unique maximum's gradient by 1 / window size).
                let count = mask.avg_pool2d_with_stride(*kernel_size, *stride)?.affine((kernel_size.0 * kernel_size.1) as f64, 0.0)?;
                (g / count)?.upsample_nearest2d(h, w)? * mask
            })?;
        }
        Op::UpsampleNearest2D { arg, .. } => {
            grads.add_with(arg, || {
                let (_, _, h, w) = arg.dims4()?;
                sum_blocks_2d(g, h, w)
            })?;
        }
        Op::UpsampleNearest1D { arg, target_size } => {
            grads.add_with(arg, || {
                let (n, c, l) = arg.dims3()?;
                if target_size % l != 0 {
                    candle_core::bail!("vjp: nearest upsampling {l} -> {target_size} is not by an integer factor");
                }
                g.contiguous()?.reshape((n, c, l, target_size / l))?.sum(3)
            })?;
        }
        Op::CustomOp1(a, c) => {
            if grads.needs(a) {
                if let Some(ga) = c.bwd(a, node, g)? {
                    grads.add(a, ga)?;
                }
            }
        }
        Op::CustomOp2(a, b, c) => {
            if grads.needs(a) || grads.needs(b) {
                let (ga, gb) = super::with_wanted(&[grads.needs(a), grads.needs(b)], || c.bwd(a, b, node, g))?;
                if let Some(ga) = ga {
                    grads.add(a, ga)?;
                }
                if let Some(gb) = gb {
                    grads.add(b, gb)?;
                }
            }
        }
        Op::CustomOp3(a, b, c3, c) => {
            if grads.needs(a) || grads.needs(b) || grads.needs(c3) {
                let (ga, gb, gc) = super::with_wanted(&[grads.needs(a), grads.needs(b), grads.needs(c3)], || c.bwd(a, b, c3, node, g))?;
                for (t, gt) in [(a, ga), (b, gb), (c3, gc)] {
                    if let Some(gt) = gt {
                        grads.add(t, gt)?;
                    }
                }
            }
        }
        Op::ConvTranspose1D { .. } | Op::UpsampleBilinear2D { .. } => {
            candle_core::bail!("vjp: no backward rule for this op (VjpPlan::new should have refused it)")
        }
    }
    Ok(())
}


/// `x.matmul(y)`, copying the operands to contiguous memory when candle's kernel refuses their
/// strides (batched products of transposed views, as attention's backward pass produces);
/// the common layouts take no copy.
fn matmul_any_layout(x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    match x.matmul(y) {
        Ok(t) => Ok(t),
        // (A shape error fails again, with the contiguous operands' message.)
        Err(_) => x.contiguous()?.matmul(&y.contiguous()?),
    }
}

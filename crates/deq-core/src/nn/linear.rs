//! `x W^T` for inputs of any rank as one large matrix product.
//!
//! candle's `broadcast_matmul` of a `(batch, len, in)` input with a shared `(in, out)` weight
//! runs `batch` small products, and its backward materialises a `(batch, in, out)` weight
//! gradient before summing it over the batch: on a transformer's `(32, 70, 256)` activations
//! that is 32 products with an inner size of 70 and a 32-fold gradient buffer per linear map.
//! Flattening the leading dimensions gives one `(batch * len, in) x (in, out)` product forward
//! and one of each kind backward, with the same values.

use candle_core::{Result, Tensor};

/// `x W^T` for `x` `(..., in)` and `w` `(out, in)`: `(..., out)`.
pub fn linear_map(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let wt = w.t()?;
    if x.rank() <= 2 {
        return x.matmul(&wt);
    }
    let dims = x.dims().to_vec();
    let (lead, last) = dims.split_at(dims.len() - 1);
    let rows: usize = lead.iter().product();
    let y = x.contiguous()?.reshape((rows, last[0]))?.matmul(&wt)?;
    let mut out = lead.to_vec();
    out.push(w.dim(0)?);
    y.reshape(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::DeqRng;
    use candle_core::{DType, Device, Var};

    #[test]
    fn equals_the_broadcast_product_with_the_same_gradients() {
        let mut rng = DeqRng::new(3);
        let x = Var::from_tensor(&rng.randn((3, 5, 4), DType::F64, &Device::Cpu).unwrap()).unwrap();
        let w = Var::from_tensor(&rng.randn((6, 4), DType::F64, &Device::Cpu).unwrap()).unwrap();
        let up = rng.randn((3, 5, 6), DType::F64, &Device::Cpu).unwrap();
        let a = linear_map(x.as_tensor(), w.as_tensor()).unwrap();
        let b = x.as_tensor().broadcast_matmul(&w.as_tensor().t().unwrap()).unwrap();
        let diff = |p: &Tensor, q: &Tensor| (p - q).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
        assert!(diff(&a, &b) < 1e-12);
        let ga = (a * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w] {
            assert!(diff(ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap()) < 1e-12);
        }
        // A non-contiguous input (a transposed view) and a 2-d input.
        let xt = x.as_tensor().transpose(0, 1).unwrap();
        let c = linear_map(&xt, w.as_tensor()).unwrap();
        assert!(diff(&c, &xt.broadcast_matmul(&w.as_tensor().t().unwrap()).unwrap()) < 1e-12);
        let x2 = x.as_tensor().get(0).unwrap();
        assert!(diff(&linear_map(&x2, w.as_tensor()).unwrap(), &x2.matmul(&w.as_tensor().t().unwrap()).unwrap()) < 1e-12);
    }
}

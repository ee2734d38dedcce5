//! 2x2 average pooling (stride 2, odd sizes floored) over the last two dimensions, composed
//! from `narrow`, `reshape` and sums so that its gradient is exact on every device.

use candle_core::{Result, Tensor};

/// Averages `(…, H, W)` over 2x2 blocks into `(…, H / 2, W / 2)`; a trailing odd row or column
/// is dropped (PyTorch's `avg_pool2d(x, 2, 2)`).
pub fn avg_pool2x2(x: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let r = dims.len();
    if r < 2 {
        candle_core::bail!("avg_pool2x2: a tensor of rank {r} has no 2-D planes");
    }
    let (h, w) = (dims[r - 2], dims[r - 1]);
    let (h2, w2) = (h / 2, w / 2);
    if h2 == 0 || w2 == 0 {
        candle_core::bail!("avg_pool2x2: a {h}x{w} plane is too small to pool");
    }
    let lead: usize = dims[..r - 2].iter().product();
    let y = x.narrow(r - 2, 0, 2 * h2)?.narrow(r - 1, 0, 2 * w2)?.contiguous()?;
    let y = y.reshape((lead, h2, 2, w2, 2))?.sum(4)?.sum(2)?;
    let mut out = dims[..r - 2].to_vec();
    out.extend([h2, w2]);
    (y * 0.25)?.reshape(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn pools_blocks_drops_odd_edges_and_spreads_gradients() {
        let x = Tensor::arange(0f64, 30.0, &Device::Cpu).unwrap().reshape((2, 3, 5)).unwrap();
        let v = Var::from_tensor(&x).unwrap();
        let y = avg_pool2x2(v.as_tensor()).unwrap();
        assert_eq!(y.dims(), &[2, 1, 2]);
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f64>().unwrap(), [3.0, 5.0, 18.0, 20.0]);
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = g.get(&v).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        // Covered entries get 1/4, the dropped last row and column nothing.
        assert_eq!(&g[..5], &[0.25, 0.25, 0.25, 0.25, 0.0]);
        assert_eq!(&g[10..15], &[0.0; 5]);
        assert!(avg_pool2x2(&Tensor::zeros((3, 1, 4), DType::F32, &Device::Cpu).unwrap()).is_err());
    }
}

//! Transformer-XL's sinusoidal embedding of relative distances (not learned).

use candle_core::{DType, Device, Result, Tensor};

/// The embedding of the relative distances `klen - 1, klen - 2, ..., 0` (row `j` encodes
/// distance `klen - 1 - j`), `(klen, d)`: for `k < d / 2` the sines
/// `sin(dist / 10000^(2k / d))` in the first half of each row, the cosines in the second half
/// (not interleaved). `d` must be even.
pub fn relative_embedding(klen: usize, d: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    if d % 2 != 0 {
        candle_core::bail!("relative position embedding: d_model {d} must be even");
    }
    let half = d / 2;
    let mut v = Vec::with_capacity(klen * d);
    for j in 0..klen {
        let dist = (klen - 1 - j) as f64;
        let angle = |k: usize| dist / 10000f64.powf(2.0 * k as f64 / d as f64);
        v.extend((0..half).map(|k| angle(k).sin()));
        v.extend((0..half).map(|k| angle(k).cos()));
    }
    Tensor::from_vec(v, (klen, d), dev)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_encode_descending_distances_sines_first() {
        let p = relative_embedding(5, 6, DType::F64, &Device::Cpu).unwrap().to_vec2::<f64>().unwrap();
        // Last row: distance 0: sines 0, cosines 1.
        assert_eq!(p[4], vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        // Row 1: distance 3; frequencies 1, 10000^(-1/3), 10000^(-2/3).
        for k in 0..3 {
            let a = 3.0 / 10000f64.powf(2.0 * k as f64 / 6.0);
            assert!((p[1][k] - a.sin()).abs() < 1e-15 && (p[1][3 + k] - a.cos()).abs() < 1e-15);
        }
        assert!(relative_embedding(3, 5, DType::F32, &Device::Cpu).is_err());
    }
}

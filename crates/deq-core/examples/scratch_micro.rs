use candle_core::{DType, Device, Tensor};
use std::time::Instant;
fn t<F: FnMut()>(name: &str, n: usize, mut f: F) {
    for _ in 0..20 { f(); }
    let mut v = vec![];
    for _ in 0..n { let s = Instant::now(); f(); v.push(s.elapsed().as_secs_f64()); }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("{name:40} median {:8.1} us  min {:8.1} us", v[n / 2] * 1e6, v[0] * 1e6);
}
fn main() -> candle_core::Result<()> {
    let d = Device::Cpu;
    let z = Tensor::randn(0f32, 1., (64, 256), &d)?;
    let w = Tensor::randn(0f32, 1., (256, 256), &d)?;
    let w2 = Tensor::randn(0f32, 1., (256, 256), &d)?;
    let x = Tensor::randn(0f32, 1., (64, 256), &d)?;
    t("matmul 64x256x256", 2000, || { z.matmul(&w).unwrap(); });
    t("matmul grad W: zT(256x64) g(64x256)", 2000, || { z.t().unwrap().matmul(&x).unwrap(); });
    t("add 64x256", 2000, || { (&z + &x).unwrap(); });
    t("add 256x256", 2000, || { (&w + &w2).unwrap(); });
    t("fast tanh 64x256", 2000, || { deq_core::ops::tanh(&z).unwrap(); });
    t("f(z) = tanh(zW + xU)", 2000, || { deq_core::ops::tanh(&(z.matmul(&w).unwrap() + x.matmul(&w2).unwrap()).unwrap()).unwrap(); });
    t("residual ops", 2000, || {
        let diff = (&x - &z).unwrap();
        let both = Tensor::stack(&[diff.sqr().unwrap().sum(1).unwrap(), x.sqr().unwrap().sum(1).unwrap()], 0).unwrap().to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
        std::hint::black_box(both);
    });
    t("detach+contiguous", 2000, || { z.detach().contiguous().unwrap(); });
    t("zeros 64x256", 2000, || { Tensor::zeros((64, 256), DType::F32, &d).unwrap(); });
    let xs = Tensor::randn(0f32, 1., (64, 6, 256), &d)?;
    let fs = Tensor::randn(0f32, 1., (64, 6, 256), &d)?;
    let al = Tensor::randn(0f32, 1., (64, 1, 6), &d)?;
    t("anderson g = fs - xs", 2000, || { (&fs - &xs).unwrap(); });
    t("anderson gram bmm", 2000, || { let g = (&fs - &xs).unwrap(); g.matmul(&g.t().unwrap()).unwrap(); });
    t("anderson gram to_vec f64", 2000, || { let g = (&fs - &xs).unwrap(); g.matmul(&g.t().unwrap()).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap(); });
    t("anderson mix bmm", 2000, || { al.matmul(&fs).unwrap(); });
    t("narrow contiguous", 2000, || { xs.narrow(1, 0, 5).unwrap().contiguous().unwrap(); });
    t("slice_set", 2000, || { xs.slice_set(&z.unsqueeze(1).unwrap(), 1, 3).unwrap(); });
    t("to_vec1 64x256", 2000, || { z.flatten_all().unwrap().to_vec1::<f32>().unwrap(); });
    t("from_vec 64x256", 2000, || { Tensor::from_vec(vec![0f32; 64*256], (64, 256), &d).unwrap(); });
    Ok(())
}

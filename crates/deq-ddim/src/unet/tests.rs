use super::*;
use deq_core::gradcheck::{assert_gradient, central_differences, max_abs_diff, var_central_differences};

fn small(dtype: DType) -> (UNet, UNetConfig) {
    let cfg = UNetConfig { in_channels: 2, out_ch: 2, ch: 32, ch_mult: vec![1, 2], num_res_blocks: 1, attn_resolutions: vec![4], dropout: 0.1, resolution: 8, resamp_with_conv: true, norm_groups: 32 };
    (UNet::new(&cfg, &mut DeqRng::new(7), dtype, &Device::Cpu).unwrap(), cfg)
}

#[test]
fn cifar10_model_has_the_checkpoint_layout() {
    let m = UNet::new(&UNetConfig::default(), &mut DeqRng::new(0), DType::F32, &Device::Cpu).unwrap();
    let vars = m.vars();
    assert_eq!(vars.len(), 328);
    assert_eq!(m.num_params(), 35_746_307);
    let shape = |n: &str| vars.iter().find(|(k, _)| k == n).unwrap_or_else(|| panic!("{n}")).1.dims().to_vec();
    assert_eq!(shape("temb.dense.0.weight"), [512, 128]);
    assert_eq!(shape("down.1.block.0.nin_shortcut.weight"), [256, 128, 1, 1]);
    assert_eq!(shape("down.1.attn.1.q.weight"), [256, 256, 1, 1]);
    assert_eq!(shape("up.3.block.0.norm1.weight"), [512]);
    assert_eq!(shape("up.1.block.2.conv1.weight"), [256, 384, 3, 3]);
    assert_eq!(shape("up.0.block.0.conv1.weight"), [128, 384, 3, 3]);
    assert_eq!(shape("up.1.attn.2.proj_out.bias"), [256]);
    assert_eq!(shape("conv_out.weight"), [3, 128, 3, 3]);
    assert!(vars.iter().all(|(k, _)| !k.contains("up.0.upsample") && !k.contains("down.3.downsample")));
    assert_eq!(vars[0].0, "temb.dense.0.weight");
    assert_eq!(vars.last().unwrap().0, "conv_out.bias");
}

#[test]
fn configurations_that_cannot_round_trip_are_refused() {
    let mut c = UNetConfig { resolution: 28, ch_mult: vec![1, 2, 2], attn_resolutions: vec![14], ..Default::default() };
    assert!(c.validate().is_ok());
    assert_eq!(c.level_resolutions(), [28, 14, 7]);
    c.ch_mult = vec![1, 2, 2, 2];
    assert!(c.validate().unwrap_err().contains("model.resolution"));
    c.ch_mult = vec![1, 2];
    c.attn_resolutions = vec![7];
    assert!(c.validate().unwrap_err().contains("attn_resolutions"));
    assert!(UNetConfig { ch: 48, ..Default::default() }.validate().unwrap_err().contains("model.ch"));
    assert!(UNetConfig { ch: 48, norm_groups: 8, ..Default::default() }.validate().is_ok());
    let g8 = UNet::new(&UNetConfig { ch: 32, ch_mult: vec![1], attn_resolutions: vec![], resolution: 8, norm_groups: 8, ..Default::default() }, &mut DeqRng::new(0), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(g8.config().norm_groups, 8);
    // More levels than the side allows: an error, not an arithmetic panic.
    for r in [4, 5] {
        assert!(UNetConfig { resolution: r, attn_resolutions: vec![], ..Default::default() }.validate().unwrap_err().contains("model.resolution"));
    }
}

#[test]
fn timestep_embedding_is_sines_then_cosines() {
    let t = Tensor::new(&[0f64, 3.0], &Device::Cpu).unwrap();
    let e = timestep_embedding(&t, 8).unwrap().to_vec2::<f64>().unwrap();
    assert_eq!(e[0], [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    let f = (-(10000f64).ln() / 3.0).exp();
    assert!((e[1][1] - (3.0 * f).sin()).abs() < 1e-6 && (e[1][5] - (3.0 * f).cos()).abs() < 1e-6);
    assert!((e[1][3] - (3.0 * 1e-4f64).sin()).abs() < 1e-9);
    assert_eq!(timestep_embedding(&t, 9).unwrap().dims(), [2, 9]);
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    let (m, _) = small(DType::F64);
    let mut rng = DeqRng::new(3);
    let x = rng.randn((2, 2, 8, 8), DType::F64, &Device::Cpu).unwrap();
    let t = Tensor::new(&[3f64, 700.0], &Device::Cpu).unwrap();
    let up = rng.randn((2, 2, 8, 8), DType::F64, &Device::Cpu).unwrap();
    let loss = |x: &Tensor| m.forward(x, &t).unwrap().mul(&up).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
    let xv = Var::from_tensor(&x).unwrap();
    let grads = m.forward(xv.as_tensor(), &t).unwrap().mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
    let fd = central_differences(&x, 1e-5, 13, &loss).unwrap();
    assert_gradient("x", grads.get(&xv).unwrap(), &fd, 1e-6);
    // A parameter of every kind of layer.
    for name in ["temb.dense.0.weight", "down.0.block.0.norm1.weight", "down.0.downsample.conv.weight", "down.1.block.0.nin_shortcut.weight", "down.1.attn.0.k.weight", "mid.attn_1.q.bias", "up.1.upsample.conv.weight", "up.1.block.0.temb_proj.weight", "norm_out.bias", "conv_out.weight"] {
        let vars = m.vars();
        let v = &vars.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("{name}")).1;
        let idx: Vec<usize> = (0..v.elem_count()).step_by((v.elem_count() / 5).max(1)).collect();
        let fd = var_central_differences(v, &idx, 1e-5, &|| loss(&x)).unwrap();
        assert_gradient(name, grads.get(v).unwrap(), &fd, 1e-6);
    }
}

#[test]
fn f32_forward_equals_f64() {
    let (m64, _) = small(DType::F64);
    let (m32, _) = small(DType::F32);
    let mut rng = DeqRng::new(4);
    let x = rng.randn((3, 2, 8, 8), DType::F64, &Device::Cpu).unwrap();
    let t = Tensor::new(&[0f64, 10.0, 999.0], &Device::Cpu).unwrap();
    let a = m64.forward(&x, &t).unwrap();
    let b = m32.forward(&x.to_dtype(DType::F32).unwrap(), &t.to_dtype(DType::F32).unwrap()).unwrap();
    let d = max_abs_diff(&a, &b.to_dtype(DType::F64).unwrap()).unwrap();
    assert!(d < 1e-4, "{d}");
    assert!(a.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap() > 0.05);
}

#[test]
fn dropout_acts_only_in_training_and_is_reproducible() {
    let (m, _) = small(DType::F64);
    let x = DeqRng::new(5).randn((1, 2, 8, 8), DType::F64, &Device::Cpu).unwrap();
    let t = Tensor::new(&[5f64], &Device::Cpu).unwrap();
    let a = m.forward(&x, &t).unwrap();
    let b = m.forward_with(&x, &t, Some(&mut DeqRng::new(1))).unwrap();
    let c = m.forward_with(&x, &t, Some(&mut DeqRng::new(1))).unwrap();
    assert!(max_abs_diff(&a, &b).unwrap() > 1e-4);
    assert_eq!(max_abs_diff(&b, &c).unwrap(), 0.0);
}

#[test]
fn load_refuses_other_architectures() {
    let (m, _) = small(DType::F32);
    let mut tensors: HashMap<String, Tensor> = m.vars().into_iter().map(|(k, v)| (k, v.as_tensor().affine(0.5, 0.0).unwrap())).collect();
    m.load(&tensors, "ck").unwrap();
    tensors.insert("down.5.block.0.conv1.weight".into(), Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap());
    assert!(m.load(&tensors, "ck").unwrap_err().to_string().contains("down.5.block.0.conv1.weight"));
    tensors.remove("down.5.block.0.conv1.weight");
    tensors.insert("conv_out.bias".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
    assert!(m.load(&tensors, "ck").unwrap_err().to_string().contains("conv_out.bias"));
}

//! Peak memory of an IFT training step does not grow with the number of forward iterations,
//! while backpropagation through the unrolled iterations does.
//!
//! A counting global allocator records the peak of live heap bytes (candle's CPU tensors live
//! on the heap). Everything runs in one test so that no other test allocates concurrently.

use candle_core::{DType, Tensor, Var};
use deq_core::{Deq, DeqConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Peak bytes above the level at entry while running `step`.
fn peak_of(step: impl FnOnce()) -> usize {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    step();
    PEAK.load(Ordering::Relaxed) - base
}

#[test]
fn ift_memory_is_independent_of_forward_iterations() {
    let p = deq_core::problems::linear_tanh_problem(64, 256, 0.9, 0, DType::F32).unwrap();
    let w = Var::from_tensor(&p.w).unwrap();
    let u = Var::from_tensor(&p.u).unwrap();
    let f = |z: &Tensor, x: &[Tensor]| deq_core::ops::tanh(&z.matmul(&w.as_tensor().t()?)?.add(&x[0].matmul(&u.as_tensor().t()?)?)?);
    let z0 = Tensor::zeros((64, 256), DType::F32, &candle_core::Device::Cpu).unwrap();
    let ift_step = |iters: usize| {
        // f_tol = 0: every iteration runs.
        let cfg = DeqConfig { f_max_iter: iters, f_tol: 0.0, ift: true, b_max_iter: 20, ..Default::default() };
        let deq = Deq::new(cfg).unwrap();
        peak_of(|| {
            let out = deq.forward1(f, std::slice::from_ref(&p.x), &z0).unwrap();
            assert_eq!(out.stats.nfe, iters);
            let g = out.z().sum_all().unwrap().backward().unwrap();
            assert!(g.get(w.as_tensor()).is_some());
        })
    };
    let unrolled_step = |iters: usize| {
        peak_of(|| {
            let mut z = z0.clone();
            for _ in 0..iters {
                z = f(&z, std::slice::from_ref(&p.x)).unwrap();
            }
            let g = z.sum_all().unwrap().backward().unwrap();
            assert!(g.get(w.as_tensor()).is_some());
        })
    };
    let _ = ift_step(10); // warm-up
    let (i10, i100) = (ift_step(10), ift_step(100));
    let (u10, u100) = (unrolled_step(10), unrolled_step(100));
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "peak heap: IFT f_max_iter 10 -> {:.2} MiB, 100 -> {:.2} MiB; unrolled 10 -> {:.2} MiB, 100 -> {:.2} MiB",
        mib(i10), mib(i100), mib(u10), mib(u100)
    );
    assert!((i100 as f64) < 1.1 * i10 as f64, "IFT peak grew: {i10} -> {i100}");
    assert!((u100 as f64) > 5.0 * u10 as f64, "unrolled peak should grow: {u10} -> {u100}");

    // Recomputation: what the forward pass leaves alive until backward. The tracked forward
    // keeps f's activations at the fixed point; recomputation keeps the state only.
    let deep_f = |z: &[Tensor], x: &[Tensor]| -> candle_core::Result<Vec<Tensor>> {
        let mut h = z[0].clone();
        for _ in 0..4 {
            h = deq_core::ops::tanh(&h.matmul(&w.as_tensor().t()?)?.add(&x[0])?)?;
        }
        Ok(vec![h])
    };
    let cfg = DeqConfig { f_max_iter: 20, ift: true, b_max_iter: 20, ..Default::default() };
    let deq = Deq::new(cfg).unwrap();
    let held = |recompute: bool| -> usize {
        let base = LIVE.load(Ordering::Relaxed);
        let (bytes, grads_ok) = if recompute {
            let out = deq.forward_recompute(deep_f, std::slice::from_ref(&p.x), std::slice::from_ref(&z0)).unwrap();
            let bytes = LIVE.load(Ordering::Relaxed) - base;
            let mut g = out.z[0].as_tensor().sum_all().unwrap().backward().unwrap();
            deq.backward_recompute(deep_f, std::slice::from_ref(&p.x), &out, &mut g).unwrap();
            (bytes, g.get(w.as_tensor()).is_some())
        } else {
            let out = deq.forward(deep_f, std::slice::from_ref(&p.x), std::slice::from_ref(&z0)).unwrap();
            let bytes = LIVE.load(Ordering::Relaxed) - base;
            let g = out.z().sum_all().unwrap().backward().unwrap();
            (bytes, g.get(w.as_tensor()).is_some())
        };
        assert!(grads_ok);
        bytes
    };
    let (tracked, recomputed) = (held(false), held(true));
    eprintln!("held between forward and backward: tracked {:.3} MiB, recomputed {:.3} MiB", mib(tracked), mib(recomputed));
    let state = 64 * 256 * 4;
    assert!(recomputed < 2 * state + 16 * 1024, "recomputation keeps more than the state: {recomputed}");
    assert!(tracked > 4 * state, "the tracked forward keeps f's activations: {tracked}");
}

//! Solver tests on contractive and hard problems, in f64.

use super::*;
use crate::testing::{hard_tanh_problem, linear_tanh_problem, Problem};
use candle_core::{DType, Device};

fn opts(max_iter: usize, tol: f64) -> SolverOptions {
    SolverOptions { max_iter, tol, ..Default::default() }
}

fn true_residual(p: &Problem, z: &Tensor) -> f64 {
    let fz = p.f(z).unwrap();
    (fz - z).unwrap().sqr().unwrap().sum(1).unwrap().sqrt().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn every_solver_converges_on_a_contractive_problem() -> Result<()> {
    let p = linear_tanh_problem(8, 16, 0.7, 1, DType::F64)?;
    for name in ["fixed_point_iter", "anderson", "broyden"] {
        let solver = get_solver(name)?;
        let sol = solver.solve(&mut |z| p.f(z), &p.z0()?, &opts(200, 1e-10))?;
        let r = true_residual(&p, &sol.z);
        assert!(r < 1e-9, "{name}: residual {r}");
        assert!(sol.stats.max_lowest() < 1e-10, "{name}: stats {:?}", sol.stats.abs_lowest);
        assert_eq!(sol.stats.abs_trace.len(), sol.stats.nfe, "{name}");
        assert!(sol.stats.nfe < 200, "{name} used the whole budget");
    }
    Ok(())
}

#[test]
fn anderson_and_broyden_beat_plain_iteration_on_a_hard_problem() -> Result<()> {
    // Spectral norm 0.97: plain iteration contracts slowly.
    let p = hard_tanh_problem(4, 32, 0.97, 2, DType::F64)?;
    let o = opts(400, 1e-8);
    let nfe = |name: &str| -> Result<usize> {
        let sol = get_solver(name)?.solve(&mut |z| p.f(z), &p.z0()?, &o)?;
        assert!(sol.stats.max_lowest() < 1e-8, "{name} did not converge: {:?}", sol.stats.abs_lowest);
        Ok(sol.stats.nfe)
    };
    let fp = nfe("fixed_point_iter")?;
    let an = nfe("anderson")?;
    let br = nfe("broyden")?;
    eprintln!("nfe to 1e-8: fixed point {fp}, anderson {an}, broyden {br}");
    assert!(an * 2 < fp, "anderson {an} vs fixed point {fp}");
    assert!(br * 2 < fp, "broyden {br} vs fixed point {fp}");
    Ok(())
}

#[test]
fn anderson_reaches_tight_tolerances() -> Result<()> {
    // TorchDEQ's absolute lam stalls here; the relative one does not.
    let p = hard_tanh_problem(4, 32, 0.95, 3, DType::F64)?;
    let sol = Anderson.solve(&mut |z| p.f(z), &p.z0()?, &opts(300, 1e-11))?;
    assert!(sol.stats.max_lowest() < 1e-11, "{:?}", sol.stats.abs_lowest);
    // Plain iteration needs about ln(1e-11)/ln(0.95) ~ 490 steps here.
    assert!(sol.stats.nfe < 200, "nfe {}", sol.stats.nfe);
    Ok(())
}

#[test]
fn best_iterate_is_kept_per_sample() -> Result<()> {
    // Sample 0 converges, sample 1 oscillates with growing amplitude: f(z) = -1.5 z + 1.
    let dev = Device::Cpu;
    let z0 = Tensor::new(&[[0.0f64], [0.0]], &dev)?;
    let coef = Tensor::new(&[[0.5f64], [-1.5]], &dev)?;
    let mut f = |z: &Tensor| z.broadcast_mul(&coef)? + 1.0;
    let sol = FixedPointIter.solve(&mut f, &z0, &opts(10, 1e-12))?;
    let z = sol.z.to_vec2::<f64>()?;
    // Sample 1: the first iterate (residual 1) is the best one; later ones grow.
    assert_eq!(sol.stats.nstep[1], 1);
    assert!((z[1][0] - 1.0).abs() < 1e-12, "{z:?}");
    assert_eq!(sol.stats.nstep[0], 10);
    assert!((sol.stats.abs_lowest[1] - 1.0).abs() < 1e-12);
    // return_final takes the last iterate instead.
    let o = SolverOptions { return_final: true, ..opts(10, 1e-12) };
    let fin = FixedPointIter.solve(&mut f, &z0, &o)?;
    assert_eq!(fin.stats.nstep[1], 10);
    assert!(fin.z.to_vec2::<f64>()?[1][0].abs() > 1.0);
    Ok(())
}

#[test]
fn indexing_returns_one_state_per_index_even_after_early_stop() -> Result<()> {
    let p = linear_tanh_problem(4, 8, 0.5, 4, DType::F64)?;
    for name in ["fixed_point_iter", "anderson", "broyden", "simple_fixed_point_iter"] {
        let o = SolverOptions { indexing: vec![1, 2, 5, 1000], ..opts(1000, 1e-6) };
        let sol = get_solver(name)?.solve(&mut |z| p.f(z), &p.z0()?, &o)?;
        assert_eq!(sol.trajectory.len(), 4, "{name}");
        // Step 1 of every solver is f(z0).
        let f0 = p.f(&p.z0()?)?;
        let d = (&sol.trajectory[0] - &f0)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(d < 1e-12, "{name}: step 1 is not f(z0): {d}");
        if name != "simple_fixed_point_iter" {
            let d = (&sol.trajectory[3] - &sol.z)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(d == 0.0, "{name}: unreached index must hold the final state");
        }
    }
    Ok(())
}

#[test]
fn damping_and_rel_mode() -> Result<()> {
    let p = linear_tanh_problem(3, 8, 0.8, 5, DType::F64)?;
    let o = SolverOptions { tau: 0.5, stop_mode: StopMode::Rel, ..opts(500, 1e-9) };
    for name in ["fixed_point_iter", "anderson"] {
        let sol = get_solver(name)?.solve(&mut |z| p.f(z), &p.z0()?, &o)?;
        assert!(sol.stats.rel_lowest.iter().all(|&r| r < 1e-9), "{name}");
        assert!(true_residual(&p, &sol.z) < 1e-7, "{name}");
    }
    Ok(())
}

#[test]
fn nan_from_f_is_flagged_not_a_panic() -> Result<()> {
    let dev = Device::Cpu;
    let z0 = Tensor::zeros((2, 3), DType::F64, &dev)?;
    let calls = std::cell::Cell::new(0);
    let mut f = |z: &Tensor| {
        calls.set(calls.get() + 1);
        if calls.get() >= 3 {
            (z * f64::NAN)?.affine(1.0, 0.0)
        } else {
            z.affine(0.5, 1.0)
        }
    };
    for solver in [get_solver("fixed_point_iter")?, get_solver("anderson")?, get_solver("broyden")?] {
        calls.set(0);
        let sol = solver.solve(&mut f, &z0, &opts(10, 1e-12))?;
        assert!(sol.stats.any_nonfinite(), "{}", solver.name());
        let best = sol.z.flatten_all()?.to_vec1::<f64>()?;
        assert!(best.iter().all(|v| v.is_finite()), "{}: best must stay finite", solver.name());
    }
    // If the very first evaluation is NaN and return_final is set, the result is an error.
    let mut bad = |z: &Tensor| z * f64::NAN;
    let o = SolverOptions { return_final: true, ..opts(3, 1e-6) };
    assert!(matches!(FixedPointIter.solve(&mut bad, &z0, &o), Err(crate::DeqError::NonFinite { .. })));
    Ok(())
}

#[test]
fn shape_errors_are_errors() -> Result<()> {
    let dev = Device::Cpu;
    let z0 = Tensor::zeros((2, 3), DType::F64, &dev)?;
    let mut f = |z: &Tensor| z.narrow(1, 0, 2);
    for name in solver_names() {
        let r = get_solver(&name)?.solve(&mut f, &z0, &opts(5, 1e-6));
        assert!(matches!(r, Err(crate::DeqError::Shape { .. })), "{name}");
    }
    let z1 = Tensor::zeros(3, DType::F64, &dev)?;
    assert!(FixedPointIter.solve(&mut |z| Ok(z.clone()), &z1, &opts(5, 1e-6)).is_err());
    assert!(matches!(get_solver("newton"), Err(crate::DeqError::UnknownSolver(..))));
    Ok(())
}

#[test]
fn broyden_line_search_converges() -> Result<()> {
    let p = linear_tanh_problem(4, 16, 0.9, 6, DType::F64)?;
    let o = SolverOptions { ls: true, ..opts(100, 1e-10) };
    let sol = Broyden.solve(&mut |z| p.f(z), &p.z0()?, &o)?;
    assert!(sol.stats.max_lowest() < 1e-10);
    Ok(())
}


#[test]
fn an_anderson_correction_replaces_the_proposal_before_evaluation() -> Result<()> {
    // Returning the newest f(z) instead of the mixed proposal is plain iteration, step for step.
    let p = linear_tanh_problem(4, 16, 0.7, 5, DType::F64)?;
    let o = opts(12, 1e-14);
    let plain = get_solver("fixed_point_iter")?.solve(&mut |z| p.f(z), &p.z0()?, &o)?;
    let mut evaluated = Vec::new();
    let mut f = |z: &Tensor| {
        evaluated.push(z.clone());
        p.f(z)
    };
    let corrected = Anderson.solve_corrected(&mut f, &p.z0()?, &o, &mut |_, _, fz| Ok(fz.clone()))?;
    assert_eq!(corrected.stats.nfe, plain.stats.nfe);
    for (a, b) in corrected.stats.abs_trace.iter().zip(&plain.stats.abs_trace) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-12 * y.max(1e-300), "{a:?} vs {b:?}");
        }
    }
    // The solver evaluated what the correction returned: f applied to the previous input.
    for k in 1..evaluated.len() {
        let want = p.f(&evaluated[k - 1])?;
        let d = (&evaluated[k] - want)?.abs()?.max_keepdim(1)?.max(0)?.squeeze(0)?.to_scalar::<f64>()?;
        assert!(d < 1e-12, "step {k}: {d}");
    }
    // Without the correction Anderson takes other steps.
    let free = Anderson.solve(&mut |z| p.f(z), &p.z0()?, &o)?;
    let last = |s: &SolverStats| s.abs_trace[3][0];
    assert!((last(&free.stats) - last(&plain.stats)).abs() > 1e-6 * last(&plain.stats), "{:?}", free.stats.abs_trace);
    // A correction that changes the shape is an error.
    let bad = Anderson.solve_corrected(&mut |z| p.f(z), &p.z0()?, &o, &mut |q, _, _| q.narrow(1, 0, 3));
    assert!(bad.is_err());
    Ok(())
}

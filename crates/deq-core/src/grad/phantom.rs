//! Phantom gradients: `k` damped unrolled steps `z <- tau f(z) + (1 - tau) z` from the detached
//! fixed point, differentiated by ordinary backpropagation (Geng et al., 2021).

/// Runs the `k` tracked steps and returns the states to supervise, following TorchDEQ's
/// `sup_gap` / `sup_loc` rules with one fix: the final state is always returned last (TorchDEQ
/// drops it when `k` is not a multiple of `sup_gap`).
pub fn phantom_steps(
    f: &mut dyn FnMut(&candle_core::Tensor) -> candle_core::Result<candle_core::Tensor>,
    z_star: &candle_core::Tensor,
    k: usize,
    tau: f64,
    sup_gap: i64,
    sup_loc: &[usize],
) -> candle_core::Result<Vec<candle_core::Tensor>> {
    let mut z = z_star.detach();
    let mut out = Vec::new();
    for i in 1..=k {
        let fz = f(&z)?;
        z = crate::solver::damp(&fz, &z, tau)?;
        let keep = if sup_gap > 0 { i as i64 % sup_gap == 0 } else { sup_loc.contains(&i) };
        if keep && i < k {
            out.push(z.clone());
        }
    }
    out.push(z);
    Ok(out)
}

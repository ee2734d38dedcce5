//! Which inputs of a custom op need a gradient in the backward pass that is running now.
//!
//! candle's `CustomOp2::bwd` returns the gradients of both inputs and cannot be told that one
//! of them is not wanted. The pruned vector-Jacobian products of the adjoint solve only need
//! the gradient with respect to the state: for a convolution that is one product of three, and
//! the weight gradient (a reduction over the whole batch) is the most expensive one.
//! The pruned plan (`VjpPlan`, cargo feature `pruned-vjp`) therefore marks, around each custom op's `bwd` call, which of its
//! inputs lie on a path to the requested inputs; custom ops read the mark with
//! [`input_wanted`] and return `None` for the others. Outside such a call (candle's own
//! `backward`, or a plan that needs every input) every input is wanted.

use std::cell::Cell;

thread_local! {
    static WANTED: Cell<u8> = const { Cell::new(u8::MAX) };
}

/// Whether the gradient of input `i` (0, 1 or 2) of the custom op whose `bwd` runs on this
/// thread is needed. `true` unless a pruned backward pass said otherwise.
pub fn input_wanted(i: usize) -> bool {
    i >= 8 || WANTED.with(|w| w.get() & (1 << i) != 0)
}

/// Runs `f` (a custom op's `bwd`) with only the inputs flagged in `wanted` marked as needed;
/// the previous mark comes back afterwards, also when `f` panics.
pub fn with_wanted<R>(wanted: &[bool], f: impl FnOnce() -> R) -> R {
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            WANTED.with(|w| w.set(self.0));
        }
    }
    let mask = wanted.iter().enumerate().fold(0u8, |m, (i, &on)| if on && i < 8 { m | (1 << i) } else { m });
    let _restore = Restore(WANTED.with(|w| w.replace(mask)));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_nest_and_come_back() {
        assert!(input_wanted(0) && input_wanted(1) && input_wanted(2));
        with_wanted(&[true, false], || {
            assert!(input_wanted(0));
            assert!(!input_wanted(1));
            with_wanted(&[false, true, true], || {
                assert!(!input_wanted(0) && input_wanted(1) && input_wanted(2));
            });
            assert!(input_wanted(0) && !input_wanted(1));
        });
        assert!(input_wanted(1));
        let r = std::panic::catch_unwind(|| with_wanted(&[false, false], || panic!("inside")));
        assert!(r.is_err());
        assert!(input_wanted(0) && input_wanted(1));
    }
}

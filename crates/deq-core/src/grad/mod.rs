//! Gradients of the fixed point: implicit differentiation, phantom gradients and amortised
//! implicit gradients with a carried adjoint.

pub mod carried;
pub mod implicit;
pub mod phantom;
#[cfg(feature = "pruned-vjp")]
pub mod pruned;
pub mod vjp;
pub mod wanted;

pub use carried::AdjointCarry;
pub use implicit::{implicit_backward_op, BackwardStats};
#[cfg(feature = "pruned-vjp")]
pub use pruned::{UnsupportedOp, VjpPlan};
pub use vjp::{backward, full_vjp, vjp, Vjp, PRUNED};
pub use phantom::phantom_steps;
pub use wanted::{input_wanted, with_wanted};

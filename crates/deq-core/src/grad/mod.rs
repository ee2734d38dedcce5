//! Gradients of the fixed point: implicit differentiation, phantom gradients and amortised
//! implicit gradients with a carried adjoint.

pub mod carried;
pub mod implicit;
pub mod phantom;
pub mod vjp;

pub use carried::AdjointCarry;
pub use implicit::{implicit_backward_op, BackwardStats};
pub use vjp::{backward, full_vjp, vjp, Vjp, VjpPlan};
pub use phantom::phantom_steps;

//! Gradients of the fixed point: implicit differentiation and phantom gradients.

pub mod implicit;
pub mod phantom;
pub mod vjp;

pub use implicit::{implicit_backward_op, BackwardStats};
pub use vjp::{backward, full_vjp, vjp, Vjp, VjpPlan};
pub use phantom::phantom_steps;

//! Gradients of the fixed point: implicit differentiation and phantom gradients.

pub mod implicit;
pub mod phantom;

pub use implicit::{implicit_backward_op, vjp, BackwardStats};
pub use phantom::phantom_steps;

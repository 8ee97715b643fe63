//! Span assembly: pairing the kernel's sample batches with the span they
//! belong to, and the `Span` record every output consumes.
pub mod assemble;
pub mod blame;
pub mod cause;
pub mod culprit;
pub mod model;

pub use assemble::{Assembler, RawSpan, Sample};
pub use model::{PyStack, Span, StackCount, StackKind, blame_of, weigh_on_cpu};

//! Events from the kernel, decoded from ring-buffer bytes into owned values.
pub mod decode;

pub use decode::{DecodeError, Event, SampleRec, StackEnd, TaggedSample, decode};

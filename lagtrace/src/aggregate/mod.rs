//! Aggregation: the lag distribution of every loop thread, the per-thread
//! summary, and stacks folded over many spans.
pub mod fold;
pub mod hist;
pub mod summary;

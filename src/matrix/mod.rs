//! Building: the plan (modules x targets x kernels), the scheduler that runs cells in
//! parallel on one shared make jobserver, and the cell runner that drives kbuild.

pub mod cell;
pub mod fingerprint;
pub mod namespace;
pub mod plan;
pub mod report;
pub mod scheduler;
pub mod shard;

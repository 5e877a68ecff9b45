//! The build matrix: modules x targets x kernels. The plan (one cell each), the scheduler
//! that runs cells in parallel in dependency order, the cell runner that drives kbuild in
//! each cell's private namespace, the one make jobserver they share, the report, and the
//! pipeline: the one front door the commands call.

pub mod cell;
pub mod collect;
pub mod fingerprint;
pub mod inputs;
pub mod jobserver;
pub mod options;
pub mod pipeline;
pub mod plan;
pub mod provenance;
pub mod report;
pub mod reproduce;
pub mod scheduler;
pub mod shard;

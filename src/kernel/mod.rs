//! Kernel build trees: what a KDIR is (release, .config, vermagic, Module.symvers, host tools)
//! and how kmx provisions trees from Debian's linux-headers packages.

// crate::Error is 128+ bytes; whether to box it is a crate-wide decision (error.rs), not this
// module's, and these errors are rare and cold.
#![allow(clippy::result_large_err)]

pub mod kconfig;
pub mod symvers;
pub mod tree;
pub mod vermagic;

pub use kconfig::KConfig;
pub use symvers::{SymbolExport, Symvers};
pub use tree::{Compression, HostTools, KernelTree, SigConfig};
pub use vermagic::Vermagic;

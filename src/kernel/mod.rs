//! Kernel build trees: what a KDIR is (release, .config, vermagic, Module.symvers, host tools)
//! and how kmx provisions trees from Debian's linux-headers packages.

pub mod apt;
pub mod fetch;
pub mod installed;
pub mod kconfig;
pub mod registry;
pub mod select;
pub mod symvers;
pub mod toolroot;
pub mod tree;
pub mod vermagic;

pub use kconfig::KConfig;
pub use symvers::{SymbolExport, Symvers};
pub use tree::{Compression, HostTools, KernelTree, SigConfig};
pub use vermagic::Vermagic;

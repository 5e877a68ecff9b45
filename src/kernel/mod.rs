//! Kernel build trees: what a KDIR is (release, .config, vermagic, Module.symvers, host tools)
//! and how kmx provisions trees from Debian's linux-headers packages.

pub mod fetch;
pub mod registry;

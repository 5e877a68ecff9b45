//! kmx: build out-of-tree Linux kernel modules for many targets and kernels at once, and
//! prove every produced `.ko` will load on the kernel it was built for.
//!
//! Where things live:
//! - [`cli`]: the command line (clap derive, no I/O).
//! - [`config`]: the configuration model: target and toolchain profiles, module manifests
//!   (`dkms.conf`, `kmx.toml`).
//! - [`kernel`]: kernel build trees: inspection, vermagic, provisioning from Debian.
//! - [`matrix`]: the build matrix (modules x targets x kernels): planning, the parallel
//!   scheduler, the cell runner that drives kbuild, and the pipeline that ties them.
//! - [`verify`]: the module reader (ELF, `.modinfo`, `__versions`) and the load checks.
//! - [`sandbox`]: the private mount (and network, PID) namespaces dkms.conf evaluation and
//!   build steps run in: DKMS's directories as DKMS has them, the host protected.
//! - [`smoke`]: boot-and-load proof: real kernels under QEMU load the modules.
//! - [`state`]: kmx's home and the on-disk stores (the lifecycle store, tarballs, the
//!   build cache).
//! - [`lifecycle`]: DKMS's lifecycle over the store: preparing registered modules for
//!   installation (building what is missing or stale), status lines.
//! - [`install`]: installing built modules into a root and uninstalling them.
//! - [`modfile`]: what a module file carries that several layers name (its compression,
//!   its vermagic), on the ground floor.
//! - [`digest`]: hashing on the ground floor (hex, file hashes, fingerprints).
//! - [`error`]: the one error type and the exit codes.

// Errors carry a path, line, hint and causes (over 128 bytes); they are rare and cold, so
// boxing them everywhere would buy nothing measurable.
#![allow(clippy::result_large_err)]

pub mod cli;
pub mod commands;
pub mod config;
pub mod digest;
pub mod error;
pub mod install;
pub mod kernel;
pub mod lifecycle;
pub mod matrix;
#[cfg(test)]
mod messages;
pub mod modfile;
pub mod process;
pub mod sandbox;
pub mod smoke;
pub mod state;
pub mod verify;

pub use error::{Error, Result};

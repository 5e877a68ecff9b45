//! The configuration model: target profiles (`targets/*.toml`), toolchain profiles
//! (`toolchains/*.toml`) and module manifests. Loading and layering of configuration
//! directories lives here and nowhere else.

pub mod arch;
pub mod dkms;
pub mod kmxtoml;
pub mod manifest;

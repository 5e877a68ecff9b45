//! The configuration model: target profiles (`targets/*.toml`), toolchain profiles
//! (`toolchains/*.toml`) and module manifests (`dkms.conf`, `kmx.toml`, both giving one
//! [`manifest::ModuleSpec`] per cell). Loading and layering of configuration directories
//! lives in [`load`] and nowhere else.

pub mod arch;
pub mod dkms;
pub mod kmxtoml;
pub mod load;
pub mod manifest;
pub mod probe;
pub mod profile;

pub use load::{Profiles, Sources};
pub use profile::{Target, Toolchain};

//! The configuration model: target profiles (`targets/*.toml`), toolchain profiles
//! (`toolchains/*.toml`) and module manifests. Loading and layering of configuration
//! directories lives in [`load`] and nowhere else.

pub mod arch;
pub mod load;
pub mod probe;
pub mod profile;

pub use load::{Profiles, Sources};
pub use profile::{Target, Toolchain};

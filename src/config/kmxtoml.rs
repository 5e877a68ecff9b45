//! The native `kmx.toml` manifest (not implemented yet).

// crate::Error is 128+ bytes; boxing it is error.rs's call, not this module's.
#![allow(clippy::result_large_err)]

use std::path::Path;

use super::dkms::CellVars;
use super::manifest::ModuleSpec;
use crate::{Error, Result};

/// Load `kmx.toml` for one cell.
pub fn load(path: &Path, _vars: &CellVars) -> Result<ModuleSpec> {
    Err(Error::config(path, "kmx.toml is not supported yet"))
}

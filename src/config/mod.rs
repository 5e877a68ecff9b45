//! The configuration model: target profiles (`targets/*.toml`), toolchain profiles
//! (`toolchains/*.toml`) and module manifests (`dkms.conf`, `kmx.toml`, both giving one
//! [`manifest::ModuleSpec`] per cell). Loading and layering of configuration directories
//! lives in [`load`] and nowhere else. [`load_spec`] reads a module source's manifest,
//! whichever format it has.

pub mod arch;
pub mod ccache;
pub mod dkms;
pub mod kmxtoml;
pub mod load;
pub mod manifest;
pub mod memo;
pub mod probe;
pub mod profile;

pub use load::{Profiles, Sources};
pub use profile::{Target, Toolchain};

use std::path::Path;

use crate::{Error, Result};
use manifest::{CellVars, ModuleSpec};

/// Load the manifest of `source_dir` for one cell: `kmx.toml` wins over `dkms.conf`.
pub fn load_spec(source_dir: &Path, vars: &CellVars) -> Result<ModuleSpec> {
    load_spec_memo(source_dir, vars, None)
}

/// [`load_spec`], with a dkms.conf's evaluation kept and found again under `context`
/// ([`memo`]) when one is given.
pub fn load_spec_memo(
    source_dir: &Path,
    vars: &CellVars,
    context: Option<&str>,
) -> Result<ModuleSpec> {
    let toml = source_dir.join("kmx.toml");
    if toml.is_file() {
        // kmx.toml names its module; a name or version the caller gives wins, as in DKMS.
        let mut spec = kmxtoml::load(&toml, vars)?;
        if let Some(name) = &vars.given.name {
            spec.name = name.clone();
        }
        if let Some(version) = &vars.given.version {
            spec.version = version.clone();
        }
        return Ok(spec);
    }
    let conf = source_dir.join("dkms.conf");
    if conf.is_file() {
        return match context {
            Some(context) => dkms::evaluate_memo(&conf, vars, context),
            None => dkms::evaluate(&conf, vars),
        };
    }
    Err(
        Error::config(source_dir, "no dkms.conf or kmx.toml in this directory")
            .hint("add a kmx.toml (kmx's own format) or a dkms.conf (DKMS's format) to it"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_spec_names_the_directory_when_nothing_is_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vars = CellVars::for_tests(dir.path());
        let err = load_spec(dir.path(), &vars).expect_err("must fail");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: no dkms.conf or kmx.toml in this directory",
                dir.path().display()
            )
        );
    }
}

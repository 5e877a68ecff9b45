//! The check every freshly built module passes before its cell counts as built: the ELF
//! identity of its target and a vermagic exactly equal to its kernel tree's. It uses the one
//! module reader ([`super::module`]); the full load checks (`kmx verify`) build on it.

use std::path::Path;

use crate::config::arch::ElfIdentity;
use crate::error::{Error, Result};
use crate::kernel::vermagic::{self, Vermagic};
use crate::verify::module::Module;

/// Fail unless `path` is a module for `identity` whose vermagic is exactly `expected`.
pub fn check(path: &Path, identity: &ElfIdentity, expected: &Vermagic) -> Result<Module> {
    let module = Module::read(path).map_err(|e| e.into_error(path))?;
    if module.identity != *identity {
        return Err(Error::failed(format!(
            "is {}, but the target's modules must be {identity}",
            module.identity
        ))
        .at(path)
        .hint("the toolchain profile's triple does not match the kernel tree's architecture"));
    }
    let found = module.vermagic().unwrap_or("");
    if found != expected.to_string() {
        let why = Vermagic::parse(found)
            .map(|m| vermagic::explain_difference(&m, expected).join("; "))
            .unwrap_or_else(|| "the module has no vermagic".to_string());
        return Err(Error::failed(format!(
            "vermagic \"{found}\" differs from the kernel tree's \"{expected}\": {why}"
        ))
        .at(path)
        .hint("the module was built against another configuration; check that the make command uses $kernel_source_dir"));
    }
    Ok(module)
}

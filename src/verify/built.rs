//! The check every freshly built module passes before its cell counts as built: the load
//! checks of [`super::checks`] (ELF identity, vermagic, modversions, unresolved symbols)
//! against the cell's kernel tree, with the vermagic required exactly (the module was built
//! against that very tree) and the cell's own and its dependencies' exports (their build
//! `Module.symvers`) resolving symbols the kernel does not export. Signatures are not
//! checked: builds are unsigned, `kmx install` signs. This is only the entry point the build
//! calls; the rules live in `checks`.

use std::path::Path;

use crate::config::arch::ElfIdentity;
use crate::error::{Error, Result};
use crate::kernel::tree::KernelTree;
use crate::verify::checks::{
    self, CheckKind, Kernel, Keys, KeysUnknown, Options, Others, Status, TreeSymbols,
};
use crate::verify::module::Module;

/// Fail, with the first failing check's reason, unless the module at `path` would load on
/// `tree`. `symbols` is the tree's `Module.symvers` (load it once per tree with
/// [`TreeSymbols::load`]); `others` holds the exports of the cell's own build and of its
/// built dependencies (their `Module.symvers`, loaded once per cell).
pub fn check(
    path: &Path,
    identity: &ElfIdentity,
    tree: &KernelTree,
    symbols: Option<&TreeSymbols>,
    others: &Others,
) -> Result<Module> {
    let module = Module::read(path).map_err(|e| e.into_error(path))?;
    let kernel = Kernel {
        tree,
        symbols,
        // Builds are not signed.
        keys: Keys::Unknown(&KeysUnknown::NotAsked),
    };
    let opts = Options {
        strict: true,
        sig_enforce: false,
    };
    let results = [
        checks::identity(&module, identity, Some(kernel)),
        checks::vermagic(&module, kernel, opts),
        checks::modversions(&module, kernel, others),
        checks::symbols(&module, kernel, others),
    ];
    if let Some(failed) = results.iter().find(|c| c.status == Status::Fail) {
        let hint = match failed.check {
            CheckKind::Identity => {
                "the toolchain profile's triple does not match the kernel tree's architecture"
            }
            CheckKind::Vermagic => {
                "the module was built against another configuration; check that the make command uses $kernel_source_dir"
            }
            CheckKind::Modversions => {
                "the module was built against headers other than this tree's; check that the make command uses $kernel_source_dir"
            }
            _ => {
                "export the symbol from a module this one depends on (BUILD_DEPENDS / kmx.toml `depends`), or stop using it"
            }
        };
        return Err(
            Error::failed(format!("{}: {}", failed.check, failed.summary))
                .at(path)
                .hint(hint),
        );
    }
    Ok(module)
}

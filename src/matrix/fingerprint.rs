//! Fingerprints: one sha256 over everything that decides a cell's output, so an unchanged
//! cell is never built twice. Contents, never mtimes.
//!
//! What goes in: the module source tree (every file's relative path, mode and bytes; symlink
//! targets), the manifest evaluated for the cell, the kernel tree's identity (release,
//! `.config`, `Module.symvers`, the Makefile and `.kernelvariables`, the host tools
//! `fixdep`/`modpost`), the compiler (path and `--version` line), the make command line and
//! the variables kmx passes, the fingerprints of the cells it depends on, and kmx's version.
//! What stays out: the compiler launcher (ccache and distcc do not change what is built),
//! timestamps, and the output directory.

use crate::digest::Fingerprint;
use crate::error::{Error, Result};
use crate::kernel::tree::KernelTree;

/// The identity of a kernel tree: what decides the modules built against it.
pub fn kernel_tree(tree: &KernelTree) -> Result<String> {
    let mut fp = Fingerprint::new();
    fp.field("release", tree.release.as_bytes());
    for rel in [
        ".config",
        "Module.symvers",
        "Makefile",
        ".kernelvariables",
        "scripts/basic/fixdep",
        "scripts/mod/modpost",
    ] {
        let path = tree.kdir.join(rel);
        match std::fs::read(&path) {
            Ok(bytes) => fp.field(rel, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => fp.field(rel, b"(absent)"),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
    }
    Ok(fp.finish())
}

//! Verification: the one module reader (ELF header, `.modinfo`, `__versions`, signature) and
//! the checks that say whether a module will load on a kernel.

pub mod built;
pub mod certs;
pub mod checks;
pub mod compat;
pub mod decompress;
pub mod engine;
pub mod memo;
pub mod module;
pub mod pkcs7;
pub mod read;
pub mod signing;

pub use checks::{Check, CheckKind, Status};
pub use decompress::Compression;
pub use module::{Module, ReadError, Signature, SymbolVersion, VersionsFormat};

use std::path::{Path, PathBuf};

/// The names a module file has: `.ko`, or compressed as `modules_install` compresses it.
pub const MODULE_SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

/// Whether a file name is a module's ([`MODULE_SUFFIXES`]).
pub fn is_module_name(name: &str) -> bool {
    MODULE_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The module files under `path` (itself when it is not a directory), sorted; symbolic
/// links are not followed.
pub fn module_files(path: &Path) -> crate::Result<Vec<PathBuf>> {
    use crate::Error;
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("read directory", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
            let p = entry.path();
            let ft = entry.file_type().map_err(|e| Error::io("read", &p, e))?;
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() && is_module_name(&entry.file_name().to_string_lossy()) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

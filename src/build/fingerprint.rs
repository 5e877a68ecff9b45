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

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::kernel::tree::KernelTree;

/// A labelled hasher: each field is length-prefixed, so fields cannot run into each other.
pub struct Fingerprint(Sha256);

impl Default for Fingerprint {
    fn default() -> Self {
        Self::new()
    }
}

impl Fingerprint {
    pub fn new() -> Fingerprint {
        let mut h = Sha256::new();
        h.update(b"kmx-cell-v1\0");
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        Fingerprint(h)
    }
    pub fn field(&mut self, name: &str, bytes: &[u8]) -> &mut Self {
        self.0.update((name.len() as u64).to_le_bytes());
        self.0.update(name.as_bytes());
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }
    pub fn finish(self) -> String {
        crate::build::cell::hex(&self.0.finalize())
    }
}

/// The contents of a source tree (VCS metadata aside).
pub fn source_tree(dir: &Path) -> Result<String> {
    let mut fp = Fingerprint::new();
    hash_dir(dir, dir, &mut fp)?;
    Ok(fp.finish())
}

fn hash_dir(root: &Path, dir: &Path, fp: &mut Fingerprint) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io("read directory", dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| !matches!(e.file_name().to_str(), Some(".git" | ".hg" | ".svn")))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
        use std::os::unix::fs::PermissionsExt;
        if meta.is_dir() {
            fp.field("dir", rel.as_bytes());
            hash_dir(root, &path, fp)?;
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| Error::io("read link", &path, e))?;
            fp.field("link", rel.as_bytes())
                .field("to", target.to_string_lossy().as_bytes());
        } else {
            let bytes = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                b"x"
            } else {
                b"-"
            };
            fp.field("file", rel.as_bytes())
                .field("mode", mode)
                .field("data", &bytes);
        }
    }
    Ok(())
}

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

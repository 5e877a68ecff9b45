//! Fingerprints: one sha256 over everything that decides a cell's output, so an unchanged
//! cell is never built twice. Contents, never mtimes (a kernel tree's identity, hashed from
//! its files' bytes, is kept while the files are the same files on disk: see [`kernel_tree`]).
//!
//! What goes in: the module source tree (every file's relative path, mode and bytes; symlink
//! targets), the manifest evaluated for the cell, the kernel tree's identity (release,
//! `.config`, `Module.symvers`, the Makefile and `.kernelvariables`, the host tools
//! `fixdep`/`modpost`), the compiler (path and `--version` line), the make command line and
//! the variables kmx passes, the fingerprints of the cells it depends on, and kmx's version.
//! What stays out: the compiler launcher (ccache and distcc do not change what is built),
//! timestamps, and the output directory.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::digest::{Fingerprint, file_identity};
use crate::error::{Error, Result};
use crate::kernel::tree::KernelTree;

/// The files of a kernel tree that decide the modules built against it.
const TREE_FILES: [&str; 6] = [
    ".config",
    "Module.symvers",
    "Makefile",
    ".kernelvariables",
    "scripts/basic/fixdep",
    "scripts/mod/modpost",
];

static DIR: OnceLock<PathBuf> = OnceLock::new();

/// Keep tree identities under `dir` for this process (`KMX_HOME/cache/trees`); without it,
/// every call hashes the tree's files.
pub fn use_dir(dir: PathBuf) {
    let _ = DIR.set(dir);
}

/// How long a file must be left alone before its identity is kept: a file's times move on
/// the kernel's coarse clock, so a write in the same tick as the hashing can leave its size
/// and times as they were (git's "racy" index entries).
const SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

/// The identity of a kernel tree: what decides the modules built against it (the release and
/// the bytes of [`TREE_FILES`]). Hashing them is most of a no-op run's work (a few MB a
/// tree), so the result is kept ([`use_dir`]) under what the files are on disk (device,
/// inode, size, modification and change times, read before their bytes: a write or a
/// replacement changes them, and no one sets a change time back) and this kmx binary, and is
/// only kept when every file was last changed [`SETTLED`] before the hashing.
pub fn kernel_tree(tree: &KernelTree) -> Result<String> {
    let now = std::time::SystemTime::now();
    kernel_tree_kept(tree, DIR.get().map(PathBuf::as_path), now - SETTLED)
}

/// [`kernel_tree`], its result kept in `dir` where given, when every file was last changed
/// before `settled`.
fn kernel_tree_kept(
    tree: &KernelTree,
    dir: Option<&Path>,
    settled: std::time::SystemTime,
) -> Result<String> {
    let paths = TREE_FILES.map(|rel| tree.kdir.join(rel));
    let kept = dir.map(|dir| {
        let mut name = Fingerprint::new();
        name.field("kdir", tree.kdir.as_os_str().as_encoded_bytes());
        dir.join(name.finish())
    });
    let mut key = Fingerprint::new();
    key.field("memo", b"kernel-tree-identity-v1")
        .field("kmx", file_identity(Path::new("/proc/self/exe")).as_bytes())
        .field("release", tree.release.as_bytes());
    for p in &paths {
        key.field("file", file_identity(p).as_bytes());
    }
    let key = key.finish();
    if let Some(file) = &kept
        && let Ok(text) = std::fs::read_to_string(file)
        && let Some((k, id)) = text.trim_end().split_once(' ')
        && k == key
    {
        return Ok(id.to_string());
    }
    let mut fp = Fingerprint::new();
    fp.field("release", tree.release.as_bytes());
    let mut keep = true;
    for (rel, path) in TREE_FILES.iter().zip(&paths) {
        match std::fs::read(path) {
            Ok(bytes) => fp.field(rel, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => fp.field(rel, b"(absent)"),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        keep &= changed_before(path, settled);
    }
    let id = fp.finish();
    if let Some(file) = kept.filter(|_| keep) {
        crate::digest::keep_cache_file(&file, format!("{key} {id}\n").as_bytes());
    }
    Ok(id)
}

/// Whether `path` (or its absence) was last changed before `when`.
fn changed_before(path: &Path, when: std::time::SystemTime) -> bool {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => {
            let ctime = std::time::UNIX_EPOCH
                + std::time::Duration::new(m.ctime().max(0) as u64, m.ctime_nsec() as u32);
            ctime < when
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of the amd64 fixture tree, with a Module.symvers.
    fn tree() -> (tempfile::TempDir, KernelTree) {
        let tmp = tempfile::tempdir().unwrap();
        let kdir = tmp.path().join("amd64");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trees/amd64");
        crate::matrix::cell::copy_tree(&fixture, &kdir).unwrap();
        std::fs::write(
            kdir.join("Module.symvers"),
            "0x1\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n",
        )
        .unwrap();
        let tree = KernelTree::inspect(&kdir).unwrap();
        (tmp, tree)
    }

    fn far_future() -> std::time::SystemTime {
        std::time::SystemTime::now() + std::time::Duration::from_secs(3600)
    }

    #[test]
    fn a_kept_identity_is_read_back_until_a_file_changes() {
        let (tmp, tree) = tree();
        let dir = tmp.path().join("kept");
        let hashed = kernel_tree_kept(&tree, None, far_future()).unwrap();
        assert_eq!(
            kernel_tree_kept(&tree, Some(&dir), far_future()).unwrap(),
            hashed
        );
        // The kept entry is what a second run reads: forged, it is believed...
        let entry = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let text = std::fs::read_to_string(&entry).unwrap();
        let (key, _) = text.split_once(' ').unwrap();
        std::fs::write(&entry, format!("{key} forged\n")).unwrap();
        assert_eq!(
            kernel_tree_kept(&tree, Some(&dir), far_future()).unwrap(),
            "forged"
        );
        // ...until a file of the tree changes (written in place: the same inode).
        let symvers = tree.kdir.join("Module.symvers");
        let mut bytes = std::fs::read(&symvers).unwrap();
        bytes.extend_from_slice(b"0x2\tvprintk\tvmlinux\tEXPORT_SYMBOL\t\n");
        std::fs::write(&symvers, bytes).unwrap();
        let now = kernel_tree_kept(&tree, Some(&dir), far_future()).unwrap();
        assert_ne!(now, "forged");
        assert_ne!(now, hashed);
        assert_eq!(now, kernel_tree_kept(&tree, None, far_future()).unwrap());
    }

    #[test]
    fn an_identity_of_files_changed_just_now_is_not_kept() {
        let (tmp, tree) = tree();
        let dir = tmp.path().join("kept");
        let settled = std::time::SystemTime::now() - SETTLED;
        kernel_tree_kept(&tree, Some(&dir), settled).unwrap();
        assert!(!dir.exists(), "kept an identity of files written just now");
    }
}

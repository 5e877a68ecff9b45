//! Digests on the ground floor: hex encoding, file hashes, the labelled hasher behind every
//! fingerprint, and the content hash of a source tree. Everything above (the build matrix,
//! the cache, the lifecycle store, install) hashes through here, so none of them imports
//! another for it.

use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The sha256 of some bytes, in hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The sha256 of a file's contents, in hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    Ok(sha256(&bytes))
}

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
        hex(&self.0.finalize())
    }
}

/// What a FIFO, socket or device is called in messages; `None` for files, directories and
/// links.
pub fn special_kind(ft: &std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        Some("a named pipe (FIFO)")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_block_device() || ft.is_char_device() {
        Some("a device file")
    } else {
        None
    }
}

/// Refuse what a source tree must not hold: FIFOs, sockets and devices. Opening a FIFO
/// blocks until someone writes to it, so a walk that opened one would hang.
pub fn refuse_special(path: &Path, ft: &std::fs::FileType) -> Result<()> {
    let Some(what) = special_kind(ft) else {
        return Ok(());
    };
    Err(Error::config(path, format!("is {what}, not a file"))
        .hint("a module source may hold only files, directories and symbolic links; remove it"))
}

/// The first bytes of a cache directory tag (<https://bford.info/cachedir/>): a directory
/// holding a `CACHEDIR.TAG` that starts with them is a cache, not a source, for tar's
/// `--exclude-caches`, cargo (which tags `target/`) and kmx.
pub const CACHEDIR_SIGNATURE: &str = "Signature: 8a477f597d28d172789f06886806bc55";

/// Tag `dir` (kmx's output directory) as a cache directory, so that a build of the source
/// it lies in (`kmx build .` with the default `./kmx-out`) neither copies nor hashes it.
pub fn tag_output(dir: &Path) -> Result<()> {
    let tag = dir.join("CACHEDIR.TAG");
    if is_cache_dir(dir) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let text = format!(
        "{CACHEDIR_SIGNATURE}\n# This file is a cache directory tag created by kmx: the \
         directory holds kmx build output.\n# For information about cache directory tags, \
         see https://bford.info/cachedir/\n"
    );
    let tmp = dir.join(".CACHEDIR.TAG.kmx-tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, &tag).map_err(|e| Error::io("rename", &tag, e))
}

/// Whether `dir` holds a valid cache directory tag.
pub fn is_cache_dir(dir: &Path) -> bool {
    use std::io::Read;
    let Ok(f) = std::fs::File::open(dir.join("CACHEDIR.TAG")) else {
        return false;
    };
    let mut head = Vec::with_capacity(CACHEDIR_SIGNATURE.len());
    let _ = f
        .take(CACHEDIR_SIGNATURE.len() as u64)
        .read_to_end(&mut head);
    head == CACHEDIR_SIGNATURE.as_bytes()
}

/// Whether a walk of a source tree (its copy and its hash) leaves this entry out: VCS
/// metadata, and cache directories (kmx's own output, tagged by [`tag_output`]).
pub fn left_out_of_source(entry: &std::fs::DirEntry) -> bool {
    if matches!(entry.file_name().to_str(), Some(".git" | ".hg" | ".svn")) {
        return true;
    }
    entry.file_type().is_ok_and(|t| t.is_dir()) && is_cache_dir(&entry.path())
}

/// The contents of a source tree (VCS metadata and cache directories aside).
pub fn source_tree(dir: &Path) -> Result<String> {
    let mut fp = Fingerprint::new();
    hash_dir(dir, dir, &mut fp)?;
    Ok(fp.finish())
}

fn hash_dir(root: &Path, dir: &Path, fp: &mut Fingerprint) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io("read directory", dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| !left_out_of_source(e))
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
            refuse_special(&path, &meta.file_type())?;
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

/// A file's identity without reading it: device, inode, size, modification and change times
/// (`absent` when it cannot be read). Replacing or writing the file changes it; no one sets a
/// change time back.
pub fn file_identity(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "{}:{}:{}:{}.{}:{}.{}",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        ),
        Err(_) => "absent".into(),
    }
}

/// Keep a cache file: written to a temporary file beside it and renamed over it, so a reader
/// sees the old content or the new, never part of one. Best effort: a cache that cannot be
/// kept is only work done again. (For the modules below `state`; the store's records use
/// `state::home::write_atomic`, which also syncs and names its temporaries for the sweep.)
pub fn keep_cache_file(path: &Path, bytes: &[u8]) {
    let keep = || -> std::io::Result<()> {
        use std::io::Write as _;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.persist(path).map(|_| ()).map_err(|e| e.error)
    };
    let _ = keep();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_cannot_run_into_each_other() {
        let mut a = Fingerprint::new();
        a.field("ab", b"c");
        let mut b = Fingerprint::new();
        b.field("a", b"bc");
        assert_ne!(a.finish(), b.finish());
    }

    #[test]
    fn a_source_trees_hash_follows_contents_and_mode_not_mtime() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.c"), "int a;").unwrap();
        let first = source_tree(dir.path()).unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(dir.path().join("a.c"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(
            source_tree(dir.path()).unwrap(),
            first,
            "mtime must not count"
        );
        std::fs::set_permissions(
            dir.path().join("a.c"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert_ne!(source_tree(dir.path()).unwrap(), first, "the x bit counts");
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), "x").unwrap();
        let with_git = source_tree(dir.path()).unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), "y").unwrap();
        assert_eq!(
            source_tree(dir.path()).unwrap(),
            with_git,
            "VCS metadata stays out"
        );
        assert_eq!(hex(&[0, 0xab]), "00ab");
    }
}

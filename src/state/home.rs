//! kmx's home: the directory that holds fetched kernel trees, the apt cache used to fetch
//! them, build outputs and state. `KMX_HOME` overrides the default
//! (`$XDG_DATA_HOME/kmx`, i.e. `~/.local/share/kmx`).
//!
//! Also the one helper for atomic file writes: every state file kmx writes goes through
//! [`write_atomic`] (temporary file in the same directory, fsync, rename).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Home {
    pub root: PathBuf,
}

impl Home {
    /// `explicit` (from `--home` / `KMX_HOME`), else `/var/lib/kmx` for root (the system's
    /// modules are root's business, as DKMS's /var/lib/dkms), else the XDG data directory.
    pub fn resolve(explicit: Option<PathBuf>) -> Result<Home> {
        let root = match explicit {
            Some(p) => p,
            None if is_root() => PathBuf::from("/var/lib/kmx"),
            None => directories::BaseDirs::new()
                .map(|b| b.data_dir().join("kmx"))
                .ok_or_else(|| {
                    Error::env("cannot find a home directory for kmx's data")
                        .hint("set KMX_HOME to a writable directory")
                })?,
        };
        Ok(Home { root })
    }

    /// Fetched kernel trees, one sysroot per Debian ABI.
    pub fn trees(&self) -> PathBuf {
        self.root.join("trees")
    }
    /// The list of registered trees.
    pub fn registry(&self) -> PathBuf {
        self.root.join("trees").join("registry.json")
    }
    /// kmx's private apt state (lists, downloaded .deb files).
    pub fn apt(&self) -> PathBuf {
        self.root.join("apt")
    }
    /// How long each cell took when last built ([`crate::state::durations`]).
    pub fn durations(&self) -> PathBuf {
        self.root.join("cache").join("durations.json")
    }
    /// The build cache of finished cells.
    pub fn cell_cache(&self) -> PathBuf {
        self.root.join("cache").join("cells")
    }
}

pub use crate::process::is_root;

/// Put directory `from` at `to` in one rename, replacing what is there: the old directory is
/// first moved aside under a hidden name (`.<name>.old-<pid>`, which no reader of the parent
/// mistakes for an entry) and put back if the second rename fails, so `to` always holds a
/// complete directory or none.
pub fn replace_dir(from: &Path, to: &Path) -> Result<()> {
    let parent = to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io("create directory", parent, e))?;
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = to.exists();
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(to, &old).map_err(|e| Error::io("move aside", to, e))?;
    }
    if let Err(e) = std::fs::rename(from, to) {
        if had_old {
            let _ = std::fs::rename(&old, to);
        }
        return Err(Error::io("move into place", to, e));
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// Write `bytes` to `path` atomically: readers see the old file or the new one, never a
/// partial one, even if kmx is killed mid-write.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_mode(path, bytes, None)
}

/// [`write_atomic`] with the file's permission bits set before it appears (a temporary file
/// is created 0600; installed modules must be 0644).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<()> {
    write_atomic_then(path, bytes, mode, &|| {})
}

/// [`write_atomic_mode`], calling `before_rename` once the data is on disk under the
/// temporary name (the test hook of installs into a root).
pub fn write_atomic_then(
    path: &Path,
    bytes: &[u8],
    mode: Option<u32>,
    before_rename: &dyn Fn(),
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    // Named `.kmx-tmp-<pid>-...`: if kmx is killed before the rename, the next run's sweep
    // (crate::state::tmp) knows it for kmx's own and removes it.
    let mut tmp = crate::state::tmp::file_in(dir)?;
    if let Some(mode) = mode {
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("set permissions of", tmp.path(), e))?;
    }
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| Error::io("write", tmp.path(), e))?;
    before_rename();
    tmp.persist(path)
        .map_err(|e| Error::io("rename into place", path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/state.json");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}

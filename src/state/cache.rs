//! The build cache: finished cells stored by fingerprint under `$KMX_HOME/cache/cells/<fp>/`,
//! so a cell whose inputs did not change is restored instead of rebuilt, whatever output
//! directory asks for it.
//!
//! An entry is a directory holding the cell's files and `entry.json` (each file's size and
//! sha256, the build time). It is written to a staging directory and renamed into place, so
//! it is complete or absent; on use every file is checked against its sha256, and an entry
//! that fails the check is deleted and reported, never reused. Use refreshes the entry's
//! mtime; [`Cache::trim`] removes least recently used entries until the cache fits its size.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::digest::sha256_file;
use crate::error::{Error, Result};

/// Default bound on the cache's size.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub fingerprint: String,
    pub label: String,
    pub files: Vec<CachedFile>,
    /// How long the build took: the cost estimate for sharding.
    pub build_secs: f64,
}

#[derive(Debug, Clone)]
pub struct Cache {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// Why an entry was not usable.
pub enum Miss {
    Absent,
    /// The entry was damaged (and has been deleted): what was wrong.
    Corrupt(String),
}

impl Cache {
    pub fn new(dir: PathBuf, max_bytes: u64) -> Cache {
        Cache { dir, max_bytes }
    }

    fn entry_dir(&self, fp: &str) -> PathBuf {
        self.dir.join(fp)
    }

    /// The entry for `fp`, with every file checked.
    pub fn lookup(&self, fp: &str) -> std::result::Result<(Entry, PathBuf), Miss> {
        let dir = self.entry_dir(fp);
        let meta = dir.join("entry.json");
        let bytes = match std::fs::read(&meta) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => {
                return Err(Miss::Absent);
            }
            Err(e) => {
                return Err(self.discard(&dir, format!("cannot read {}: {e}", meta.display())));
            }
        };
        let entry: Entry = match serde_json::from_slice(&bytes) {
            Ok(e) => e,
            Err(e) => return Err(self.discard(&dir, format!("{}: {e}", meta.display()))),
        };
        if entry.fingerprint != fp {
            return Err(self.discard(
                &dir,
                format!("{} belongs to another fingerprint", meta.display()),
            ));
        }
        for f in &entry.files {
            let path = dir.join(&f.name);
            match sha256_file(&path) {
                Ok(sum) if sum == f.sha256 => {}
                Ok(_) => {
                    return Err(self.discard(
                        &dir,
                        format!("{} does not match its checksum", path.display()),
                    ));
                }
                Err(_) => return Err(self.discard(&dir, format!("{} is missing", path.display()))),
            }
        }
        let _ = filetime_now(&meta);
        Ok((entry, dir))
    }

    fn discard(&self, dir: &Path, why: String) -> Miss {
        let _ = std::fs::remove_dir_all(dir);
        Miss::Corrupt(why)
    }

    /// Store `files` (names in `from`) as the entry for `fp`.
    pub fn store(
        &self,
        fp: &str,
        label: &str,
        from: &Path,
        files: &[String],
        build_secs: f64,
    ) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io("create directory", &self.dir, e))?;
        let staging = tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(&self.dir)
            .map_err(|e| Error::io("create a directory in", &self.dir, e))?;
        let mut listed = Vec::new();
        for name in files {
            let src = from.join(name);
            let dst = staging.path().join(name);
            std::fs::copy(&src, &dst).map_err(|e| Error::io("copy into the cache", &src, e))?;
            let size = std::fs::metadata(&dst)
                .map_err(|e| Error::io("stat", &dst, e))?
                .len();
            listed.push(CachedFile {
                name: name.clone(),
                size,
                sha256: sha256_file(&dst)?,
            });
        }
        let entry = Entry {
            fingerprint: fp.to_string(),
            label: label.to_string(),
            files: listed,
            build_secs,
        };
        let json = serde_json::to_vec_pretty(&entry)
            .map_err(|e| Error::env(format!("cannot serialize a cache entry: {e}")))?;
        std::fs::write(staging.path().join("entry.json"), json)
            .map_err(|e| Error::io("write", staging.path(), e))?;
        let dest = self.entry_dir(fp);
        let _ = std::fs::remove_dir_all(&dest);
        // Until this rename succeeds, dropping `staging` deletes it.
        std::fs::rename(staging.path(), &dest)
            .map_err(|e| Error::io("move into the cache", &dest, e))?;
        Ok(())
    }

    /// The recorded build time of `fp`, if cached (no checksum check: an estimate only).
    pub fn build_secs(&self, fp: &str) -> Option<f64> {
        let bytes = std::fs::read(self.entry_dir(fp).join("entry.json")).ok()?;
        serde_json::from_slice::<Entry>(&bytes)
            .ok()
            .map(|e| e.build_secs)
    }

    /// (entries, bytes, least recently used first) of the cache.
    fn entries(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<(PathBuf, u64, SystemTime)> = rd
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| {
                let dir = e.path();
                let size = std::fs::read_dir(&dir)
                    .map(|files| {
                        files
                            .filter_map(|f| f.ok()?.metadata().ok())
                            .map(|m| m.len())
                            .sum()
                    })
                    .unwrap_or(0);
                let used = std::fs::metadata(dir.join("entry.json"))
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                (dir, size, used)
            })
            .collect();
        out.sort_by_key(|(_, _, used)| *used);
        out
    }

    pub fn stats(&self) -> (usize, u64) {
        let e = self.entries();
        (e.len(), e.iter().map(|(_, s, _)| s).sum())
    }

    /// Remove least recently used entries until the cache holds at most `max` bytes.
    /// Returns (entries removed, bytes freed).
    pub fn trim_to(&self, max: u64) -> (usize, u64) {
        self.remove_abandoned_staging();
        let entries = self.entries();
        let mut total: u64 = entries.iter().map(|(_, s, _)| s).sum();
        let (mut n, mut freed) = (0, 0);
        for (dir, size, _) in entries {
            if total <= max {
                break;
            }
            if std::fs::remove_dir_all(&dir).is_ok() {
                total -= size;
                freed += size;
                n += 1;
            }
        }
        (n, freed)
    }

    /// Staging directories left by a kmx killed while storing (older than an hour, so a
    /// store under way in another process is left alone).
    fn remove_abandoned_staging(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > Duration::from_secs(3600));
            if e.file_name().to_string_lossy().starts_with(".staging-") && stale {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    pub fn trim(&self) -> (usize, u64) {
        self.trim_to(self.max_bytes)
    }
}

/// Mark `path` as used now (its mtime is the LRU clock).
fn filetime_now(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::options().append(true).open(path)?;
    f.set_modified(SystemTime::now())
}

/// Parse a size like `500M`, `2G`, `1048576`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_with(fp: &str) -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cells"), DEFAULT_MAX_BYTES);
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("m.ko"), b"module bytes").unwrap();
        cache
            .store(fp, "m 1 t k", &src, &["m.ko".into()], 1.5)
            .unwrap();
        (dir, cache)
    }

    #[test]
    fn stored_entry_is_found_and_checked() {
        let (_d, cache) = cache_with("abc");
        let (entry, dir) = cache.lookup("abc").ok().unwrap();
        assert_eq!(entry.files[0].size, 12);
        assert_eq!(std::fs::read(dir.join("m.ko")).unwrap(), b"module bytes");
        assert_eq!(cache.build_secs("abc"), Some(1.5));
        assert!(matches!(cache.lookup("other"), Err(Miss::Absent)));
    }

    #[test]
    fn corrupt_entry_is_deleted_not_reused() {
        let (_d, cache) = cache_with("abc");
        std::fs::write(cache.dir.join("abc/m.ko"), b"tampered!!!!").unwrap();
        match cache.lookup("abc") {
            Err(Miss::Corrupt(why)) => {
                assert!(why.ends_with("m.ko does not match its checksum"), "{why}")
            }
            _ => panic!("corrupt entry reused"),
        }
        assert!(!cache.dir.join("abc").exists());
        let (_d, cache) = cache_with("def");
        std::fs::write(cache.dir.join("def/entry.json"), b"{").unwrap();
        assert!(matches!(cache.lookup("def"), Err(Miss::Corrupt(_))));
    }

    #[test]
    fn trim_removes_least_recently_used_first() {
        let (_d, cache) = cache_with("old");
        let src = cache.dir.parent().unwrap().join("src");
        cache
            .store("new", "n", &src, &["m.ko".into()], 1.0)
            .unwrap();
        // The LRU clock is the entry's mtime: "old" last used an hour ago (set, not slept
        // for: two stores in a row may share a timestamp).
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::open(cache.dir.join("old"))
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        let (n, _) = cache.trim_to(cache.stats().1 - 1);
        assert_eq!(n, 1);
        assert!(!cache.dir.join("old").exists());
        assert!(cache.dir.join("new").exists());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("500M"), Some(500 << 20));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("lots"), None);
    }
}

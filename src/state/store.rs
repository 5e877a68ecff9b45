//! The lifecycle store: what `kmx add`, `install`, `uninstall`, `remove`, `status`,
//! `autoinstall`, `tarball` and `load-tarball` know about modules over time. It owns the
//! on-disk layout, the records and the lock; it builds nothing and touches no image root
//! (that is [`crate::install`]).
//!
//! Layout (default `<KMX_HOME>/state`, or `--state-dir` / `KMX_STATE_DIR`):
//!
//! ```text
//! lock                                         flock(2): one mutating kmx at a time
//! sources/<module>/<version>/source.json       a registered source (SourceRecord)
//! sources/<module>/<version>/src/              its copy, like /usr/src/<module>-<version>
//! built/<module>/<version>/<release>/<target>/ a built cell: .ko files, Module.symvers,
//!                                              make.log, kmx-built.json (BuiltRecord)
//! installs/<root-key>/<module>/<version>/<release>/<target>.json
//!                                              one install into one root (InstallRecord)
//! displaced/<root-key>/<release>/<path>        in-tree modules moved aside by an install
//! failed/<module>/<version>/<release>/<target>.json
//!                                              the last build of a cell failed (FailedRecord);
//!                                              removed when the cell builds
//! ```
//!
//! `<root-key>` is the first 16 hex digits of the SHA-256 of the root's canonical path; the
//! record holds the path itself. Every record is its own file, written with
//! [`write_atomic`], so `status` reads each record once (linear) and a crash leaves either
//! the old or the new record. A record that cannot be parsed is an error naming the file.

use std::fs::File;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::digest::hex;
use crate::error::{Error, Result};
use crate::modfile::{Compression, Vermagic};
use crate::state::{Home, write_atomic};

/// File name of a built cell's record inside its directory.
pub const BUILT_RECORD: &str = "kmx-built.json";

/// A registered module source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRecord {
    pub module: String,
    pub version: String,
    /// Where `kmx add` copied it from.
    pub origin: PathBuf,
    /// Content hash of the copy when it was added (see [`content_hash`]).
    pub hash: String,
    pub added_at: u64,
}

/// One `.ko` of a built cell and where it is installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltFile {
    /// File name in the cell directory, e.g. `hello.ko`.
    pub file: String,
    pub sha256: String,
    /// DEST_MODULE_NAME (without `.ko`).
    pub dest_name: String,
    /// DEST_MODULE_LOCATION, e.g. `/updates/dkms`.
    pub dest_location: String,
}

/// A built cell (module, version, kernel release, target), from a build or a tarball. It
/// carries what installing needs, so a binary-only machine needs neither the source nor
/// the kernel tree (except to sign).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltRecord {
    pub module: String,
    pub version: String,
    pub release: String,
    pub target: String,
    pub vermagic: Vermagic,
    /// The kernel tree it was built against (on the machine that built it).
    pub kdir: PathBuf,
    /// Content hash of the registered source at build time; None when unknown.
    pub source_hash: Option<String>,
    pub files: Vec<BuiltFile>,
    /// CONFIG_MODULE_COMPRESS_*, kept as its suffix: `gz`, `xz`, `zst`, or null.
    #[serde(with = "crate::modfile::by_extension")]
    pub compress: Option<Compression>,
    /// CONFIG_MODULE_SIG of the tree, and its CONFIG_MODULE_SIG_HASH.
    pub sig_enabled: bool,
    pub sig_force: bool,
    pub sig_hash: Option<String>,
    pub autoinstall: bool,
    pub origin: Origin,
    pub built_at: u64,
}

/// Where a built cell came from; kept as `build` or `tarball <file name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Origin {
    /// Built on this machine.
    Build,
    /// Imported by `kmx load-tarball` from the archive of this file name.
    Tarball(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Build => f.write_str("build"),
            Origin::Tarball(file) => write!(f, "tarball {file}"),
        }
    }
}

impl From<Origin> for String {
    fn from(o: Origin) -> String {
        o.to_string()
    }
}

/// A built record's origin that is neither of [`Origin`]'s forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("origin {0:?} is neither `build` nor `tarball <file name>`")]
pub struct BadOrigin(pub String);

impl TryFrom<String> for Origin {
    type Error = BadOrigin;
    fn try_from(s: String) -> std::result::Result<Origin, BadOrigin> {
        match (s.as_str(), s.strip_prefix("tarball ")) {
            ("build", _) => Ok(Origin::Build),
            (_, Some(file)) => Ok(Origin::Tarball(file.to_string())),
            _ => Err(BadOrigin(s)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallState {
    /// Intent recorded; the install may be incomplete (a re-run completes it).
    Installing,
    Installed,
    /// Uninstall started; a re-run of uninstall completes it.
    Removing,
}

/// A file kmx put into a root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstalledFile {
    /// Relative to the root, e.g. `lib/modules/6.1.0-50-arm64/updates/kmx/hello.ko.xz`.
    pub path: PathBuf,
    pub sha256: String,
    pub signed: bool,
}

/// A module of the kernel that an install moved aside (restored on uninstall).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Displaced {
    /// Where it was, relative to the root.
    pub original: PathBuf,
    /// Where it is kept, in the store.
    pub saved: PathBuf,
}

/// One install of one built cell into one root.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallRecord {
    pub root: PathBuf,
    pub module: String,
    pub version: String,
    pub release: String,
    pub target: String,
    pub state: InstallState,
    pub files: Vec<InstalledFile>,
    pub displaced: Vec<Displaced>,
    pub updated_at: u64,
}

/// The last build of a cell failed (the kernel hooks' builds above all: nobody watches
/// them). `kmx status` shows the cell as `failed` with the log; a later successful build
/// removes the record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedRecord {
    pub module: String,
    pub version: String,
    pub release: String,
    pub target: String,
    /// What failed, e.g. `make failed: exit status 2`, with the first error lines.
    pub reason: String,
    /// The build log, kept.
    pub log: PathBuf,
    pub failed_at: u64,
}

/// The store at one directory.
#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
}

/// Take an exclusive lock on `path` (created if missing) for `what`. If another kmx holds it:
/// with `wait`, say so on stderr and wait; without, fail at once.
pub fn lock_file(path: &Path, wait: bool, what: &str) -> Result<Lock> {
    use fs4::FileExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    match FileExt::try_lock(&file) {
        Ok(()) => {}
        Err(fs4::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(path).unwrap_or_default();
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another kmx".to_string()
            } else {
                format!("kmx process {holder}")
            };
            if !wait {
                return Err(Error::env(format!("{what} is locked by {who}"))
                    .at(path)
                    .hint("wait for it to finish, or run without --no-wait to wait"));
            }
            eprintln!(
                "kmx: waiting for {who} to release the lock on {what} ({})",
                path.display()
            );
            FileExt::lock(&file).map_err(|e| Error::io("lock", path, e))?;
        }
        Err(fs4::TryLockError::Error(e)) => return Err(Error::io("lock", path, e)),
    }
    // Say who holds it, for whoever waits next (best effort: the lock is what counts).
    let _ = file.set_len(0).and_then(|_| {
        let mut f = &file;
        writeln!(f, "{}", std::process::id())
    });
    Ok(Lock { _file: file })
}

/// Held while a kmx process mutates the store; released on drop (or by the kernel when the
/// process dies, so a `kill -9` never leaves a stale lock).
pub struct Lock {
    _file: File,
}

impl Store {
    /// `explicit` (`--state-dir`), else `<home>/state`.
    pub fn resolve(home: &Home, explicit: Option<PathBuf>) -> Store {
        Store {
            dir: explicit.unwrap_or_else(|| home.root.join("state")),
        }
    }

    pub fn sources(&self) -> PathBuf {
        self.dir.join("sources")
    }
    pub fn source_dir(&self, module: &str, version: &str) -> PathBuf {
        self.sources().join(module).join(version)
    }
    /// The registered copy of a source.
    pub fn source_copy(&self, module: &str, version: &str) -> PathBuf {
        self.source_dir(module, version).join("src")
    }
    pub fn built(&self) -> PathBuf {
        self.dir.join("built")
    }
    pub fn cell_dir(&self, module: &str, version: &str, release: &str, target: &str) -> PathBuf {
        self.built()
            .join(module)
            .join(version)
            .join(release)
            .join(target)
    }
    pub fn installs(&self) -> PathBuf {
        self.dir.join("installs")
    }
    pub fn install_record_path(&self, root: &Path, r: &CellKey) -> PathBuf {
        self.installs()
            .join(root_key(root))
            .join(&r.module)
            .join(&r.version)
            .join(&r.release)
            .join(format!("{}.json", r.target))
    }
    pub fn displaced_dir(&self, root: &Path, release: &str) -> PathBuf {
        self.dir
            .join("displaced")
            .join(root_key(root))
            .join(release)
    }

    /// Take the store's lock. If another kmx holds it: with `wait`, say so on stderr and
    /// wait; without, fail at once. Then clean up after any kmx that was killed: its
    /// temporary files in the store and in the roots the records name go (see
    /// [`crate::state::tmp`]), said on stderr.
    pub fn lock(&self, wait: bool) -> Result<Lock> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io("create directory", &self.dir, e))?;
        let lock = lock_file(&self.dir.join("lock"), wait, "the state store")?;
        let swept = crate::state::tmp::sweep(&self.dir, &self.root_dirs());
        if let Some(first) = swept.removed.first() {
            eprintln!(
                "kmx: removed {} temporary file(s) left by a kmx that was killed ({}{})",
                swept.removed.len(),
                first.display(),
                if swept.removed.len() > 1 { ", ..." } else { "" }
            );
        }
        for p in &swept.restored {
            eprintln!(
                "kmx: put back {}, moved aside by a kmx that was killed",
                p.display()
            );
        }
        Ok(lock)
    }

    /// The directories of every root that install records write into: where a killed
    /// install or uninstall can have left a temporary file. Records that cannot be read
    /// are passed over (`status --check` reports them).
    pub fn root_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let Ok(roots) = subdirs(&self.installs()) else {
            return dirs;
        };
        for base in roots {
            let Ok(recs) = installs_under(&base) else {
                continue;
            };
            for r in recs {
                let paths = r
                    .files
                    .iter()
                    .map(|f| &f.path)
                    .chain(r.displaced.iter().map(|d| &d.original));
                for p in paths {
                    if let Some(parent) = r.root.join(p).parent()
                        && !dirs.iter().any(|d| d == parent)
                    {
                        dirs.push(parent.to_path_buf());
                    }
                }
            }
        }
        dirs
    }

    /// Whether another process holds the lock right now (for status to tell an install in
    /// progress from an interrupted one).
    pub fn is_locked(&self) -> bool {
        use fs4::FileExt;
        let path = self.dir.join("lock");
        match File::open(&path) {
            Ok(f) => matches!(
                FileExt::try_lock_shared(&f),
                Err(fs4::TryLockError::WouldBlock)
            ),
            Err(_) => false,
        }
    }

    pub fn load_source(&self, module: &str, version: &str) -> Result<Option<SourceRecord>> {
        read_record(&self.source_dir(module, version).join("source.json"))
    }

    pub fn save_source(&self, rec: &SourceRecord) -> Result<()> {
        save_record(
            &self
                .source_dir(&rec.module, &rec.version)
                .join("source.json"),
            rec,
        )
    }

    /// Every registered source, sorted by module then version.
    pub fn sources_all(&self) -> Result<Vec<SourceRecord>> {
        let mut out = Vec::new();
        for m in subdirs(&self.sources())? {
            for v in subdirs(&m)? {
                if let Some(rec) = read_record::<SourceRecord>(&v.join("source.json"))? {
                    out.push(rec);
                }
            }
        }
        Ok(out)
    }

    /// The versions of `module` that are registered or built, sorted oldest first (DKMS
    /// version order).
    pub fn versions_of(&self, module: &str) -> Result<Vec<String>> {
        let mut v: Vec<String> = Vec::new();
        for base in [self.sources().join(module), self.built().join(module)] {
            for d in subdirs(&base)? {
                if let Some(name) = d.file_name().and_then(|n| n.to_str())
                    && !v.iter().any(|x| x == name)
                {
                    v.push(name.to_string());
                }
            }
        }
        v.sort_by(|a, b| crate::config::manifest::compare_versions(a, b));
        Ok(v)
    }

    fn failed_path(&self, k: &CellKey) -> PathBuf {
        self.dir
            .join("failed")
            .join(&k.module)
            .join(&k.version)
            .join(&k.release)
            .join(format!("{}.json", k.target))
    }

    pub fn save_failed(&self, rec: &FailedRecord) -> Result<()> {
        save_record(&self.failed_path(&rec.key()), rec)
    }

    /// Forget that a cell failed (it built, or its module was removed).
    pub fn clear_failed(&self, k: &CellKey) -> Result<()> {
        remove_record(&self.failed_path(k))
    }

    /// Every failed cell, with a record.
    pub fn failed_all(&self) -> Result<Vec<FailedRecord>> {
        let mut out = Vec::new();
        for m in subdirs(&self.dir.join("failed"))? {
            for v in subdirs(&m)? {
                for r in subdirs(&v)? {
                    for f in files(&r)?
                        .into_iter()
                        .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    {
                        if let Some(rec) = read_record::<FailedRecord>(&f)? {
                            out.push(rec);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn load_built(&self, k: &CellKey) -> Result<Option<BuiltRecord>> {
        read_record(
            &self
                .cell_dir(&k.module, &k.version, &k.release, &k.target)
                .join(BUILT_RECORD),
        )
    }

    pub fn save_built(&self, rec: &BuiltRecord) -> Result<()> {
        save_record(
            &self
                .cell_dir(&rec.module, &rec.version, &rec.release, &rec.target)
                .join(BUILT_RECORD),
            rec,
        )
    }

    /// Drop a built cell (DKMS's `unbuild`): renamed aside first, so a crash never leaves a
    /// half-deleted cell that looks built.
    pub fn delete_built(&self, k: &CellKey) -> Result<()> {
        let dir = self.cell_dir(&k.module, &k.version, &k.release, &k.target);
        if !dir.exists() {
            return Ok(());
        }
        let gone = dir.with_file_name(format!(".unbuilding-{}", k.target));
        let _ = std::fs::remove_dir_all(&gone);
        std::fs::rename(&dir, &gone).map_err(|e| Error::io("remove", &dir, e))?;
        std::fs::remove_dir_all(&gone).map_err(|e| Error::io("remove", &gone, e))?;
        // The release's and version's directories go with their last cell.
        if let Some(release) = dir.parent() {
            let _ = std::fs::remove_dir(release);
        }
        Ok(())
    }

    /// Every built cell with a record. Directories without one (a build killed before its
    /// record was written, the build's `.work` and `logs`) are not cells.
    pub fn built_all(&self) -> Result<Vec<BuiltRecord>> {
        let mut out = Vec::new();
        for m in subdirs(&self.built())? {
            for v in subdirs(&m)? {
                for r in subdirs(&v)? {
                    for t in subdirs(&r)? {
                        if let Some(rec) = read_record::<BuiltRecord>(&t.join(BUILT_RECORD))? {
                            out.push(rec);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn load_install(&self, root: &Path, k: &CellKey) -> Result<Option<InstallRecord>> {
        read_record(&self.install_record_path(root, k))
    }

    pub fn save_install(&self, rec: &InstallRecord) -> Result<()> {
        save_record(&self.install_record_path(&rec.root, &rec.key()), rec)
    }

    pub fn delete_install(&self, rec: &InstallRecord) -> Result<()> {
        remove_record(&self.install_record_path(&rec.root, &rec.key()))
    }

    /// Every install record, of every root.
    pub fn installs_all(&self) -> Result<Vec<InstallRecord>> {
        let mut out = Vec::new();
        for root in subdirs(&self.installs())? {
            out.extend(installs_under(&root)?);
        }
        Ok(out)
    }

    /// The install records of one root.
    pub fn installs_in(&self, root: &Path) -> Result<Vec<InstallRecord>> {
        installs_under(&self.installs().join(root_key(root)))
    }
}

impl Store {
    /// Check the store against the disk, reading only (`kmx status --check`): every record
    /// parses; every registered source has its copy; every built cell's files are there
    /// with the SHA-256 its record gives; every install's files are in its root with theirs
    /// (an install interrupted halfway may lack some, or still hold the ones it replaces); every module
    /// moved aside is in one of its two places; no temporary file of a dead kmx is left in
    /// the store or in a directory a record installs into. One line per problem.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut problem = |s: String| problems.push(s);
        let digest_problem = |path: &Path, want: &str| -> Option<String> {
            match crate::digest::sha256_file(path) {
                Ok(h) if h == want => None,
                Ok(h) => Some(format!(
                    "{}: SHA-256 {h} differs from the recorded {want}",
                    path.display()
                )),
                Err(e) => Some(e.to_string()),
            }
        };
        // Sources.
        for m in subdirs(&self.sources()).unwrap_or_default() {
            for v in subdirs(&m).unwrap_or_default() {
                let rec = v.join("source.json");
                match read_record::<SourceRecord>(&rec) {
                    Ok(Some(_)) => {
                        if !v.join("src").is_dir() {
                            problem(format!(
                                "{}: the registered copy is missing (its record is {})",
                                v.join("src").display(),
                                rec.display()
                            ));
                        }
                    }
                    // Reported with the other leftovers of a killed kmx, below.
                    Ok(None) => {}
                    Err(e) => problem(e.to_string()),
                }
            }
        }
        // Built cells.
        for m in subdirs(&self.built()).unwrap_or_default() {
            for v in subdirs(&m).unwrap_or_default() {
                for r in subdirs(&v).unwrap_or_default() {
                    for t in subdirs(&r).unwrap_or_default() {
                        match read_record::<BuiltRecord>(&t.join(BUILT_RECORD)) {
                            Ok(Some(rec)) => {
                                for f in &rec.files {
                                    let p = t.join(&f.file);
                                    if !p.is_file() {
                                        problem(format!(
                                            "{}: missing (built cell {})",
                                            p.display(),
                                            rec.key()
                                        ));
                                    } else if let Some(d) = digest_problem(&p, &f.sha256) {
                                        problem(d);
                                    }
                                }
                            }
                            Ok(None) => problem(format!(
                                "{}: a built cell directory without {BUILT_RECORD}",
                                t.display()
                            )),
                            Err(e) => problem(e.to_string()),
                        }
                    }
                }
            }
        }
        // Installs.
        for base in subdirs(&self.installs()).unwrap_or_default() {
            for m in subdirs(&base).unwrap_or_default() {
                for v in subdirs(&m).unwrap_or_default() {
                    for r in subdirs(&v).unwrap_or_default() {
                        for f in files(&r).unwrap_or_default() {
                            if f.extension().is_none_or(|e| e != "json") {
                                continue;
                            }
                            match read_record::<InstallRecord>(&f) {
                                Ok(Some(rec)) => check_install(&rec, &mut problem, &digest_problem),
                                Ok(None) => {}
                                Err(e) => problem(e.to_string()),
                            }
                        }
                    }
                }
            }
        }
        for p in crate::state::tmp::orphans(&self.dir, &self.root_dirs()) {
            problem(format!(
                "{}: left by a kmx that was killed (the next kmx that takes the store's lock removes it)",
                p.display()
            ));
        }
        problems
    }
}

fn check_install(
    rec: &InstallRecord,
    problem: &mut impl FnMut(String),
    digest_problem: &impl Fn(&Path, &str) -> Option<String>,
) {
    if std::fs::symlink_metadata(&rec.root).is_err() {
        problem(format!(
            "{}: the root of the install of {} no longer exists (`kmx uninstall --root` forgets it)",
            rec.root.display(),
            rec.key()
        ));
        return;
    }
    let done = rec.state == InstallState::Installed;
    for f in &rec.files {
        let p = rec.root.join(&f.path);
        if !p.is_file() {
            if done {
                problem(format!(
                    "{}: missing (installed {})",
                    p.display(),
                    rec.key()
                ));
            }
        } else if done && let Some(d) = digest_problem(&p, &f.sha256) {
            // (A file of an interrupted install may still be the one it replaces.)
            problem(d);
        }
    }
    for d in &rec.displaced {
        // A link moved aside is kept as a link: present is present, whatever it points to.
        let present = |p: &Path| std::fs::symlink_metadata(p).is_ok();
        let at_original = present(&rec.root.join(&d.original));
        let saved = present(&d.saved);
        if !at_original && !saved {
            problem(format!(
                "{}: a module moved aside by the install of {} is lost (not at {} either)",
                d.saved.display(),
                rec.key(),
                rec.root.join(&d.original).display()
            ));
        } else if done && !saved {
            problem(format!(
                "{}: the install of {} says it moved this module aside, but it is still there",
                rec.root.join(&d.original).display(),
                rec.key()
            ));
        }
    }
}

/// (module, version, kernel release, target): what one built cell and one install are of.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CellKey {
    pub module: String,
    pub version: String,
    pub release: String,
    pub target: String,
}

impl std::fmt::Display for CellKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.module, self.version, self.target, self.release
        )
    }
}

/// `key()` of the records of one cell (module, version, release, target).
macro_rules! cell_keyed {
    ($($record:ty),*) => {$(
        impl $record {
            pub fn key(&self) -> CellKey {
                CellKey {
                    module: self.module.clone(),
                    version: self.version.clone(),
                    release: self.release.clone(),
                    target: self.target.clone(),
                }
            }
        }
    )*};
}
cell_keyed!(BuiltRecord, InstallRecord, FailedRecord);

/// The key of a root in the store: 16 hex digits of the SHA-256 of its path.
pub fn root_key(root: &Path) -> String {
    let digest = Sha256::digest(root.as_os_str().as_encoded_bytes());
    hex(&digest)[..16].to_string()
}

/// Seconds since the epoch (0 if the clock is before it).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `name` can be one path component of the store: a module name, version,
/// kernel release or target. Refuses empty names, `.`/`..`, slashes, NUL, and names
/// starting with a dot (kept for kmx's own files).
pub fn valid_component(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\0'])
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

fn read_record<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::config(path, format!("cannot parse this kmx state record: {e}")).hint(
                "the file is damaged: restore it, or delete it and re-run the command that wrote it",
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Remove a record file; one already gone is fine.
fn remove_record(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

fn save_record<T: Serialize>(path: &Path, rec: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(rec)
        .map_err(|e| Error::env(format!("cannot serialize a state record: {e}")))?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Subdirectories of `dir` (not following symlinks), sorted; none if `dir` is missing.
/// Names starting with a dot (temporary and work directories) are left out.
pub fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    list(dir, true)
}

fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    list(dir, false)
}

fn list(dir: &Path, want_dirs: bool) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read directory", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let ft = entry
            .file_type()
            .map_err(|e| Error::io("stat", entry.path(), e))?;
        if (want_dirs && ft.is_dir()) || (!want_dirs && ft.is_file()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The install records under one root's directory (`<module>/<version>/<release>/*.json`).
fn installs_under(base: &Path) -> Result<Vec<InstallRecord>> {
    let mut out = Vec::new();
    for m in subdirs(base)? {
        for v in subdirs(&m)? {
            for r in subdirs(&v)? {
                for f in files(&r)? {
                    if f.extension().is_some_and(|e| e == "json")
                        && let Some(rec) = read_record::<InstallRecord>(&f)?
                    {
                        out.push(rec);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// A content hash of a source tree (contents, names, modes and links; VCS metadata aside):
/// the same hash a build's fingerprint uses, so "stale" means what "rebuilt" means.
pub fn content_hash(dir: &Path) -> Result<String> {
    crate::digest::source_tree(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two built records as kmx 0.x (d101abb) wrote them, byte for byte: one built here with
    /// no compression, one imported from a tarball with xz.
    const BUILT_TODAY: [&str; 2] = [
        r#"{
  "module": "hello",
  "version": "1.0",
  "release": "6.1.0-50-amd64",
  "target": "amd64",
  "vermagic": "6.1.0-50-amd64 SMP preempt mod_unload modversions ",
  "kdir": "/home/u/.local/share/kmx/kernels/amd64/6.1.0-50-amd64",
  "source_hash": "5d41402abc4b2a76b9719d911017c592",
  "files": [
    {
      "file": "hello.ko",
      "sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
      "dest_name": "hello",
      "dest_location": "/updates/dkms"
    }
  ],
  "compress": null,
  "sig_enabled": true,
  "sig_force": false,
  "sig_hash": "sha256",
  "autoinstall": true,
  "origin": "build",
  "built_at": 1765170000
}
"#,
        r#"{
  "module": "vpoll",
  "version": "0.2",
  "release": "6.12.118+deb13-arm64",
  "target": "arm64",
  "vermagic": "6.12.118+deb13-arm64 SMP preempt mod_unload modversions aarch64",
  "kdir": "/srv/trees/6.12.118+deb13-arm64",
  "source_hash": null,
  "files": [],
  "compress": "xz",
  "sig_enabled": false,
  "sig_force": false,
  "sig_hash": null,
  "autoinstall": false,
  "origin": "tarball vpoll modules.tar.gz",
  "built_at": 0
}
"#,
    ];

    #[test]
    fn a_built_record_written_today_loads_typed_and_is_written_back_byte_for_byte() {
        let old = tempfile::tempdir().unwrap();
        let new = tempfile::tempdir().unwrap();
        let (old, new) = (
            Store {
                dir: old.path().to_path_buf(),
            },
            Store {
                dir: new.path().to_path_buf(),
            },
        );
        let mut loaded = Vec::new();
        for text in BUILT_TODAY {
            let rec: BuiltRecord = serde_json::from_str(text).unwrap();
            let k = rec.key();
            let path = old
                .cell_dir(&k.module, &k.version, &k.release, &k.target)
                .join(BUILT_RECORD);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            let rec = old.load_built(&k).unwrap().unwrap();
            new.save_built(&rec).unwrap();
            let written = std::fs::read_to_string(
                new.cell_dir(&k.module, &k.version, &k.release, &k.target)
                    .join(BUILT_RECORD),
            )
            .unwrap();
            assert_eq!(written, text);
            loaded.push(rec);
        }
        assert_eq!(loaded[0].compress, None);
        assert_eq!(loaded[0].origin, Origin::Build);
        assert_eq!(loaded[0].vermagic.release, "6.1.0-50-amd64");
        assert_eq!(
            loaded[0].vermagic.flags,
            "SMP preempt mod_unload modversions "
        );
        assert_eq!(loaded[1].compress, Some(Compression::Xz));
        assert_eq!(
            loaded[1].origin,
            Origin::Tarball("vpoll modules.tar.gz".into())
        );
        assert_eq!(
            loaded[1].vermagic.flags.split(' ').next_back(),
            Some("aarch64")
        );
    }

    #[test]
    fn a_built_record_with_an_unknown_compression_or_origin_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let store = Store {
            dir: d.path().to_path_buf(),
        };
        let k = CellKey {
            module: "hello".into(),
            version: "1.0".into(),
            release: "6.1.0-50-amd64".into(),
            target: "amd64".into(),
        };
        let path = store
            .cell_dir(&k.module, &k.version, &k.release, &k.target)
            .join(BUILT_RECORD);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        for (from, to, says) in [
            (
                r#""compress": null"#,
                r#""compress": "zstd""#,
                "unknown module compression `zstd`",
            ),
            (
                r#""origin": "build""#,
                r#""origin": "copied""#,
                "neither `build` nor `tarball",
            ),
            (
                r#""vermagic": "6.1.0-50-amd64 SMP preempt mod_unload modversions ""#,
                r#""vermagic": "6.1.0-50-amd64""#,
                "is not a kernel release, a space and flags",
            ),
        ] {
            assert!(BUILT_TODAY[0].contains(from), "{from}");
            std::fs::write(&path, BUILT_TODAY[0].replace(from, to)).unwrap();
            let err = store.load_built(&k).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{}: cannot parse", path.display())),
                "{err}"
            );
            assert!(err.contains(says), "{err}");
        }
        // The control: the same file unchanged loads.
        std::fs::write(&path, BUILT_TODAY[0]).unwrap();
        assert!(store.load_built(&k).unwrap().is_some());
    }

    #[test]
    fn content_hash_changes_with_content_names_and_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.c"), "int x;").unwrap();
        let h1 = content_hash(d.path()).unwrap();
        assert_eq!(h1, content_hash(d.path()).unwrap());
        std::fs::write(d.path().join("a.c"), "int y;").unwrap();
        let h2 = content_hash(d.path()).unwrap();
        assert_ne!(h1, h2);
        std::fs::create_dir(d.path().join(".git")).unwrap();
        std::fs::write(d.path().join(".git/HEAD"), "x").unwrap();
        assert_eq!(h2, content_hash(d.path()).unwrap());
        std::fs::write(d.path().join("b.c"), "").unwrap();
        assert_ne!(h2, content_hash(d.path()).unwrap());
    }

    #[test]
    fn components_refuse_traversal() {
        assert!(valid_component("hello"));
        assert!(valid_component("1.0-2+deb12"));
        for bad in ["", ".", "..", "a/b", ".hidden", "/abs"] {
            assert!(!valid_component(bad), "{bad}");
        }
    }

    #[test]
    fn damaged_record_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let store = Store {
            dir: d.path().to_path_buf(),
        };
        let p = store.source_dir("m", "1").join("source.json");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "{not json").unwrap();
        let err = store.sources_all().unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "{}: cannot parse this kmx state record",
                p.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn second_lock_fails_without_wait() {
        let d = tempfile::tempdir().unwrap();
        let store = Store {
            dir: d.path().to_path_buf(),
        };
        let held = store.lock(false).unwrap();
        assert!(store.is_locked());
        let err = store.lock(false).err().expect("must be locked");
        assert!(
            err.to_string().contains("is locked by kmx process"),
            "{err}"
        );
        drop(held);
        assert!(store.lock(false).is_ok());
    }
}

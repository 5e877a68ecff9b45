//! kmx's temporary files, and cleaning up after a kmx that was killed (`kill -9`, a power
//! cut). It owns the naming and the sweeper; it decides nothing about what is installed.
//!
//! Every temporary file or directory kmx makes in the state store, in an image root or in
//! the system's temporary directory is named `.kmx-tmp-<pid>-<random>`, `<pid>` being the
//! kmx process that made it. The name says unambiguously whose it is, so whoever comes
//! next can remove it once that process is dead:
//!
//! - in the state store and in the roots the store's records name, by [`sweep`], which
//!   every mutating command runs right after it takes the store's lock (only commands that
//!   hold that lock write there, so a dead owner's files are garbage);
//! - in the system's temporary directory, where each run keeps everything under one
//!   `.kmx-tmp-<pid>-<random>` directory ([`RunDir`]), removed when the run ends and by the
//!   next run's sweep if it was killed.
//!
//! A file kmx installs is written as `.kmx-tmp-<pid>-<random>` next to its destination and
//! renamed: the rename is atomic, and a crash before it leaves only a name the sweeper
//! removes. The sweeper also recognises what older kmx versions left in the store (files
//! named `.tmpXXXXXX`, `.stage-*` and `.incoming-*` directories): the store is kmx's own.
//! It never touches a name in an image root that is not `.kmx-tmp-<pid>-...`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The prefix every kmx temporary name starts with.
pub const PREFIX: &str = ".kmx-tmp-";

/// `.kmx-tmp-<pid>-`: the prefix of this process's temporary names.
pub fn prefix() -> String {
    format!("{PREFIX}{}-", std::process::id())
}

/// The process that made the temporary `name`, if `name` is a kmx temporary name.
pub fn owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

/// Whether process `pid` still runs (a zombie does not: it writes nothing more). A pid
/// reused by another process keeps a dead kmx's files until that one ends too: harmless,
/// where taking a live kmx's files for garbage would not be.
pub fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = PathBuf::from(format!("/proc/{pid}"));
    match std::fs::read_to_string(proc.join("stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, after)| after.trim_start().starts_with('Z')),
        Err(_) => proc.exists(),
    }
}

/// Whether `name` is the temporary name of a kmx that is no longer running.
pub fn orphaned(name: &str) -> bool {
    owner(name).is_some_and(|pid| !alive(pid))
}

/// Whether `name` is what an older kmx left in the store: tempfile's `.tmpXXXXXX` (an
/// atomic write killed before its rename), a `.stage-*` install staging directory or an
/// `.incoming-*` tarball import.
pub fn legacy(name: &str) -> bool {
    let tmp = name
        .strip_prefix(".tmp")
        .is_some_and(|r| r.len() == 6 && r.chars().all(|c| c.is_ascii_alphanumeric()));
    tmp || name.starts_with(".stage-") || name.starts_with(".incoming-")
}

/// A temporary file in `dir` named for this process (`.kmx-tmp-<pid>-<random>`), removed
/// when dropped unless persisted.
pub fn file_in(dir: &Path) -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&prefix())
        .tempfile_in(dir)
        .map_err(|e| Error::io("create a file in", dir, e))
}

/// A temporary directory in `dir` named for this process, removed when dropped.
pub fn dir_in(dir: &Path) -> Result<tempfile::TempDir> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    tempfile::Builder::new()
        .prefix(&prefix())
        .tempdir_in(dir)
        .map_err(|e| Error::io("create a directory in", dir, e))
}

/// This run's directory in the system's temporary directory: every temporary file or
/// directory made without a place of its own (`tempfile::tempdir()`, anywhere in kmx) goes
/// under it. Removed, with what it holds, when dropped (the end of the run).
pub struct RunDir {
    _dir: Option<tempfile::TempDir>,
}

impl RunDir {
    /// Make this run's directory and send tempfile's defaults there. Best effort: if the
    /// system's temporary directory is not writable, temporaries go where they went before.
    pub fn enter() -> RunDir {
        let base = std::env::temp_dir();
        sweep_dir(&base, &mut Vec::new());
        let dir = tempfile::Builder::new()
            .prefix(&prefix())
            .tempdir_in(&base)
            .ok();
        if let Some(d) = &dir {
            let _ = tempfile::env::override_temp_dir(d.path());
        }
        RunDir { _dir: dir }
    }
}

/// Remove the orphaned kmx temporaries directly in `dir` (not below). Returns nothing;
/// what was removed is appended to `removed`.
pub fn sweep_dir(dir: &Path, removed: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if orphaned(&name.to_string_lossy()) && remove_any(&e.path()) {
            removed.push(e.path());
        }
    }
}

/// Remove the empty directories below `dir`, `depth` levels deep at most (not `dir`).
fn remove_empty_dirs(dir: &Path, depth: usize) {
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_dirs(&e.path(), depth - 1);
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// Remove a file or a directory tree (not following symlinks). Whether it is gone.
fn remove_any(path: &Path) -> bool {
    let res = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return true,
    };
    res.is_ok() || !path.exists()
}

/// What a sweep found and did.
#[derive(Debug, Default)]
pub struct Swept {
    /// Temporary files and directories removed.
    pub removed: Vec<PathBuf>,
    /// Directories put back where an interrupted replace had moved them aside.
    pub restored: Vec<PathBuf>,
}

/// The kmx temporaries left in the state store at `state` by dead processes (and by older
/// kmx versions), and in the directories `root_dirs` (where records install into). Only
/// call it holding the store's lock. The registered source copies are not entered (they
/// hold the user's files); built cells' `.work` directories are not either (make's).
pub fn sweep(state: &Path, root_dirs: &[PathBuf]) -> Swept {
    let mut swept = Swept::default();
    sweep_store_dir(state, state, &mut swept);
    // A killed `add` or `remove` can leave a module's or version's directory empty: it
    // would list as a version that is not there.
    // An `add` writes source.json last: a version directory without one is an add that
    // was killed (none runs: we hold the lock).
    for v in unfinished_adds(state) {
        if remove_any(&v) {
            swept.removed.push(v);
        }
    }
    // (sources/<m>/<v>: not into the copy; built/<m>/<v>/<release>/<target>.)
    remove_empty_dirs(&state.join("sources"), 2);
    remove_empty_dirs(&state.join("built"), 4);
    for d in root_dirs {
        sweep_dir(d, &mut swept.removed);
    }
    sweep_dir(&std::env::temp_dir(), &mut swept.removed);
    swept
}

/// Remove the orphaned kmx temporaries in a build's output directory `out` and below (not
/// in `.work`, which each cell clears when it runs). Needs no lock: only dead owners'.
pub fn sweep_output(out: &Path) {
    fn walk(dir: &Path, depth: usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if orphaned(&name) {
                remove_any(&e.path());
            } else if depth > 0 && name != ".work" && e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), depth - 1);
            }
        }
    }
    walk(out, 5);
}

/// Orphans in the store: what [`sweep`] removes, listed without removing (for
/// `kmx status --check`).
pub fn orphans(state: &Path, root_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = unfinished_adds(state);
    find_store_orphans(state, state, &mut out);
    for d in root_dirs {
        if let Ok(entries) = std::fs::read_dir(d) {
            for e in entries.flatten() {
                if orphaned(&e.file_name().to_string_lossy()) {
                    out.push(e.path());
                }
            }
        }
    }
    out.sort();
    out
}

/// The `sources/<module>/<version>` directories without a `source.json`.
fn unfinished_adds(state: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let dirs = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    for m in dirs(&state.join("sources")) {
        for v in dirs(&m) {
            if std::fs::symlink_metadata(v.join("source.json")).is_err() {
                out.push(v);
            }
        }
    }
    out
}

/// Whether the store directory `dir` is one the sweeper does not enter.
fn skipped(state: &Path, dir: &Path) -> bool {
    let rel = dir.strip_prefix(state).unwrap_or(dir);
    let parts: Vec<_> = rel.components().collect();
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    // sources/<m>/<v>/src, what a built cell holds below built/<m>/<v>/<r>/<t> (its build
    // tree), and any build work directory or log directory.
    (parts.len() == 4 && parts[0].as_os_str() == "sources" && name.as_deref() == Some("src"))
        || (parts.len() > 5 && parts[0].as_os_str() == "built")
        || name.as_deref() == Some(".work")
        || name.as_deref() == Some("logs")
}

/// What in the store directory `dir` (an entry named `name`) is an orphan: a dead kmx's
/// temporary, an older kmx's, an `add` or `remove` that died halfway (`.src-new-<pid>`,
/// `.removing-<v>`), a replaced directory moved aside (`.<name>.old-<pid>`).
fn store_orphan(dir: &Path, name: &str) -> Option<Orphan> {
    if orphaned(name) || legacy(name) {
        return Some(Orphan::Remove);
    }
    let dead_pid = |rest: &str| rest.parse::<u32>().is_ok_and(|p| !alive(p));
    if let Some(pid) = name.strip_prefix(".src-new-")
        && dead_pid(pid)
    {
        return Some(Orphan::Remove);
    }
    if let Some(pid) = name.strip_prefix(".src-old-")
        && dead_pid(pid)
    {
        return Some(Orphan::PutBack(dir.join("src")));
    }
    if name.starts_with(".removing-") {
        return Some(Orphan::Remove);
    }
    // Under the lock no build runs into the store: its work directories are scratch.
    if name == ".work" && dir.file_name().is_some_and(|n| n == "built") {
        return Some(Orphan::Remove);
    }
    if let Some(rest) = name.strip_prefix('.')
        && let Some((orig, pid)) = rest.rsplit_once(".old-")
        && !orig.is_empty()
        && dead_pid(pid)
    {
        return Some(Orphan::PutBack(dir.join(orig)));
    }
    None
}

enum Orphan {
    Remove,
    /// Moved aside by an interrupted replace: the original name, to put it back under if
    /// nothing took its place (else it is removed).
    PutBack(PathBuf),
}

fn sweep_store_dir(state: &Path, dir: &Path, swept: &mut Swept) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        match store_orphan(dir, &name) {
            Some(Orphan::Remove) => {
                if remove_any(&path) {
                    swept.removed.push(path);
                }
                continue;
            }
            Some(Orphan::PutBack(orig)) => {
                if std::fs::symlink_metadata(&orig).is_err() {
                    if std::fs::rename(&path, &orig).is_ok() {
                        swept.restored.push(orig);
                    }
                } else if remove_any(&path) {
                    swept.removed.push(path);
                }
                continue;
            }
            None => {}
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) && !skipped(state, &path) {
            sweep_store_dir(state, &path, swept);
        }
    }
}

fn find_store_orphans(state: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        // A failed build keeps its work directory to look at; only the sweep clears it.
        if name != ".work" && store_orphan(dir, &name).is_some() {
            out.push(path);
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) && !skipped(state, &path) {
            find_store_orphans(state, &path, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pid of a process that has exited (and been reaped).
    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    #[test]
    fn names_say_whose_they_are() {
        assert_eq!(owner(".kmx-tmp-123-abc"), Some(123));
        assert_eq!(owner(".kmx-tmp-x-abc"), None);
        assert_eq!(owner(".tmpabcdef"), None);
        assert!(prefix().starts_with(&format!(".kmx-tmp-{}-", std::process::id())));
        assert!(alive(std::process::id()));
        assert!(!alive(dead_pid()));
        assert!(legacy(".tmpAb12cd"));
        assert!(!legacy(".tmp"));
        assert!(!legacy("tmpabcdef"));
    }

    #[test]
    fn sweep_removes_dead_owners_files_and_keeps_live_ones_and_user_files() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let dead = dead_pid();
        let inst = state.join("installs/k/m/1/r");
        std::fs::create_dir_all(&inst).unwrap();
        std::fs::write(inst.join("t.json"), "{}").unwrap();
        std::fs::write(inst.join(format!(".kmx-tmp-{dead}-x1")), "").unwrap();
        std::fs::write(inst.join(".tmpAbCdEf"), "").unwrap();
        let mine = inst.join(format!("{}x2", prefix()));
        std::fs::write(&mine, "").unwrap();
        std::fs::create_dir_all(state.join(".stage-abc/x")).unwrap();
        std::fs::create_dir_all(state.join(format!(".kmx-tmp-{dead}-st/x"))).unwrap();
        // The user's source copy is never entered.
        let src = state.join("sources/m/1/src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join(".tmpAbCdEf"), "user's").unwrap();
        std::fs::write(state.join("sources/m/1/source.json"), "{}").unwrap();
        // An add killed before its record: the version directory goes.
        std::fs::create_dir_all(state.join("sources/m/3/src")).unwrap();
        // An add that died after moving the registered copy aside: it is put back.
        let v2 = state.join("sources/m/2");
        std::fs::create_dir_all(v2.join(format!(".src-old-{dead}"))).unwrap();
        std::fs::create_dir_all(v2.join(format!(".src-new-{dead}"))).unwrap();
        std::fs::write(v2.join("source.json"), "{}").unwrap();
        // A root kmx installs into.
        let root_dir = d.path().join("root/lib/modules/r/updates");
        std::fs::create_dir_all(&root_dir).unwrap();
        std::fs::write(root_dir.join(format!(".kmx-tmp-{dead}-m")), "ko").unwrap();
        std::fs::write(root_dir.join(".tmpAbCdEf"), "not kmx's to judge").unwrap();
        std::fs::write(root_dir.join("hello.ko"), "ko").unwrap();

        let found = orphans(&state, std::slice::from_ref(&root_dir));
        assert_eq!(found.len(), 8, "{found:?}");
        let swept = sweep(&state, std::slice::from_ref(&root_dir));
        assert_eq!(swept.removed.len(), 7, "{swept:?}");
        assert!(!state.join("sources/m/3").exists());
        assert_eq!(swept.restored, [v2.join("src")]);
        let mut left: Vec<String> = std::fs::read_dir(&inst)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let want = mine.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(left, [want, "t.json".to_string()]);
        assert!(src.join(".tmpAbCdEf").exists());
        assert!(root_dir.join(".tmpAbCdEf").exists());
        assert!(root_dir.join("hello.ko").exists());
        assert!(!state.join(".stage-abc").exists());
        assert!(orphans(&state, &[root_dir]).is_empty());
    }
}

//! `uninstall`, `unbuild` and `remove`, DKMS's way down: uninstall takes a module out of a
//! root; unbuild uninstalls what was installed from the builds, then drops them; remove
//! does that for every build and drops the registered source too. All three go through
//! [`unbuild`], the one step that uninstalls records and drops builds; what each selects
//! is decided by [`Wanted`] and [`uninstall_selection`].

use std::path::{Path, PathBuf};

use super::{HookFailed, pick_version, prepare::evaluate_generic, run_hook};
use crate::error::{Error, Result};
use crate::install::{self, Uninstalled};
use crate::state::store::{CellKey, InstallRecord, Store};

/// A step of an uninstall or an unbuild, as it happens.
pub enum Event<'a> {
    /// Taken out of `root`, with `restored` displaced modules put back.
    Uninstalled {
        key: &'a CellKey,
        root: &'a Path,
        restored: usize,
    },
    /// The root no longer exists: the record of the install was dropped.
    RootGone { key: &'a CellKey, root: &'a Path },
    /// A build dropped from the store.
    Unbuilt(&'a CellKey),
    /// POST_REMOVE failed (the module is removed all the same).
    Hook(&'a HookFailed),
    /// A module version left the store.
    Removed { module: &'a str, version: &'a str },
}

/// Which cells of one module version an unbuild is about: every kernel and target, or the
/// ones named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub module: String,
    pub version: String,
    /// `None`: every kernel.
    pub kernel: Option<String>,
    /// `None`: every target.
    pub target: Option<String>,
}

impl Wanted {
    pub fn has(&self, key: &CellKey) -> bool {
        key.module == self.module
            && key.version == self.version
            && self.kernel.as_ref().is_none_or(|k| *k == key.release)
            && self.target.as_ref().is_none_or(|t| *t == key.target)
    }
}

/// Whether to run depmod after each of `records`, uninstalled in that order: after the
/// last one of each root (depmod reads the whole of a kernel's modules, so once is enough).
pub fn depmod_after(records: &[InstallRecord]) -> Vec<bool> {
    (0..records.len())
        .map(|i| !records[i + 1..].iter().any(|r| r.root == records[i].root))
        .collect()
}

/// The one way down: uninstall `installs` (depmod, when `depmod`, after the last one of
/// each root), then drop the builds `built` and the records of the failed builds `failed`.
/// The caller holds the store's lock.
pub fn unbuild(
    store: &Store,
    installs: Vec<InstallRecord>,
    built: &[CellKey],
    failed: &[CellKey],
    depmod: bool,
    pause: Option<&str>,
    on: &mut dyn FnMut(Event),
) -> Result<()> {
    let after = depmod_after(&installs);
    for (rec, last) in installs.into_iter().zip(after) {
        let key = rec.key();
        let root = rec.root.clone();
        let restored = rec.displaced.len();
        match install::uninstall(store, rec, depmod && last, pause)? {
            Uninstalled::Removed => on(Event::Uninstalled {
                key: &key,
                root: &root,
                restored,
            }),
            Uninstalled::RootGone => on(Event::RootGone {
                key: &key,
                root: &root,
            }),
        }
    }
    for key in built {
        store.delete_built(key)?;
        on(Event::Unbuilt(key));
    }
    for key in failed {
        store.clear_failed(key)?;
    }
    Ok(())
}

/// `kmx uninstall`, resolved.
#[derive(Debug, Clone)]
pub struct UninstallRequest {
    pub module: Option<String>,
    pub version: Option<String>,
    /// `None`: every kernel (of an image).
    pub kernel: Option<String>,
    pub target: Option<String>,
    /// The root, canonical (or absolute when it no longer exists).
    pub root: PathBuf,
    /// Every version (and no error when nothing matches).
    pub all: bool,
}

/// What `kmx uninstall` found to take out: nothing (with `--all`), or these records.
pub fn uninstall_selection(
    installs: Vec<InstallRecord>,
    req: &UninstallRequest,
) -> Result<Vec<InstallRecord>> {
    let found: Vec<InstallRecord> = installs
        .into_iter()
        .filter(|r| {
            req.module.as_ref().is_none_or(|m| *m == r.module)
                && req.version.as_ref().is_none_or(|v| *v == r.version)
                && req.kernel.as_ref().is_none_or(|k| *k == r.release)
                && req.target.as_ref().is_none_or(|t| *t == r.target)
        })
        .collect();
    let shown = match (&req.module, &req.version) {
        (Some(m), Some(v)) => format!("{m}/{v}"),
        (Some(m), None) => m.clone(),
        _ => "nothing kmx installed".to_string(),
    };
    let kernel_shown = req.kernel.as_deref().unwrap_or("any kernel");
    if found.is_empty() && !req.all {
        return Err(Error::usage(format!(
            "{shown} is not installed for {} {kernel_shown} in {}",
            req.target.as_deref().unwrap_or("any target"),
            req.root.display()
        ))
        .hint("`kmx status` lists what is installed where"));
    }
    let mut versions: Vec<&str> = found.iter().map(|r| r.version.as_str()).collect();
    versions.sort();
    versions.dedup();
    if versions.len() > 1 && !req.all {
        return Err(Error::usage(format!(
            "several versions of {shown} are installed there: {}",
            versions.join(", ")
        ))
        .hint("name one as MODULE/VERSION, or pass --all"));
    }
    Ok(found)
}

/// Take out of the root what `req` names; empty: nothing matched (with `--all`).
pub fn uninstall(
    store: &Store,
    req: &UninstallRequest,
    depmod: bool,
    pause: Option<&str>,
    wait: bool,
    on: &mut dyn FnMut(Event),
) -> Result<usize> {
    let _lock = store.lock(wait)?;
    let found = uninstall_selection(store.installs_in(&req.root)?, req)?;
    let n = found.len();
    unbuild(store, found, &[], &[], depmod, pause, on)?;
    Ok(n)
}

/// `kmx unbuild`, resolved.
#[derive(Debug, Clone)]
pub struct UnbuildRequest {
    pub module: String,
    /// `None`: the newest registered or built.
    pub version: Option<String>,
    /// `None`: every kernel (`--all`).
    pub kernel: Option<String>,
    pub target: Option<String>,
}

/// `kmx unbuild`: uninstall what was installed from the builds `req` names, then drop the
/// builds and the records of failed builds; the source stays registered. Nothing built is
/// an error.
pub fn unbuild_builds(
    store: &Store,
    req: &UnbuildRequest,
    depmod: bool,
    wait: bool,
    on: &mut dyn FnMut(Event),
) -> Result<()> {
    let _lock = store.lock(wait)?;
    let module = &req.module;
    let wanted = Wanted {
        module: module.clone(),
        version: pick_version(store, module, req.version.clone())?,
        kernel: req.kernel.clone(),
        target: req.target.clone(),
    };
    let built: Vec<CellKey> = store
        .built_all()?
        .into_iter()
        .map(|b| b.key())
        .filter(|k| wanted.has(k))
        .collect();
    let failed: Vec<CellKey> = store
        .failed_all()?
        .into_iter()
        .map(|f| f.key())
        .filter(|k| wanted.has(k))
        .collect();
    if built.is_empty() && failed.is_empty() {
        return Err(Error::usage(format!(
            "{module} {} is not built for {}{}",
            wanted.version,
            wanted.kernel.as_deref().unwrap_or("any kernel"),
            wanted
                .target
                .as_ref()
                .map(|t| format!(" ({t})"))
                .unwrap_or_default()
        ))
        .hint("`kmx status` lists its builds; pass --kernel RELEASE or --all"));
    }
    let installs = store
        .installs_all()?
        .into_iter()
        .filter(|r| wanted.has(&r.key()))
        .collect();
    unbuild(store, installs, &built, &failed, depmod, None, on)
}

/// `kmx remove`: uninstall every install of each version, run POST_REMOVE, and drop its
/// builds, failed builds and source. `versions`: the named one, else the registered ones
/// (several only with `all`).
pub fn remove(
    store: &Store,
    module: &str,
    version: Option<String>,
    all: bool,
    depmod: bool,
    wait: bool,
    on: &mut dyn FnMut(Event),
) -> Result<()> {
    let _lock = store.lock(wait)?;
    let versions = match version {
        Some(v) => vec![v],
        None => {
            let v = store.versions_of(module)?;
            if v.len() > 1 && !all {
                return Err(Error::usage(format!(
                    "several versions of {module} are registered: {}",
                    v.join(", ")
                ))
                .hint(format!("name one ({module}/VERSION) or pass --all")));
            }
            v
        }
    };
    if versions.is_empty() {
        return Err(Error::usage(format!("module `{module}` is not registered"))
            .hint("`kmx status` lists registered modules"));
    }
    let installs = store.installs_all()?;
    for v in &versions {
        let copy = store.source_copy(module, v);
        let known = copy.is_dir() || store.built().join(module).join(v).is_dir();
        if !known {
            return Err(Error::usage(format!("{module} {v} is not registered"))
                .hint("`kmx status` lists registered modules"));
        }
        let of_version = installs
            .iter()
            .filter(|r| r.module == module && r.version == *v)
            .cloned()
            .collect();
        unbuild(store, of_version, &[], &[], depmod, None, on)?;
        if copy.is_dir()
            && let Ok(spec) = evaluate_generic(
                &copy,
                Default::default(),
                &crate::config::manifest::Given::both(module, v),
            )
            && let Some(line) = &spec.post_remove
            && let Some(failed) = run_hook("POST_REMOVE", line, &copy)
        {
            on(Event::Hook(&failed));
        }
        for base in [store.built(), store.sources(), store.dir.join("failed")] {
            let dir = base.join(module).join(v);
            if dir.exists() {
                // Renamed first so a crash never leaves a half-deleted directory that looks live.
                let gone = base.join(module).join(format!(".removing-{v}"));
                let _ = std::fs::remove_dir_all(&gone);
                std::fs::rename(&dir, &gone).map_err(|e| Error::io("remove", &dir, e))?;
                std::fs::remove_dir_all(&gone).map_err(|e| Error::io("remove", &gone, e))?;
            }
            let _ = std::fs::remove_dir(base.join(module));
        }
        on(Event::Removed { module, version: v });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::store::InstallState;

    fn rec(root: &str, module: &str, version: &str, release: &str) -> InstallRecord {
        InstallRecord {
            root: root.into(),
            module: module.into(),
            version: version.into(),
            release: release.into(),
            target: "amd64".into(),
            state: InstallState::Installed,
            files: Vec::new(),
            displaced: Vec::new(),
            updated_at: 0,
        }
    }

    #[test]
    fn depmod_runs_once_a_root_after_its_last_uninstall() {
        let recs = [
            rec("/", "hello", "1.0", "a"),
            rec("/srv/img", "hello", "1.0", "a"),
            rec("/", "hello", "1.0", "b"),
            rec("/srv/img", "hello", "1.0", "b"),
            rec("/srv/other", "hello", "1.0", "a"),
        ];
        assert_eq!(depmod_after(&recs), [false, false, true, true, true]);
        assert!(depmod_after(&[]).is_empty());
    }

    #[test]
    fn an_unbuild_is_about_the_kernels_and_targets_named_of_one_version() {
        let w = Wanted {
            module: "hello".into(),
            version: "1.0".into(),
            kernel: Some("a".into()),
            target: None,
        };
        let key = |m: &str, v: &str, r: &str, t: &str| CellKey {
            module: m.into(),
            version: v.into(),
            release: r.into(),
            target: t.into(),
        };
        assert!(w.has(&key("hello", "1.0", "a", "amd64")));
        assert!(w.has(&key("hello", "1.0", "a", "i386")));
        assert!(!w.has(&key("hello", "1.0", "b", "amd64")));
        assert!(!w.has(&key("hello", "1.1", "a", "amd64")));
        assert!(!w.has(&key("vpoll", "1.0", "a", "amd64")));
        let every = Wanted {
            kernel: None,
            target: Some("i386".into()),
            ..w
        };
        assert!(every.has(&key("hello", "1.0", "b", "i386")));
        assert!(!every.has(&key("hello", "1.0", "b", "amd64")));
    }

    fn req(module: Option<&str>, version: Option<&str>, all: bool) -> UninstallRequest {
        UninstallRequest {
            module: module.map(str::to_string),
            version: version.map(str::to_string),
            kernel: Some("a".into()),
            target: None,
            root: "/".into(),
            all,
        }
    }

    #[test]
    fn uninstall_takes_out_the_one_version_installed_and_refuses_to_guess_between_two() {
        let installs = || {
            vec![
                rec("/", "hello", "1.0", "a"),
                rec("/", "hello", "2.0", "a"),
                rec("/", "hello", "2.0", "b"),
                rec("/", "vpoll", "1.0", "a"),
            ]
        };
        let found = uninstall_selection(installs(), &req(Some("hello"), Some("2.0"), false));
        let found: Vec<(String, String)> = found
            .unwrap()
            .into_iter()
            .map(|r| (r.version, r.release))
            .collect();
        assert_eq!(found, [("2.0".to_string(), "a".to_string())]);
        let e = uninstall_selection(installs(), &req(Some("hello"), None, false)).unwrap_err();
        assert_eq!(
            e.message,
            "several versions of hello are installed there: 1.0, 2.0"
        );
        // --all: both versions; and nothing matching is no error.
        let all = uninstall_selection(installs(), &req(Some("hello"), None, true)).unwrap();
        assert_eq!(all.len(), 2);
        assert!(
            uninstall_selection(installs(), &req(Some("nosuch"), None, true))
                .unwrap()
                .is_empty()
        );
        let e = uninstall_selection(installs(), &req(Some("nosuch"), None, false)).unwrap_err();
        assert_eq!(e.message, "nosuch is not installed for any target a in /");
    }
}

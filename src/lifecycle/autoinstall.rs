//! `autoinstall`: for a kernel, build and install the newest registered version of every
//! module whose dkms.conf says AUTOINSTALL=yes, and the binary-only builds (from tarballs)
//! made for it, as `dkms autoinstall` does on a kernel's installation. One module failing
//! does not stop the others. What it installs for a release is decided by
//! [`newest_versions`] and [`binary_only`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::prepare::{Prep, prepare, prepare_binary};
use super::{Env, KeyChoice, Run, choose_key, install_ready, interrupted, running_kernel};
use crate::error::{Error, Result};
use crate::install::{self, Installed, image};
use crate::matrix::pipeline::{Cell, Progress, SetupNote, setup_targets_in};
use crate::state::store::{BuiltRecord, CellKey, SourceRecord};

/// A step of an autoinstall, as it happens.
pub enum Event<'a> {
    /// The image has no kernel at all: nothing to do.
    NoKernel(&'a Path),
    /// What setting up the targets found (targets with no tree of the release are left
    /// out silently).
    Note(&'a SetupNote),
    /// No registered module has AUTOINSTALL=yes, and no binary-only build is for it.
    Nothing(&'a str),
    Key(&'a KeyChoice),
    Skipped {
        key: &'a CellKey,
        reason: &'a str,
    },
    AlreadyInstalled(&'a CellKey),
    Installed {
        key: &'a CellKey,
        installed: &'a Installed,
    },
    Failed {
        key: &'a CellKey,
        error: &'a Error,
    },
    /// One release done.
    Done(&'a Summary),
}

/// What an autoinstall did for one release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub release: String,
    pub root: PathBuf,
    /// Installed now or already.
    pub installed: usize,
    pub skipped: usize,
    pub failed: Vec<CellKey>,
}

/// What an autoinstall did: each release's summary, and whether a signal cut it short.
#[derive(Debug, Default)]
pub struct Outcome {
    pub releases: Vec<Summary>,
    pub interrupted: bool,
}

impl Outcome {
    pub fn failed(&self) -> bool {
        self.releases.iter().any(|s| !s.failed.is_empty())
    }
}

/// The kernels to autoinstall for: the one named; else `/`'s running kernel (as `dkms
/// autoinstall` with no -k), or every kernel an image has.
pub fn releases_for(root: &Path, kernel: Option<&str>) -> Result<Vec<String>> {
    Ok(match kernel {
        Some(k) => vec![k.to_string()],
        None if root == Path::new("/") => vec![running_kernel()?],
        None => image::releases(root),
    })
}

/// The newest registered version of each module, by module name.
pub fn newest_versions(sources: &[SourceRecord]) -> Vec<(String, String)> {
    let mut newest: BTreeMap<String, String> = BTreeMap::new();
    for s in sources {
        let keep = newest
            .get(&s.module)
            .is_none_or(|v| crate::config::manifest::compare_versions(&s.version, v).is_gt());
        if keep {
            newest.insert(s.module.clone(), s.version.clone());
        }
    }
    newest.into_iter().collect()
}

/// The binary-only builds (no registered source) with AUTOINSTALL for `release`, of modules
/// that `taken` does not already install.
pub fn binary_only<'a>(
    built: &'a [BuiltRecord],
    release: &str,
    registered: &dyn Fn(&BuiltRecord) -> Result<bool>,
    taken: &[CellKey],
) -> Result<Vec<&'a BuiltRecord>> {
    let mut out = Vec::new();
    for b in built {
        if b.release == release
            && b.autoinstall
            && !registered(b)?
            && !taken.iter().any(|k| k.module == b.module)
        {
            out.push(b);
        }
    }
    Ok(out)
}

/// Autoinstall into `root` for `kernel` (see [`releases_for`]).
pub fn autoinstall(
    env: Env,
    root: &Path,
    kernel: Option<&str>,
    run: &Run,
    progress: &mut dyn Progress,
    on: &mut dyn FnMut(Event),
) -> Result<Outcome> {
    let _lock = env.store.lock(run.wait)?;
    let releases = releases_for(root, kernel)?;
    let mut out = Outcome::default();
    if releases.is_empty() {
        on(Event::NoKernel(root));
        return Ok(out);
    }
    for release in &releases {
        if let Some(s) = for_release(env, root, release, run, progress, on)? {
            on(Event::Done(&s));
            out.releases.push(s);
        }
        if interrupted() {
            out.interrupted = true;
            break;
        }
    }
    Ok(out)
}

/// One release; `None`: nothing to install for it.
fn for_release(
    env: Env,
    root: &Path,
    release: &String,
    run: &Run,
    progress: &mut dyn Progress,
    on: &mut dyn FnMut(Event),
) -> Result<Option<Summary>> {
    let store = env.store;
    let newest = newest_versions(&store.sources_all()?);
    let mut results: Vec<(CellKey, Result<Prep>)> = Vec::new();
    if !newest.is_empty() {
        let mut notes = Vec::new();
        let targets = setup_targets_in(
            env.profiles,
            env.home,
            &[],
            std::slice::from_ref(release),
            root,
            &mut notes,
        )?;
        // Targets with no tree of this release (or none at all) are not news here.
        for n in notes.iter().filter(|n| !n.is_missing_tree()) {
            on(Event::Note(n));
        }
        let want = |c: &Cell| c.spec.autoinstall && c.tree.release == *release;
        results = prepare(
            store,
            &newest,
            &targets,
            &want,
            &run.build_options(env.home),
            progress,
        );
    }
    let built = store.built_all()?;
    let taken: Vec<CellKey> = results.iter().map(|(k, _)| k.clone()).collect();
    let registered = |b: &BuiltRecord| Ok(store.load_source(&b.module, &b.version)?.is_some());
    for b in binary_only(&built, release, &registered, &taken)? {
        results.push((
            b.key(),
            prepare_binary(env.profiles, env.home, store, &b.key()),
        ));
    }
    if results.is_empty() {
        on(Event::Nothing(release));
        return Ok(None);
    }
    let sign = choose_key(env.home, root, &run.sign, &results, &mut |k| {
        on(Event::Key(k))
    });
    let mut s = Summary {
        release: release.clone(),
        root: root.to_path_buf(),
        installed: 0,
        skipped: 0,
        failed: Vec::new(),
    };
    for (key, prep) in results {
        let outcome = match prep {
            Ok(Prep::Skipped(reason)) => {
                s.skipped += 1;
                on(Event::Skipped {
                    key: &key,
                    reason: &reason,
                });
                continue;
            }
            Ok(Prep::Ready(ready)) if install::is_installed(store, root, &ready.record) => {
                s.installed += 1;
                on(Event::AlreadyInstalled(&key));
                continue;
            }
            Ok(Prep::Ready(ready)) => install_ready(store, root, &ready, run, &sign),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(inst) => {
                s.installed += 1;
                on(Event::Installed {
                    key: &key,
                    installed: &inst,
                });
            }
            Err(e) => {
                on(Event::Failed {
                    key: &key,
                    error: &e,
                });
                s.failed.push(key);
            }
        }
    }
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(module: &str, version: &str) -> SourceRecord {
        SourceRecord {
            module: module.into(),
            version: version.into(),
            origin: PathBuf::from("/usr/src"),
            hash: String::new(),
            added_at: 0,
        }
    }

    #[test]
    fn each_module_s_newest_registered_version_is_the_one_installed() {
        let sources = [
            source("hello", "1.9"),
            source("vpoll", "0.1"),
            source("hello", "1.10"),
            source("hello", "1.2"),
        ];
        assert_eq!(
            newest_versions(&sources),
            [
                ("hello".to_string(), "1.10".to_string()),
                ("vpoll".to_string(), "0.1".to_string())
            ]
        );
        assert!(newest_versions(&[]).is_empty());
    }

    fn built(module: &str, release: &str, autoinstall: bool) -> BuiltRecord {
        crate::lifecycle::built_fixture(module, "1.0", release, "amd64", autoinstall)
    }

    #[test]
    fn a_binary_only_build_is_autoinstalled_for_its_own_release_unless_a_source_covers_it() {
        let builds = [
            built("tarred", "6.1.0-57-amd64", true),
            built("tarred", "6.1.0-50-amd64", true),
            built("manual", "6.1.0-57-amd64", false),
            built("hello", "6.1.0-57-amd64", true),
            built("vpoll", "6.1.0-57-amd64", true),
        ];
        // hello has a registered source; vpoll's module is already being installed.
        let registered = |b: &BuiltRecord| Ok(b.module == "hello");
        let taken = [CellKey {
            module: "vpoll".into(),
            version: "2.0".into(),
            release: "6.1.0-57-amd64".into(),
            target: "amd64".into(),
        }];
        let picked = binary_only(&builds, "6.1.0-57-amd64", &registered, &taken).unwrap();
        let names: Vec<(&str, &str)> = picked
            .iter()
            .map(|b| (b.module.as_str(), b.release.as_str()))
            .collect();
        assert_eq!(names, [("tarred", "6.1.0-57-amd64")]);
    }
}

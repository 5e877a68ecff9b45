//! `package`, `tarball` and `load-tarball`: built cells out of the store (as Debian
//! packages, their modules prepared exactly as `install` prepares them, or as one tarball
//! another machine loads) and back in. What is exported is decided by [`select_built`];
//! every package is checked ([`plan`]) before the first is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Env;
use super::prepare::{Prep, prepare_binary};
use crate::error::{Error, Result};
use crate::install::{self, SignKey};
use crate::state::store::{BuiltRecord, CellKey, Store};

/// Which built cells to export: MODULE[/VERSION] (`None`: every module), targets and
/// kernel releases (empty: all).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub module: Option<(String, Option<String>)>,
    pub targets: Vec<String>,
    pub kernels: Vec<String>,
}

impl Selection {
    pub fn has(&self, b: &BuiltRecord) -> bool {
        self.module
            .as_ref()
            .is_none_or(|(m, v)| b.module == *m && v.as_ref().is_none_or(|v| *v == b.version))
            && (self.targets.is_empty() || self.targets.contains(&b.target))
            && (self.kernels.is_empty() || self.kernels.contains(&b.release))
    }
}

/// The built cells in the store that `sel` names. None is an error, which says whether the
/// module is registered at all.
pub fn select_built(store: &Store, sel: &Selection) -> Result<Vec<BuiltRecord>> {
    let cells: Vec<BuiltRecord> = store
        .built_all()?
        .into_iter()
        .filter(|b| sel.has(b))
        .collect();
    if cells.is_empty() {
        if let Some((m, v)) = &sel.module {
            let versions = store.versions_of(m)?;
            let known = match v {
                Some(v) => versions.contains(v),
                None => !versions.is_empty(),
            };
            if !known {
                let what = v.as_ref().map_or(m.clone(), |v| format!("{m} {v}"));
                return Err(
                    Error::usage(format!("module `{what}` is not registered")).hint(
                        "`kmx status` lists registered modules; register one with `kmx add DIR`",
                    ),
                );
            }
        }
        return Err(Error::usage("nothing built matches; nothing to export")
            .hint("`kmx status` lists what is built; `kmx install` builds"));
    }
    Ok(cells)
}

/// `kmx package --format deb`, resolved.
#[derive(Debug, Clone)]
pub struct DebRequest {
    pub selection: Selection,
    /// The Debian architecture of every package; `None`: each target's `[debian] arch`.
    pub arch: Option<String>,
    /// `Depends:`, `{release}` standing for the cell's kernel release.
    pub depends: String,
    pub maintainer: String,
    pub output: PathBuf,
    pub sign: Option<SignKey>,
}

/// One package to write: the cell, and its Debian architecture.
pub struct Planned<'a> {
    pub cell: &'a BuiltRecord,
    pub arch: String,
}

/// Every package checked before the first is written: a Debian architecture for every
/// target (`arch`, or `arch_of` the cell's), names and versions Debian accepts, and no two
/// cells making the same package.
pub fn plan<'a>(
    cells: &'a [BuiltRecord],
    arch: Option<&str>,
    arch_of: &dyn Fn(&BuiltRecord) -> Result<String>,
) -> Result<Vec<Planned<'a>>> {
    let mut plan = Vec::new();
    let mut names: BTreeMap<String, CellKey> = BTreeMap::new();
    for c in cells {
        let arch = match arch {
            Some(arch) => install::deb::check_arch(arch)?,
            None => arch_of(c)?,
        };
        let deb = install::deb::package_name(&c.module, &c.release)?;
        let version = install::deb::check_version(&c.module, &c.version)?;
        let file = install::deb::file_name(&deb, &version, &arch);
        if let Some(other) = names.insert(file.clone(), c.key()) {
            return Err(
                Error::usage(format!("{} and {} would both be {file}", other, c.key()))
                    .hint("package one of them at a time (-t TARGET)"),
            );
        }
        plan.push(Planned { cell: c, arch });
    }
    Ok(plan)
}

/// The Debian architecture of the target `c` was built for: its profile's `[debian] arch`.
pub fn debian_arch(profiles: &crate::config::Profiles, c: &BuiltRecord) -> Result<String> {
    let profile = profiles
        .target(&c.target)
        .map_err(|e| e.caused_by(format!("{} was built for target `{}`", c.key(), c.target)))?;
    profile
        .debian
        .as_ref()
        .map(|d| d.arch.clone())
        .ok_or_else(|| {
            Error::config(
                &profile.file,
                format!(
                    "target `{}` has no [debian] table, so kmx does not know its Debian architecture",
                    c.target
                ),
            )
            .hint("pass --arch (the dpkg architecture, e.g. --arch arm64), or add `[debian]` with `arch` and the kernel `flavour` to the profile")
        })
}

/// Write one Debian package per selected cell into `req.output`, each handed to `on` as it
/// is written; the number of packages planned is returned.
pub fn debs(
    env: Env,
    req: &DebRequest,
    on: &mut dyn FnMut(&BuiltRecord, &install::deb::Written),
) -> Result<usize> {
    let cells = select_built(env.store, &req.selection)?;
    let planned = plan(&cells, req.arch.as_deref(), &|c| {
        debian_arch(env.profiles, c)
    })?;
    std::fs::create_dir_all(&req.output)
        .map_err(|e| Error::io("create directory", &req.output, e))?;
    for Planned { cell: c, arch } in &planned {
        let Prep::Ready(ready) = prepare_binary(env.profiles, env.home, env.store, &c.key())?
        else {
            continue;
        };
        let opts = install::Options {
            sign: req.sign.clone(),
            sign_file: ready.sign_file.clone(),
            ..install::Options::default()
        };
        let meta = install::deb::Meta {
            arch: arch.clone(),
            depends: req.depends.replace("{release}", &c.release),
            maintainer: req.maintainer.clone(),
        };
        let w = install::deb::write(&ready.record, &ready.cell_dir, &opts, &meta, &req.output)?;
        on(c, &w);
    }
    Ok(planned.len())
}

/// `kmx tarball`: the selected cells into `output`; the cells and the number of files.
pub fn tarball(store: &Store, sel: &Selection, output: &Path) -> Result<(Vec<BuiltRecord>, usize)> {
    let cells = select_built(store, sel)?;
    let n = install::tarball::create(store, &cells, output)?;
    Ok((cells, n))
}

/// `kmx load-tarball`: the cells of `file` into the store.
pub fn load_tarball(store: &Store, file: &Path, wait: bool) -> Result<Vec<BuiltRecord>> {
    let _lock = store.lock(wait)?;
    install::tarball::load(store, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(module: &str, version: &str, release: &str, target: &str) -> BuiltRecord {
        crate::lifecycle::built_fixture(module, version, release, target, true)
    }

    #[test]
    fn a_selection_names_module_version_targets_and_kernels() {
        let sel = Selection {
            module: Some(("hello".into(), None)),
            targets: vec!["amd64".into()],
            kernels: vec![],
        };
        assert!(sel.has(&built("hello", "1.0", "a", "amd64")));
        assert!(!sel.has(&built("hello", "1.0", "a", "arm64")));
        assert!(!sel.has(&built("vpoll", "1.0", "a", "amd64")));
        let one = Selection {
            module: Some(("hello".into(), Some("2.0".into()))),
            kernels: vec!["b".into()],
            ..Selection::default()
        };
        assert!(one.has(&built("hello", "2.0", "b", "arm64")));
        assert!(!one.has(&built("hello", "1.0", "b", "arm64")));
        assert!(!one.has(&built("hello", "2.0", "a", "arm64")));
        assert!(Selection::default().has(&built("x", "1", "r", "t")));
    }

    #[test]
    fn two_cells_that_would_make_the_same_package_are_refused_before_any_is_written() {
        // rpi3 and arm64 both build for 6.1.0-50-arm64, both arm64 to Debian.
        let cells = [
            built("hello", "1.0", "6.1.0-50-arm64", "arm64"),
            built("hello", "1.0", "6.1.0-50-arm64", "rpi3"),
        ];
        let arm64 = |_: &BuiltRecord| Ok("arm64".to_string());
        let e = plan(&cells, None, &arm64).err().expect("a clash");
        assert_eq!(
            e.message,
            "hello 1.0 arm64 6.1.0-50-arm64 and hello 1.0 rpi3 6.1.0-50-arm64 would both be hello-modules-6.1.0-50-arm64_1.0_arm64.deb"
        );
        // Each on its own is fine, and --arch overrides the targets'.
        let p = plan(&cells[..1], Some("amd64"), &arm64).unwrap();
        assert_eq!(p[0].arch, "amd64");
        // A target without an architecture is an error of its own.
        let none = |_: &BuiltRecord| Err(Error::usage("no [debian] table"));
        assert!(plan(&cells[..1], None, &none).is_err());
    }
}

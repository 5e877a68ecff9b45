//! The list of kernel trees kmx fetched (`$KMX_HOME/trees/registry.json`): which target each
//! tree is for and where it came from. Written atomically; an unreadable registry is an
//! error naming the file, never silently replaced.
//!
//! Paths under the trees directory are stored relative to it, so a home that is moved or
//! copied keeps a valid registry. Absolute paths (registries written before that, or trees
//! elsewhere) are kept; one that no longer exists but names a `trees/` directory is looked
//! for under this home's.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::load::Profiles;
use crate::error::{Error, Result};
use crate::kernel::installed;
use crate::kernel::tree::KernelTree;
use crate::state::{Home, write_atomic};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisteredTree {
    pub target: String,
    pub release: String,
    pub kdir: PathBuf,
    /// Where the tree came from, e.g. `debian bookworm linux-headers-6.1.0-50-arm64 6.1.176-1`.
    pub origin: String,
    /// The source it was fetched from (`debian bookworm-backports`), for `kernels prune`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The source's kernel ABI (`6.12.95+deb12`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abi: Option<String>,
    /// What `kmx smoke` boots to load modules built against this tree, when fetched with
    /// `kmx kernels fetch --with-image`. Absent in registries written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootFiles>,
    /// A kernel installed on the machine or in an image root (`lib/modules/<release>/build`),
    /// found when the registry is read ([`Registry::add_installed`]), never stored.
    #[serde(skip)]
    pub installed: bool,
}

/// The distribution kernel matching a tree, and the guest userland to boot it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootFiles {
    /// The kernel image (`boot/vmlinuz-<release>`).
    pub image: PathBuf,
    /// The kernel's own module tree (`lib/modules/<release>`, with `modules.dep`).
    pub modules_dir: PathBuf,
    /// A static busybox for the target's architecture: the guest's only program.
    pub busybox: PathBuf,
    /// The image package's device trees (ARM), which `[boot] dtb` names a file of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtbs: Option<PathBuf>,
}

impl RegisteredTree {
    /// Every path of the entry, to rebase or relativize them together.
    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        let mut v = vec![&mut self.kdir];
        if let Some(b) = &mut self.boot {
            v.push(&mut b.image);
            v.push(&mut b.modules_dir);
            v.push(&mut b.busybox);
            if let Some(d) = &mut b.dtbs {
                v.push(d);
            }
        }
        v
    }
}

/// A stored path made absolute: relative ones are under `trees`; an absolute one that is
/// gone but lies in some `.../trees/` directory (a moved home) is taken from `trees`.
fn absolute(trees: &Path, p: &Path) -> PathBuf {
    if p.is_relative() {
        return trees.join(p);
    }
    if p.exists() {
        return p.to_path_buf();
    }
    let parts: Vec<_> = p.components().collect();
    if let Some(i) = parts.iter().rposition(|c| c.as_os_str() == "trees") {
        let rest: PathBuf = parts[i + 1..].iter().collect();
        let moved = trees.join(&rest);
        if !rest.as_os_str().is_empty() && moved.exists() {
            return moved;
        }
    }
    p.to_path_buf()
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub trees: Vec<RegisteredTree>,
}

impl Registry {
    pub fn load(home: &Home) -> Result<Registry> {
        let path = home.registry();
        let mut registry: Registry = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::config(&path, format!("cannot parse the tree registry: {e}")).hint(
                    "fix or delete the file, then run `kmx kernels fetch` again to re-register trees",
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Registry::default(),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let trees = home.trees();
        for t in &mut registry.trees {
            for p in t.paths_mut() {
                *p = absolute(&trees, p);
            }
        }
        Ok(registry)
    }

    pub fn save(&self, home: &Home) -> Result<()> {
        let trees = home.trees();
        let mut stored = Registry {
            trees: self
                .trees
                .iter()
                .filter(|t| !t.installed)
                .cloned()
                .collect(),
        };
        for t in &mut stored.trees {
            for p in t.paths_mut() {
                if let Ok(rel) = p.strip_prefix(&trees) {
                    *p = rel.to_path_buf();
                }
            }
        }
        let mut text = serde_json::to_string_pretty(&stored)
            .map_err(|e| Error::env(format!("cannot serialize the tree registry: {e}")))?;
        text.push('\n');
        write_atomic(&home.registry(), text.as_bytes())
    }

    /// Add or replace the entry for (target, kdir). Returns false if it was already there
    /// unchanged.
    pub fn register(&mut self, tree: RegisteredTree) -> bool {
        if let Some(existing) = self
            .trees
            .iter_mut()
            .find(|t| t.target == tree.target && t.kdir == tree.kdir)
        {
            if *existing == tree {
                return false;
            }
            *existing = tree;
        } else {
            self.trees.push(tree);
        }
        self.trees
            .sort_by(|a, b| (&a.target, &a.release).cmp(&(&b.target, &b.release)));
        true
    }

    /// Remove the entries `drop` selects; returns them.
    pub fn unregister(&mut self, drop: impl Fn(&RegisteredTree) -> bool) -> Vec<RegisteredTree> {
        let (gone, kept) = std::mem::take(&mut self.trees).into_iter().partition(drop);
        self.trees = kept;
        gone
    }

    /// Add the kernels installed in `root` (`/` for this machine) as trees of the target of
    /// their architecture ([`installed::target_for`]). A kernel without headers is added
    /// too, with its `build` link as the tree: `kmx doctor` then names the package to
    /// install. Such entries are never saved.
    pub fn add_installed(&mut self, profiles: &Profiles, root: &Path) {
        for k in installed::kernels(root) {
            let origin = k.origin(root);
            let tree = k.kdir.as_deref().and_then(|d| KernelTree::inspect(d).ok());
            let target = match &tree {
                Some(t) => installed::target_for(profiles, t),
                None => installed::target_by_name(profiles, root, &k.release),
            };
            let Some(target) = target else { continue };
            if self.trees.iter().any(|t| Some(&t.kdir) == k.kdir.as_ref()) {
                continue;
            }
            self.trees.push(RegisteredTree {
                target: target.name.clone(),
                release: k.release.clone(),
                kdir: k.kdir.clone().unwrap_or(k.build_link.clone()),
                origin,
                source: Some("installed".into()),
                abi: None,
                boot: None,
                installed: true,
            });
        }
    }

    pub fn for_target<'a>(&'a self, target: &'a str) -> impl Iterator<Item = &'a RegisteredTree> {
        self.trees.iter().filter(move |t| t.target == target)
    }
}

#[derive(Debug, serde::Serialize)]
pub struct TreeHealth {
    pub kdir: PathBuf,
    pub origin: String,
    pub release: Option<String>,
    pub vermagic: Option<String>,
    pub module_symvers: bool,
    pub error: Option<crate::error::Problem>,
}

/// Inspect a tree `target` points at and check that it can build for it: its host tools
/// run here and its architecture is the target's.
pub fn usable_tree(kdir: &Path, target: &crate::config::Target) -> Result<KernelTree> {
    let tree = KernelTree::inspect(kdir)?;
    tree.check_host_tools()?;
    tree.check_arch(target)?;
    Ok(tree)
}

/// [`usable_tree`] for a kernel installed on the machine: missing headers are named by
/// their Debian package (DKMS only says "headers ... cannot be found").
pub fn installed_tree(
    kdir: &Path,
    release: &str,
    target: &crate::config::Target,
) -> Result<KernelTree> {
    if !kdir.is_dir() {
        return Err(Error::env(format!(
            "the headers of the installed kernel {release} are not installed"
        ))
        .at(kdir)
        .hint(format!("apt-get install linux-headers-{release}")));
    }
    let tree = usable_tree(kdir, target)?;
    if tree.release != release {
        return Err(Error::env(format!(
            "is the tree of kernel {}, not of {release} it is installed for",
            tree.release
        ))
        .at(kdir)
        .hint(format!(
            "apt-get install --reinstall linux-headers-{release}"
        )));
    }
    if tree.config.builtin("CONFIG_MODVERSIONS") && tree.symvers.is_none() {
        return Err(Error::env("the tree has no Module.symvers")
            .at(kdir)
            .hint(format!(
                "apt-get install --reinstall linux-headers-{release}"
            )));
    }
    Ok(tree)
}

/// How one tree a target points at is: its health, and the tree when it is usable.
pub fn tree_health(r: TreeRef, target: &crate::config::Target) -> (TreeHealth, Option<KernelTree>) {
    // A MODVERSIONS tree without Module.symvers builds modules the kernel refuses: a
    // problem for doctor to name (a build still runs and its check fails the cell).
    let checked = match &r.installed {
        Some(release) => installed_tree(&r.kdir, release, target),
        None => usable_tree(&r.kdir, target),
    };
    match checked.and_then(|t| t.check_modversions().map(|_| t)) {
        Ok(t) => (
            TreeHealth {
                kdir: r.kdir,
                origin: r.origin,
                release: Some(t.release.clone()),
                vermagic: Some(t.vermagic.to_string()),
                module_symvers: t.symvers.is_some(),
                error: None,
            },
            Some(t),
        ),
        Err(e) => (
            TreeHealth {
                kdir: r.kdir,
                origin: r.origin,
                // An installed kernel's release is known even when its tree is unusable.
                release: r.installed,
                vermagic: None,
                module_symvers: false,
                error: Some((&e).into()),
            },
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_without_boot_files_still_reads_and_writes_unchanged() {
        let old = r#"{"trees":[{"target":"amd64","release":"6.1.0-50-amd64","kdir":"/t/k","origin":"debian x"}]}"#;
        let reg: Registry = serde_json::from_str(old).unwrap();
        assert_eq!(reg.trees[0].boot, None);
        let again = serde_json::to_string(&reg).unwrap();
        assert_eq!(again, old);
    }

    #[test]
    fn paths_are_stored_relative_and_survive_a_moved_home() {
        let dir = tempfile::tempdir().unwrap();
        let a = Home {
            root: dir.path().join("a"),
        };
        let kdir = a
            .trees()
            .join("debian-6.1.0-50/usr/src/linux-headers-6.1.0-50-arm64");
        std::fs::create_dir_all(&kdir).unwrap();
        let mut reg = Registry::default();
        reg.register(RegisteredTree {
            target: "arm64".into(),
            release: "6.1.0-50-arm64".into(),
            kdir: kdir.clone(),
            origin: "debian bookworm".into(),
            source: Some("debian bookworm".into()),
            abi: Some("6.1.0-50".into()),
            boot: None,
            installed: false,
        });
        reg.save(&a).unwrap();
        let text = std::fs::read_to_string(a.registry()).unwrap();
        assert!(
            text.contains("\"kdir\": \"debian-6.1.0-50/usr/src/linux-headers-6.1.0-50-arm64\""),
            "{text}"
        );
        assert_eq!(Registry::load(&a).unwrap().trees[0].kdir, kdir);
        // Moved: the relative path follows the home.
        std::fs::rename(dir.path().join("a"), dir.path().join("b")).unwrap();
        let b = Home {
            root: dir.path().join("b"),
        };
        let moved = Registry::load(&b).unwrap();
        assert_eq!(
            moved.trees[0].kdir,
            b.trees()
                .join("debian-6.1.0-50/usr/src/linux-headers-6.1.0-50-arm64")
        );
        // An old registry with absolute paths into the old home's trees/ is rebased too.
        let old = format!(
            r#"{{"trees":[{{"target":"arm64","release":"r","kdir":"{}","origin":"o"}}]}}"#,
            kdir.display()
        );
        std::fs::write(b.registry(), old).unwrap();
        assert_eq!(
            Registry::load(&b).unwrap().trees[0].kdir,
            b.trees()
                .join("debian-6.1.0-50/usr/src/linux-headers-6.1.0-50-arm64")
        );
    }
}

/// A kernel tree a target points at, before inspection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TreeRef {
    pub kdir: PathBuf,
    /// `fetched: <origin>`, `installed: /lib/modules/<release>/build`, or the profile file
    /// that names the path.
    pub origin: String,
    /// The release of a kernel installed on the machine (or image): such a tree is built
    /// for only when asked for by release, and its missing headers are named by package.
    #[serde(skip)]
    pub installed: Option<String>,
}

/// Every tree a target profile points at: the fetched ones (when `[kernels] fetched = true`)
/// and its `paths` (globs expanded, `~` is the home directory), in that order, without
/// duplicates. A glob that matches nothing contributes nothing; a plain path is kept even
/// if it does not exist, so the user is told about it.
pub fn trees_of(target: &crate::config::Target, registry: &Registry) -> Vec<TreeRef> {
    let mut out: Vec<TreeRef> = Vec::new();
    for t in registry.for_target(&target.name) {
        if t.installed {
            out.push(TreeRef {
                kdir: t.kdir.clone(),
                origin: t.origin.clone(),
                installed: Some(t.release.clone()),
            });
        } else if target.fetched_kernels {
            out.push(TreeRef {
                kdir: t.kdir.clone(),
                origin: format!("fetched: {}", t.origin),
                installed: None,
            });
        }
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    for pattern in &target.kernel_paths {
        let expanded = match (pattern.strip_prefix("~/"), &home) {
            (Some(rest), Some(h)) => h.join(rest).to_string_lossy().into_owned(),
            _ => pattern.clone(),
        };
        let origin = format!("{}: paths", target.file.display());
        let is_glob = expanded.contains(['*', '?', '[']);
        let matches: Vec<PathBuf> = if is_glob {
            glob::glob(&expanded)
                .map(|paths| {
                    let mut v: Vec<PathBuf> = paths.filter_map(|p| p.ok()).collect();
                    v.sort();
                    v
                })
                .unwrap_or_default()
        } else {
            vec![PathBuf::from(&expanded)]
        };
        for kdir in matches {
            if !out.iter().any(|r| r.kdir == kdir) {
                out.push(TreeRef {
                    kdir,
                    origin: origin.clone(),
                    installed: None,
                });
            }
        }
    }
    out
}

//! The kernels installed on a machine (or in an image root) as build trees: every
//! `ROOT/lib/modules/<release>` with its `build` link (`/usr/src/linux-headers-<release>` on
//! Debian), as DKMS finds them. kmx uses them as it uses fetched trees, without fetching,
//! for the target of the tree's own architecture.
//!
//! Links in an image root are resolved inside that root (`/usr/src/...` is
//! `ROOT/usr/src/...`), never on the host. This module only reads the root; it never
//! installs headers (it says which package has them).

use std::path::{Component, Path, PathBuf};

use crate::config::Target;
use crate::config::load::{DEFAULT_TARGETS, Profiles};
use crate::kernel::tree::KernelTree;

/// A kernel release found under `ROOT/lib/modules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledKernel {
    pub release: String,
    /// `ROOT/lib/modules/<release>/build` as DKMS names it (the link itself).
    pub build_link: PathBuf,
    /// The tree, resolved inside the root: the link's target, else
    /// `ROOT/usr/src/linux-headers-<release>`; `None` when the headers are not installed.
    pub kdir: Option<PathBuf>,
}

impl InstalledKernel {
    /// The Debian package that installs this kernel's headers.
    pub fn headers_package(&self) -> String {
        format!("linux-headers-{}", self.release)
    }

    /// `installed: /lib/modules/<release>/build` (the path as it is inside the root).
    pub fn origin(&self, root: &Path) -> String {
        let inside = self
            .build_link
            .strip_prefix(root)
            .unwrap_or(&self.build_link);
        format!("installed: /{}", inside.display())
    }
}

/// Resolve `path` (as seen inside `root`) to a path on the host, following symbolic links
/// inside the root: an absolute link target is taken relative to `root`, `..` never leaves
/// it. With `root` = `/` this is plain resolution. `None` when a part does not exist or
/// after 40 links (a loop), as the kernel gives up.
pub fn resolve_in_root(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut todo: Vec<PathBuf> = path
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut done = PathBuf::new(); // relative to root
    let mut links = 0;
    while let Some(part) = todo.pop() {
        match Path::new(&part).components().next() {
            None | Some(Component::CurDir) => {}
            Some(Component::RootDir | Component::Prefix(_)) => done = PathBuf::new(),
            Some(Component::ParentDir) => {
                done.pop();
            }
            Some(Component::Normal(_)) => {
                let next = done.join(&part);
                let meta = std::fs::symlink_metadata(root.join(&next)).ok()?;
                if !meta.file_type().is_symlink() {
                    done = next;
                    continue;
                }
                links += 1;
                if links > 40 {
                    return None;
                }
                let target = std::fs::read_link(root.join(&next)).ok()?;
                todo.extend(
                    target
                        .components()
                        .rev()
                        .map(|c| PathBuf::from(c.as_os_str())),
                );
            }
        }
    }
    Some(root.join(done))
}

/// Every kernel under `ROOT/lib/modules` (directories only), sorted by release.
pub fn kernels(root: &Path) -> Vec<InstalledKernel> {
    let dir = root.join("lib/modules");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<InstalledKernel> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .map(|release| {
            let build_link = dir.join(&release).join("build");
            let inside = Path::new("/lib/modules").join(&release).join("build");
            let headers = Path::new("/usr/src").join(format!("linux-headers-{release}"));
            let kdir = [inside, headers]
                .iter()
                .filter_map(|p| resolve_in_root(root, p))
                .find(|p| p.is_dir());
            InstalledKernel {
                release,
                build_link,
                kdir,
            }
        })
        .collect();
    out.sort_by(|a, b| a.release.cmp(&b.release));
    out
}

/// The target an installed tree builds for: a target whose architecture the tree is for
/// (ARCH and word size), preferring the one whose Debian flavour ends the release
/// (`armmp` in `6.1.0-57-armmp`), then the default targets, then the rest by name.
pub fn target_for<'a>(profiles: &'a Profiles, tree: &KernelTree) -> Option<&'a Target> {
    let fits: Vec<&Target> = profiles
        .targets
        .values()
        .filter(|t| tree.check_arch(t).is_ok())
        .collect();
    let flavour_matches = |t: &&&Target| {
        t.debian
            .as_ref()
            .is_some_and(|d| tree.release.ends_with(&format!("-{}", d.flavour)))
    };
    let default = |t: &&&Target| DEFAULT_TARGETS.contains(&t.name.as_str());
    fits.iter()
        .find(|t| flavour_matches(t) && default(t))
        .or_else(|| fits.iter().find(flavour_matches))
        .or_else(|| fits.iter().find(default))
        .or_else(|| fits.first())
        .copied()
}

/// The target of an installed kernel whose tree cannot be read (headers missing): the
/// default target whose Debian flavour ends the release, else, on this machine (`root` =
/// `/`), the default target of the machine's Debian architecture.
pub fn target_by_name<'a>(
    profiles: &'a Profiles,
    root: &Path,
    release: &str,
) -> Option<&'a Target> {
    let defaults = || {
        DEFAULT_TARGETS
            .iter()
            .filter_map(|n| profiles.targets.get(*n))
    };
    defaults()
        .find(|t| {
            t.debian
                .as_ref()
                .is_some_and(|d| release.ends_with(&format!("-{}", d.flavour)))
        })
        .or_else(|| {
            (root == Path::new("/")).then_some(())?;
            let host = crate::kernel::apt::host_debian_arch();
            defaults().find(|t| t.debian.as_ref().is_some_and(|d| d.arch == host))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_resolve_inside_the_root_not_on_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let kdir = root.join("usr/src/linux-headers-6.1.0-57-amd64");
        std::fs::create_dir_all(&kdir).unwrap();
        std::fs::create_dir_all(root.join("lib/modules/6.1.0-57-amd64")).unwrap();
        // Debian's absolute link: /usr/src/... is the root's, not the host's.
        symlink(
            "/usr/src/linux-headers-6.1.0-57-amd64",
            root.join("lib/modules/6.1.0-57-amd64/build"),
        )
        .unwrap();
        // A kernel whose headers are not installed: a dangling link.
        std::fs::create_dir_all(root.join("lib/modules/6.1.0-50-amd64")).unwrap();
        symlink(
            "/usr/src/linux-headers-6.1.0-50-amd64",
            root.join("lib/modules/6.1.0-50-amd64/build"),
        )
        .unwrap();
        // `..` past the root stays in the root.
        assert_eq!(
            resolve_in_root(root, Path::new("/../../usr/src")),
            Some(root.join("usr/src"))
        );
        let found = kernels(root);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].release, "6.1.0-50-amd64");
        assert_eq!(found[0].kdir, None);
        assert_eq!(found[0].headers_package(), "linux-headers-6.1.0-50-amd64");
        assert_eq!(found[1].kdir, Some(kdir));
        assert_eq!(
            found[1].origin(root),
            "installed: /lib/modules/6.1.0-57-amd64/build"
        );
    }

    #[test]
    fn relative_links_and_link_chains_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/src/real")).unwrap();
        symlink("real", root.join("usr/src/alias")).unwrap();
        symlink("/usr/src/alias", root.join("usr/src/abs")).unwrap();
        std::fs::create_dir_all(root.join("lib/modules/r")).unwrap();
        symlink("../../../usr/src/abs", root.join("lib/modules/r/build")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/lib/modules/r/build")),
            Some(root.join("usr/src/real"))
        );
        // A loop ends.
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        assert_eq!(resolve_in_root(root, Path::new("/loop1")), None);
    }
}

//! Toolchain roots: the compiler a kernel tree was built with, when this machine lacks it
//! (Debian 13's trees call `gcc-14`; a Debian 12 host has gcc-12 only), assembled from the
//! tree's own distribution and used as the root of the build step's view ([`crate::sandbox`]).
//!
//! A root holds one compiler (`x86_64-linux-gnu-gcc-14`, `aarch64-linux-gnu-gcc-14`, ...)
//! with its binutils, make, a shell and the core utilities, and the tree's `linux-kbuild`
//! package (the tree's host tools are linked against that distribution's C library, which
//! the root provides). The packages and their whole dependency closure come from the
//! suite's archive through kmx's private apt state ([`super::apt`]: `apt-get install
//! --download-only` against an empty dpkg status resolves the closure) and are unpacked with
//! `dpkg-deb -x`: no maintainer script runs, nothing needs root, nothing is installed into
//! the host. Roots live in `$KMX_HOME/toolchains/<source>-<codename>/<compiler>/`, are
//! shared by every tree of that distribution, and are renamed into place complete; a
//! tree's sysroot links to its distribution's roots (`.kmx-toolchains`), which is how
//! [`crate::kernel::KernelTree`] finds them.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::config::profile::{KernelSource, Toolchain};
use crate::error::{Error, Result};
use crate::kernel::apt::{Apt, host_debian_arch};
use crate::state::Home;

/// The link in a tree's sysroot to its distribution's toolchain roots.
pub const LINK: &str = ".kmx-toolchains";

/// What a complete root holds besides its files: how it was made ([`FORMAT`]) and the
/// packages it was made of.
const STAMP: &str = ".kmx-packages";

/// The first line of a root's stamp: a root made another way is made again.
const FORMAT: &str = "kmx toolchain root 3";

/// Directories every build view needs in the root (mount points for the view's own).
const MOUNT_POINTS: &[&str] = &[
    "usr/src",
    "var/lib/dkms",
    "usr/lib/modules",
    "tmp",
    "run",
    "proc",
    "dev",
];

/// Documentation, manuals and translations: not needed to compile.
const PRUNED: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
];

/// The source the roots of `source`'s trees come from: its distribution's main suite
/// (`trixie` for `trixie-security`'s trees: security kernels are built with the release's
/// compiler); Debian's security archive has no compilers.
pub fn main_source(source: &KernelSource, mirror: Option<&str>) -> KernelSource {
    let codename = source.suite.split('-').next().unwrap_or(&source.suite);
    if source.name == "debian" {
        let mut s = KernelSource::debian(codename, mirror, source.kernel.clone());
        if source.url != crate::config::profile::DEBIAN_SECURITY_MIRROR {
            s.url = source.url.clone();
        }
        s
    } else {
        KernelSource {
            suite: codename.to_string(),
            ..source.clone()
        }
    }
}

/// `$KMX_HOME/toolchains/<source>-<codename>`: the roots of one distribution.
pub fn dir(home: &Home, main: &KernelSource) -> PathBuf {
    home.root
        .join("toolchains")
        .join(format!("{}-{}", main.name, main.suite))
}

/// The root holding `compiler` in a distribution's directory, when it is complete.
pub fn find(roots: &Path, compiler: &str) -> Option<PathBuf> {
    let root = roots.join(compiler);
    (root.join(STAMP).is_file() && root.join("usr/bin").join(compiler).is_file()).then_some(root)
}

/// The Debian package of a compiler named `<triple>-gcc-<N>`: `gcc-<N>-<triple>` with `_`
/// spelled `-` (`gcc-14-x86-64-linux-gnu`, `gcc-14-aarch64-linux-gnu`); `None` for another
/// name (a profile's own `cc`).
pub fn compiler_package(compiler: &str) -> Option<String> {
    let (triple, version) = compiler.rsplit_once("-gcc-")?;
    (!version.is_empty() && version.chars().all(|c| c.is_ascii_digit()) && !triple.is_empty())
        .then(|| format!("gcc-{version}-{}", triple.replace('_', "-")))
}

/// One tree's need of a toolchain root: the compiler it calls, its distribution and the
/// `linux-kbuild-*` package its host tools come from.
pub struct RootRequest<'a> {
    pub source: &'a KernelSource,
    pub compiler: String,
    pub kbuild: Option<String>,
    /// The tree's sysroot, linked to its distribution's roots.
    pub sysroot: &'a Path,
}

/// The compiler a tree built with `tree_cc` calls when `toolchain` cannot give it on this
/// machine and kmx can assemble a root with it (Debian 13's `gcc-14` on a Debian 12 host);
/// `None` when the host's compiler does, or the profile names its own `cc`.
pub fn needed(toolchain: &Toolchain, tree_cc: Option<&str>) -> Option<String> {
    let name = toolchain.compiler_name(tree_cc);
    (toolchain.cc.is_none()
        && compiler_package(&name).is_some()
        && toolchain.probe(tree_cc).is_err())
    .then_some(name)
}

/// The tree's `linux-kbuild-*` package, from where its `scripts` link points.
pub fn kbuild_of(kdir: &Path) -> Option<String> {
    std::fs::read_link(kdir.join("scripts")).ok().and_then(|l| {
        l.components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .find(|c| c.starts_with("linux-kbuild-"))
    })
}

/// A root to make: its packages are downloaded, its files not yet unpacked.
struct Pending {
    label: String,
    compiler: String,
    roots: PathBuf,
    wanted: Vec<String>,
    debs: PathBuf,
}

/// Make (or reuse) the roots `requests` need and link each tree's sysroot to its
/// distribution's roots. A root several trees need is made once, with what every one of
/// their kbuild packages depends on. The packages are resolved and downloaded one root after
/// another (apt's private state is one per distribution), then the roots are unpacked at
/// once; the home's apt lock is held throughout.
pub fn provide(
    home: &Home,
    requests: &[RootRequest],
    mirror: Option<&str>,
    say: &mut dyn FnMut(&str),
) -> Result<()> {
    let host = host_debian_arch().to_string();
    // Each root once (its distribution's roots and its compiler), with the main source and
    // what it holds. The trees of one ABI share their kbuild package: asked of apt once.
    let mut wanted: Vec<(PathBuf, KernelSource, String, Vec<String>)> = Vec::new();
    let mut libraries_of: Vec<((String, String), Vec<String>)> = Vec::new();
    for r in requests {
        let main = main_source(r.source, mirror);
        let roots = dir(home, &main);
        link(r.sysroot, &roots)?;
        // The libraries the tree's host tools need: what its kbuild package depends on
        // (read from the tree's own source, which may be the security suite).
        let libraries = match &r.kbuild {
            Some(kbuild) => {
                let key = (r.source.label(), kbuild.clone());
                match libraries_of.iter().find(|(k, _)| *k == key) {
                    Some((_, known)) => known.clone(),
                    None => {
                        let apt = Apt::prepare(home, r.source, std::slice::from_ref(&host))?;
                        let info = apt.show(&[format!("{kbuild}:{host}")])?.unwrap_or_default();
                        let stanza = super::apt::stanza(&info, kbuild).unwrap_or("");
                        let found = super::apt::depends_on(stanza, "");
                        libraries_of.push((key, found.clone()));
                        found
                    }
                }
            }
            None => Vec::new(),
        };
        let pkgs = packages(&r.compiler, &libraries)?;
        match wanted
            .iter_mut()
            .find(|(d, _, c, _)| *d == roots && *c == r.compiler)
        {
            Some((_, _, _, have)) => {
                for p in pkgs {
                    if !have.contains(&p) {
                        have.push(p);
                    }
                }
            }
            None => wanted.push((roots, main, r.compiler.clone(), pkgs)),
        }
    }
    let mut lock = None;
    let mut pending = Vec::new();
    for (roots, main, compiler, wanted) in wanted {
        if let Some(root) = find(&roots, &compiler) {
            let have = std::fs::read_to_string(root.join(STAMP)).unwrap_or_default();
            if have.lines().next() == Some(FORMAT)
                && wanted.iter().all(|p| have.lines().any(|l| l == p))
            {
                continue;
            }
        }
        if lock.is_none() {
            lock = Some(crate::kernel::apt::apt_lock(home)?);
        }
        let apt = Apt::prepare(home, &main, std::slice::from_ref(&host))?;
        apt.update(false, say)?;
        let debs = apt.dir.join("debs").join(format!("toolchain-{compiler}"));
        let _ = std::fs::remove_dir_all(&debs);
        say(&format!(
            "{}: assembling the toolchain root of {compiler} from {} ({})",
            main.label(),
            main.label(),
            wanted.join(" ")
        ));
        apt.download_closure(&wanted, &debs)?;
        pending.push(Pending {
            label: main.label(),
            compiler,
            roots,
            wanted,
            debs,
        });
    }
    if pending.is_empty() {
        return Ok(());
    }
    say(&format!("Unpacking {} toolchain roots", pending.len()));
    let made: Vec<PathBuf> = pending
        .par_iter()
        .map(Pending::assemble)
        .collect::<Result<_>>()?;
    for root in made {
        say(&format!("toolchain root {}", root.display()));
    }
    Ok(())
}

impl Pending {
    /// Unpack the downloaded packages into a staging directory beside the roots, complete
    /// it, and rename it into place.
    fn assemble(&self) -> Result<PathBuf> {
        let (roots, compiler) = (&self.roots, &self.compiler);
        std::fs::create_dir_all(roots).map_err(|e| Error::io("create directory", roots, e))?;
        let staging = tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(roots)
            .map_err(|e| Error::io("create a directory in", roots, e))?;
        let root = staging.path();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.debs)
            .map_err(|e| Error::io("read directory", &self.debs, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        files.sort();
        for deb in &files {
            crate::kernel::apt::dpkg_extract(deb, root)?;
        }
        for p in PRUNED {
            let _ = std::fs::remove_dir_all(root.join(p));
        }
        // Merged /usr: trixie's base-files ships the links; a suite without them gets them here.
        for (name, target) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")] {
            let at = root.join(name);
            if at.symlink_metadata().is_err() && root.join(target).is_dir() {
                std::os::unix::fs::symlink(target, &at).map_err(|e| Error::io("create", &at, e))?;
            }
        }
        // What maintainer scripts would have made with update-alternatives.
        let awk = root.join("usr/bin/awk");
        if awk.symlink_metadata().is_err() && root.join("usr/bin/mawk").is_file() {
            std::os::unix::fs::symlink("mawk", &awk).map_err(|e| Error::io("create", &awk, e))?;
        }
        for d in MOUNT_POINTS {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(|e| Error::io("create directory", &p, e))?;
        }
        if !root.join("usr/bin").join(compiler).is_file() {
            return Err(Error::env(format!(
                "the packages of {} did not provide usr/bin/{compiler}",
                self.label
            ))
            .at(root)
            .hint("check that the suite has the compiler the tree was built with"));
        }
        let stamp = root.join(STAMP);
        std::fs::write(&stamp, format!("{FORMAT}\n{}\n", self.wanted.join("\n")))
            .map_err(|e| Error::io("write", &stamp, e))?;
        let dest = roots.join(compiler);
        let staged = staging.keep();
        crate::state::home::replace_dir(&staged, &dest)?;
        let _ = std::fs::remove_dir_all(&self.debs);
        Ok(dest)
    }
}

/// What a root of `compiler` is made of, with the tree's host tools' `libraries` (apt adds
/// the dependencies).
fn packages(compiler: &str, libraries: &[String]) -> Result<Vec<String>> {
    let gcc = compiler_package(compiler).ok_or_else(|| {
        Error::env(format!(
            "kmx assembles toolchain roots for compilers named <triple>-gcc-<version>, not {compiler}"
        ))
    })?;
    let mut pkgs: Vec<String> = [
        gcc.as_str(),
        "binutils",
        "make",
        "bash",
        "dash",
        "coreutils",
        "sed",
        "grep",
        "mawk",
        "findutils",
        "diffutils",
        "xz-utils",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for l in libraries {
        if !pkgs.contains(l) {
            pkgs.push(l.clone());
        }
    }
    Ok(pkgs)
}

/// `<sysroot>/.kmx-toolchains` -> the distribution's roots (relative when both are in the
/// home, so a moved home keeps working).
fn link(sysroot: &Path, roots: &Path) -> Result<()> {
    let at = sysroot.join(LINK);
    let target = pathdiff(roots, sysroot).unwrap_or_else(|| roots.to_path_buf());
    if std::fs::read_link(&at).ok().as_deref() == Some(target.as_path()) {
        return Ok(());
    }
    let _ = std::fs::remove_file(&at);
    std::os::unix::fs::symlink(&target, &at).map_err(|e| Error::io("create", &at, e))
}

/// `to` relative to directory `from`, both absolute and sharing a prefix.
fn pathdiff(to: &Path, from: &Path) -> Option<PathBuf> {
    let to: Vec<_> = to.components().collect();
    let from: Vec<_> = from.components().collect();
    let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return None;
    }
    let mut p = PathBuf::new();
    for _ in common..from.len() {
        p.push("..");
    }
    for c in &to[common..] {
        p.push(c);
    }
    Some(p)
}

/// The roots a tree's sysroot links to (`kdir` = `<sysroot>/usr/src/<name>`).
pub fn roots_of_tree(kdir: &Path) -> Option<PathBuf> {
    let sysroot = kdir.parent()?.parent()?.parent()?;
    let roots = sysroot.join(LINK);
    roots.is_dir().then_some(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiler_packages_are_debians_names() {
        assert_eq!(
            compiler_package("x86_64-linux-gnu-gcc-14").as_deref(),
            Some("gcc-14-x86-64-linux-gnu")
        );
        assert_eq!(
            compiler_package("arm-linux-gnueabihf-gcc-14").as_deref(),
            Some("gcc-14-arm-linux-gnueabihf")
        );
        assert_eq!(compiler_package("clang"), None);
        assert_eq!(compiler_package("x86_64-linux-gnu-gcc"), None);
    }

    #[test]
    fn the_link_is_relative_inside_the_home() {
        assert_eq!(
            pathdiff(
                Path::new("/h/toolchains/debian-trixie"),
                Path::new("/h/trees/debian-6.12.117+deb13")
            ),
            Some(PathBuf::from("../../toolchains/debian-trixie"))
        );
    }

    #[test]
    fn security_trees_take_the_releases_compiler() {
        let k = crate::config::profile::DebianKernel {
            arch: "amd64".into(),
            flavour: "amd64".into(),
        };
        let s = KernelSource::debian("trixie-security", None, k);
        let m = main_source(&s, None);
        assert_eq!(m.suite, "trixie");
        assert_eq!(m.url, crate::config::profile::DEBIAN_MIRROR);
    }
}

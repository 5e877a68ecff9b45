//! Provisioning kernel build trees from apt archives' `linux-headers` packages.
//!
//! Debian (and Debian-style archives such as Raspberry Pi OS's or Ubuntu's) ship, per
//! architecture, prepared build trees (`linux-headers-<ABI>-<flavour>`) plus an
//! arch-independent common part and the host build tools (`linux-kbuild-<series>`, whose
//! host-architecture binaries serve every target tree). Each target profile names its
//! sources (`[[kernels.source]]`: a suite of an archive); kmx fetches from each one the
//! newest ABI (or a pinned one) through a private apt state (`kernel::apt`), then unpacks the
//! packages with `dpkg-deb -x` into one sysroot per source and ABI
//! (`$KMX_HOME/trees/<source name>-<ABI>/`, e.g. `debian-6.12.95+deb12`).
//!
//! Both ABI styles work: `6.1.0-50` (Debian 12) and `6.12.95+deb12` (bookworm-backports,
//! Debian 13), and so do `6.6.74+rpt` (Raspberry Pi OS) or `6.8.0-45` (Ubuntu). The common
//! part and the kbuild package are read from the flavour package's Depends, not guessed.
//!
//! One fix makes the sysroot relocatable: each flavour's `Makefile` is a single absolute
//! `include /usr/src/linux-headers-<ABI>-common/Makefile`, rewritten here relative to the
//! flavour directory.
//!
//! Atomicity: packages are unpacked into a staging directory; each tree directory is then
//! renamed into the sysroot (shared parts first), so a tree is either complete or absent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use crate::config::profile::{DebianKernel, KernelSource};
use crate::error::{Error, Kind, Result};
use crate::kernel::apt::{self, Apt, host_debian_arch};
use crate::kernel::registry::BootFiles;
use crate::process;
use crate::state::Home;

/// One target's trees to fetch from one source.
#[derive(Debug, Clone)]
pub struct Want {
    pub target: String,
    pub source: KernelSource,
}

/// What to fetch, resolved from the command line and the target profiles.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub wants: Vec<Want>,
    /// A pinned ABI such as `6.1.0-50`, taken from the sources that carry it; `None` picks
    /// the newest of every source.
    pub abi: Option<String>,
    /// Refresh the package lists even if they are recent.
    pub refresh: bool,
}

/// A tree that is now on disk, ready to be inspected and registered.
#[derive(Debug, Clone)]
pub struct FetchedTree {
    pub target: String,
    pub kdir: PathBuf,
    pub origin: String,
    /// False when the tree was already there and nothing was downloaded for it.
    pub new: bool,
    /// The kernel ABI, e.g. `6.1.0-50` or `6.12.95+deb12`.
    pub abi: String,
    /// The sysroot the tree lives in (`$KMX_HOME/trees/<source name>-<ABI>`).
    pub sysroot: PathBuf,
    pub source: KernelSource,
}

/// Compare kernel ABIs like `6.1.0-50` or `6.12.95+deb12` numerically, number by number.
pub fn abi_key(abi: &str) -> Vec<u64> {
    abi.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// The ABI part of `linux-headers-<ABI>-<flavour>`: `N.N.N`, then `-N` (Debian 12, Ubuntu)
/// or `+word` (`+deb12`, `+rpt`). Anything else (`6.1.0-50-rt`, `6.12`, `...-common`) is
/// another flavour or a meta package.
pub fn abi_of(pkg: &str, flavour: &str) -> Option<String> {
    let abi = pkg
        .strip_prefix("linux-headers-")?
        .strip_suffix(&format!("-{flavour}"))?;
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let (version, suffix) = match abi.find(['-', '+']) {
        Some(i) => (&abi[..i], &abi[i..]),
        None => (abi, ""),
    };
    let version_ok = version.split('.').count() == 3 && version.split('.').all(digits);
    let suffix_ok = match suffix.chars().next() {
        None => true,
        Some('-') => digits(&suffix[1..]),
        Some(_) => {
            let word = &suffix[1..];
            !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '~')
        }
    };
    (version_ok && suffix_ok).then(|| abi.to_string())
}

/// The sysroot of one source's ABI.
pub fn sysroot_of(home: &Home, source: &KernelSource, abi: &str) -> PathBuf {
    home.trees().join(format!("{}-{abi}", source.name))
}

/// Fetch (or find already fetched) trees for every requested (target, source). `say`
/// receives progress lines. A source without a tree for a target is said, not an error; a
/// target that gets no tree from any of its sources is an error.
pub fn fetch(
    home: &Home,
    req: &FetchRequest,
    say: &mut dyn FnMut(&str),
) -> Result<Vec<FetchedTree>> {
    let mut groups: BTreeMap<String, Vec<&Want>> = BTreeMap::new();
    for w in &req.wants {
        groups.entry(w.source.apt_line()).or_default().push(w);
    }
    let mut result: Vec<FetchedTree> = Vec::new();
    let mut lock = None;
    // Every source's apt state, prepared once; then what each (target, series) takes.
    let mut apts: BTreeMap<String, Apt> = BTreeMap::new();
    // (target, series) -> (ABI, want): the newest ABI of the series across the target's
    // sources; on a tie the source listed first.
    let mut chosen: BTreeMap<(String, String), (String, &Want)> = BTreeMap::new();
    for wants in groups.values() {
        let source = &wants[0].source;
        // A pinned ABI whose trees are all present needs no apt at all. Sources named
        // alike share a sysroot (`debian-<ABI>`): a tree an earlier source gave is not
        // given again under this one's name.
        if let Some(abi) = &req.abi {
            let sysroot = sysroot_of(home, source, abi);
            let present: Vec<FetchedTree> = wants
                .iter()
                .filter_map(|w| existing(&sysroot, abi, w))
                .collect();
            if present.len() == wants.len() {
                for t in present {
                    if !result
                        .iter()
                        .any(|r| r.target == t.target && r.kdir == t.kdir)
                    {
                        result.push(t);
                    }
                }
                continue;
            }
        }
        if lock.is_none() {
            lock = Some(super::apt::apt_lock(home)?);
        }
        // Every state sees the architectures of the whole request, so `fetch_boot` asks the
        // same of it and reuses its lists.
        let mut archs = vec![host_debian_arch().to_string()];
        archs.extend(req.wants.iter().map(|w| w.source.kernel.arch.clone()));
        let apt = Apt::prepare(home, source, &archs)?;
        apt.update(req.refresh, say)?;
        let names = apt.pkgnames("linux-headers-")?;
        for w in wants {
            let k = &w.source.kernel;
            let abis = match &req.abi {
                Some(abi) => apt
                    .show(&[format!("{}:{}", k.headers(abi), k.arch)])?
                    .map(|_| vec![abi.clone()])
                    .unwrap_or_default(),
                None => newest_abis(&apt, &names, k)?,
            };
            // A pinned ABI is looked for in every source: only a target that no source
            // has it for is worth saying (the error below).
            if abis.is_empty() && req.abi.is_none() {
                say(&format!(
                    "{}: {} has no linux-headers-<ABI>-{}:{} package",
                    w.target,
                    source.label(),
                    k.flavour,
                    k.arch
                ));
            }
            for abi in abis {
                let key = (w.target.clone(), abi_series(&abi));
                let order = |w: &Want| req.wants.iter().position(|x| std::ptr::eq(x, w));
                let better = chosen.get(&key).is_none_or(|(a, o)| {
                    (abi_key(&abi), std::cmp::Reverse(order(w)))
                        > (abi_key(a), std::cmp::Reverse(order(o)))
                });
                if better {
                    chosen.insert(key, (abi, *w));
                }
            }
        }
        apts.insert(source.apt_line(), apt);
    }
    // (source, ABI) -> the wants that take it.
    let mut by_abi: BTreeMap<(String, String), Vec<&Want>> = BTreeMap::new();
    for (abi, w) in chosen.into_values() {
        by_abi
            .entry((w.source.apt_line(), abi))
            .or_default()
            .push(w);
    }
    for ((line, abi), wants) in by_abi {
        say(&format!("{}: kernel ABI {abi}", wants[0].source.label()));
        result.extend(fetch_abi(home, &apts[&line], &abi, &wants, say)?);
    }
    let mut without: Vec<&str> = req
        .wants
        .iter()
        .map(|w| w.target.as_str())
        .filter(|t| !result.iter().any(|r| r.target == *t))
        .collect();
    without.dedup();
    if !without.is_empty() {
        let what = match &req.abi {
            Some(abi) => format!("ABI {abi}"),
            None => "any kernel".into(),
        };
        return Err(Error::env(format!(
            "no source of {} has {what}",
            without.join(", ")
        ))
        .hint("`kmx kernels fetch --refresh` updates the package lists; omit --abi to take the newest; the sources are each target's [[kernels.source]] (`kmx targets`)"));
    }
    Ok(result)
}

/// The kernel series of an ABI: `6.1` of `6.1.0-57`, `6.12+deb12` of `6.12.118+deb12`
/// (Debian 13's `6.12.117+deb13` is another series: another distribution's build). A
/// target keeps one tree per series, the newest ABI any of its sources has.
pub fn abi_series(abi: &str) -> String {
    // The build word without its rebuild number: trixie-security's `6.12.115+deb13.1` is
    // of the same series as trixie's `6.12.117+deb13`.
    let (version, build) = match abi.split_once('+') {
        Some((v, b)) => (v, format!("+{}", b.split('.').next().unwrap_or(b))),
        None => (abi, String::new()),
    };
    let major_minor: Vec<&str> = version.split(['.', '-']).take(2).collect();
    format!("{}{build}", major_minor.join("."))
}

/// The newest ABI of each kernel series in this source with a headers package for the
/// flavour and architecture (bookworm-security carries both 6.1 and 6.12).
fn newest_abis(apt: &Apt, names: &[String], k: &DebianKernel) -> Result<Vec<String>> {
    let mut candidates: Vec<String> = names.iter().filter_map(|n| abi_of(n, &k.flavour)).collect();
    candidates.sort_by_key(|a| std::cmp::Reverse(abi_key(a)));
    candidates.dedup();
    let mut found: Vec<String> = Vec::new();
    for abi in candidates {
        if found.iter().any(|f| abi_series(f) == abi_series(&abi)) {
            continue;
        }
        if apt
            .show(&[format!("{}:{}", k.headers(&abi), k.arch)])?
            .is_some()
        {
            found.push(abi);
        }
    }
    Ok(found)
}

/// Download and unpack one ABI's flavours (with their common part and kbuild tools) into
/// the source's sysroot for that ABI; trees already there are reused.
fn fetch_abi(
    home: &Home,
    apt: &Apt,
    abi: &str,
    wants: &[&Want],
    say: &mut dyn FnMut(&str),
) -> Result<Vec<FetchedTree>> {
    let source = &wants[0].source;
    let sysroot = sysroot_of(home, source, abi);
    let mut result = Vec::new();
    let mut missing: Vec<&Want> = Vec::new();
    for w in wants {
        match existing(&sysroot, abi, w) {
            Some(tree) => result.push(tree),
            None => missing.push(w),
        }
    }
    if missing.is_empty() {
        return Ok(result);
    }
    let host = host_debian_arch();
    let flavours: Vec<String> = missing
        .iter()
        .map(|w| w.source.kernel.headers(abi))
        .collect();
    let qualified: Vec<String> = missing
        .iter()
        .zip(&flavours)
        .map(|(w, p)| format!("{p}:{}", w.source.kernel.arch))
        .collect();
    let info = apt.show(&qualified)?.ok_or_else(|| {
        Error::env(format!(
            "{} has no package for ABI {abi} among: {}",
            source.label(),
            qualified.join(" ")
        ))
        .hint("run with --refresh, or pick an ABI that exists (omit --abi to let kmx choose)")
    })?;
    let mut pkgs = qualified.clone();
    let mut versions = BTreeMap::new();
    for p in &flavours {
        let stanza = apt::stanza(&info, p).unwrap_or("");
        versions.insert(
            p.clone(),
            apt::field(stanza, "Version").unwrap_or("").to_string(),
        );
        let kbuild = apt::depends_on(stanza, "linux-kbuild-");
        if kbuild.is_empty() {
            return Err(Error::env(format!("{p} names no linux-kbuild package in its Depends"))
                .hint("kmx needs the kernel's host build tools (linux-kbuild-*): is this a Debian-style archive?"));
        }
        for dep in apt::depends_on(stanza, "linux-headers-")
            .into_iter()
            .chain(kbuild.into_iter().map(|k| format!("{k}:{host}")))
        {
            if !pkgs.contains(&dep) {
                pkgs.push(dep);
            }
        }
    }
    let debs = apt.dir.join("debs").join(abi);
    // Only this download's packages: an older upload of the same ABI must not be unpacked.
    let _ = std::fs::remove_dir_all(&debs);
    say(&format!(
        "Downloading {} packages: {}",
        pkgs.len(),
        pkgs.join(" ")
    ));
    apt.download(&pkgs, &debs)?;

    // Unpack everything into a staging dir next to the sysroot, then move trees into place.
    let trees = home.trees();
    std::fs::create_dir_all(&trees).map_err(|e| Error::io("create directory", &trees, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(&trees)
        .map_err(|e| Error::io("create a directory in", &trees, e))?;
    say("Unpacking");
    let mut deb_files: Vec<PathBuf> = std::fs::read_dir(&debs)
        .map_err(|e| Error::io("read directory", &debs, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    deb_files.sort();
    for deb in &deb_files {
        super::apt::dpkg_extract(deb, staging.path())?;
    }
    // Shared parts first (kbuild tools, common parts), then each flavour: a flavour in the
    // sysroot implies what it needs is there.
    let mut shared: Vec<PathBuf> = Vec::new();
    for dir in ["usr/lib", "usr/src"] {
        if let Ok(entries) = std::fs::read_dir(staging.path().join(dir)) {
            for e in entries.flatten() {
                let rel = Path::new(dir).join(e.file_name());
                if !flavours.iter().any(|f| rel.ends_with(f)) {
                    shared.push(rel);
                }
            }
        }
    }
    shared.sort();
    let flavour_dirs = flavours.iter().map(|f| Path::new("usr/src").join(f));
    for rel in shared.into_iter().chain(flavour_dirs) {
        let from = staging.path().join(&rel);
        let to = sysroot.join(&rel);
        if !from.exists() || to.exists() {
            continue;
        }
        if rel.starts_with("usr/src") {
            relocate_makefile(&from)?;
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io("create directory", parent, e))?;
        }
        std::fs::rename(&from, &to).map_err(|e| Error::io("move into place", &to, e))?;
    }
    for (w, p) in missing.iter().zip(&flavours) {
        let kdir = sysroot.join("usr/src").join(p);
        if !kdir.join("Makefile").exists() {
            return Err(Error::env(format!(
                "the unpacked package did not provide {}",
                kdir.display()
            )));
        }
        result.push(FetchedTree {
            target: w.target.clone(),
            origin: format!("{} {p} {}", source.label(), versions[p]),
            kdir,
            new: true,
            abi: abi.to_string(),
            sysroot: sysroot.clone(),
            source: w.source.clone(),
        });
    }
    Ok(result)
}

fn existing(sysroot: &Path, abi: &str, w: &Want) -> Option<FetchedTree> {
    let pkg = w.source.kernel.headers(abi);
    let kdir = sysroot.join("usr/src").join(&pkg);
    kdir.join("Makefile").exists().then(|| FetchedTree {
        target: w.target.clone(),
        origin: format!("{} {pkg}", w.source.label()),
        kdir,
        new: false,
        abi: abi.to_string(),
        sysroot: sysroot.to_path_buf(),
        source: w.source.clone(),
    })
}

/// Rewrite `include /usr/src/<X>/Makefile` in a flavour tree's Makefile relative to the tree.
fn relocate_makefile(tree: &Path) -> Result<()> {
    let path = tree.join("Makefile");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let mut changed = false;
    let fixed: String = text
        .lines()
        .map(|line| {
            if let Some(rest) = line.strip_prefix("include /usr/src/") {
                changed = true;
                format!("include $(dir $(lastword $(MAKEFILE_LIST)))../{rest}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    if changed {
        std::fs::write(&path, fixed).map_err(|e| Error::io("write", &path, e))?;
    }
    Ok(())
}

/// One tree whose distribution kernel `--with-image` should provide.
#[derive(Debug, Clone)]
pub struct BootRequest {
    pub tree: FetchedTree,
    /// The tree's kernel release (`6.1.0-50-amd64`): the image and module tree must match it.
    pub release: String,
    /// The target boots with a device tree from the image package (`[boot] dtb`).
    pub dtbs: bool,
}

impl BootRequest {
    /// The tree's boot files when every one of them is on disk.
    pub fn existing(&self) -> Option<BootFiles> {
        existing_boot(
            &self.tree.sysroot,
            &self.release,
            &self.tree.source.kernel.arch,
            self.dtbs,
        )
    }
}

/// Where the boot files of `release` live in a sysroot (present or not).
fn boot_paths(sysroot: &Path, release: &str, arch: &str) -> BootFiles {
    BootFiles {
        image: sysroot.join(format!("boot/vmlinuz-{release}")),
        modules_dir: sysroot.join(format!("lib/modules/{release}")),
        busybox: sysroot.join(format!("boot/busybox-{arch}")),
        dtbs: Some(sysroot.join(format!("boot/dtbs/{release}"))),
    }
}

/// The boot files of a tree when every one of them is on disk (the device trees only
/// counted when `dtbs`, and only named when present).
fn existing_boot(sysroot: &Path, release: &str, arch: &str, dtbs: bool) -> Option<BootFiles> {
    let mut b = boot_paths(sysroot, release, arch);
    let has_dtbs = b.dtbs.as_ref().is_some_and(|d| d.is_dir());
    if !has_dtbs {
        b.dtbs = None;
    }
    (b.image.is_file()
        && b.modules_dir.join("modules.dep").is_file()
        && b.busybox.is_file()
        && (has_dtbs || !dtbs))
        .then_some(b)
}

/// Fetch, for each tree, its source's kernel image of the same release, its module tree
/// (with `modules.dep` made by `depmod -b`), its device trees, and Debian 12's
/// `busybox-static` for the architecture, into the tree's sysroot: `boot/vmlinuz-<release>`,
/// `lib/modules/<release>/`, `boot/dtbs/<release>/`, `boot/busybox-<arch>`. Each is unpacked
/// in a staging directory and renamed into place, the image last, so a tree's boot files
/// are complete or absent. Trees whose files are present cost nothing (no apt call).
/// Called after [`fetch`] in the same run, it does not refresh the lists `fetch` just made.
pub fn fetch_boot(
    home: &Home,
    debian_mirror: Option<&str>,
    trees: &[BootRequest],
    say: &mut dyn FnMut(&str),
) -> Result<Vec<BootFiles>> {
    let missing: Vec<&BootRequest> = trees.iter().filter(|t| t.existing().is_none()).collect();
    if !missing.is_empty() {
        let _lock = super::apt::apt_lock(home)?;
        which::which("depmod").map_err(|_| {
            Error::env("depmod not found: kmx needs it to index the kernel's modules")
                .hint("apt-get install kmod")
        })?;
        // busybox-static comes from Debian 12 for every source: a backports suite or a
        // vendor's archive has kernels, not necessarily busybox.
        // The architectures of every tree, as `fetch` asked for them: the same set keeps the
        // lists it just made.
        let mut archs: Vec<String> = vec![host_debian_arch().to_string()];
        archs.extend(trees.iter().map(|t| t.tree.source.kernel.arch.clone()));
        let busybox_source = KernelSource::debian(
            crate::config::profile::DEFAULT_SUITE,
            debian_mirror,
            missing[0].tree.source.kernel.clone(),
        );
        let busybox_apt = Apt::prepare(home, &busybox_source, &archs)?;
        busybox_apt.update(false, say)?;
        // One state per source, prepared once.
        let mut apts: BTreeMap<String, Apt> = BTreeMap::new();
        for t in missing {
            let source = &t.tree.source;
            let apt = match apts.entry(source.apt_line()) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let apt = Apt::prepare(home, source, &archs)?;
                    apt.update(false, say)?;
                    e.insert(apt)
                }
            };
            let abi = &t.tree.abi;
            let d = &source.kernel;
            // The signed image is what users run; some architectures (armhf) only have that
            // name, others also ship `-unsigned` with the same kernel.
            let signed = format!("linux-image-{abi}-{}", d.flavour);
            let unsigned = format!("{signed}-unsigned");
            let mut image_pkg = None;
            for p in [signed, unsigned] {
                if apt.show(&[format!("{p}:{}", d.arch)])?.is_some() {
                    image_pkg = Some(p);
                    break;
                }
            }
            let image_pkg = image_pkg.ok_or_else(|| {
                Error::env(format!(
                    "{} has no linux-image-{abi}-{} package for {}",
                    source.label(),
                    d.flavour,
                    d.arch
                ))
                .hint("run with --refresh, or pin an ABI that still has images with --abi")
            })?;
            let image = get_deb(apt, &image_pkg, &d.arch, abi, say)?;
            let busybox = get_deb(&busybox_apt, "busybox-static", &d.arch, "busybox", say)?;
            say(&format!("Unpacking {image_pkg}:{} and busybox", d.arch));
            install_boot(&t.tree.sysroot, &t.release, &d.arch, &image, &busybox)?;
        }
    }
    trees
        .iter()
        .map(|t| {
            t.existing().ok_or_else(|| {
                Error::env(format!(
                    "the kernel image package did not provide boot/vmlinuz-{} with its modules{}",
                    t.release,
                    if t.dtbs { " and device trees" } else { "" }
                ))
                .at(&t.tree.sysroot)
                .hint("check that the tree's release matches the package's ABI (kmx kernels list)")
            })
        })
        .collect()
}

/// A downloaded `pkg:arch` in the source's `debs/<dir>`, downloading it if needed.
fn get_deb(
    apt: &Apt,
    pkg: &str,
    arch: &str,
    dir: &str,
    say: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    let debs = apt.dir.join("debs").join(dir);
    if let Some(deb) = downloaded(&debs, pkg, arch) {
        return Ok(deb);
    }
    say(&format!("Downloading {pkg}:{arch}"));
    apt.download(&[format!("{pkg}:{arch}")], &debs)?;
    downloaded(&debs, pkg, arch)
        .ok_or_else(|| Error::env(format!("apt-get download left no {pkg} package")).at(&debs))
}

/// Delete the files of `gone` (entries already removed from `registry`) that no remaining
/// entry uses: each tree directory and its boot files, and a sysroot left without trees.
/// Only paths under the home's trees directory are touched. Each directory is first
/// renamed to a `.kmx-tmp-` name, so an interrupted removal leaves nothing half-deleted
/// under a tree's name (the next run sweeps it).
pub fn delete_unused(
    home: &Home,
    registry: &crate::kernel::registry::Registry,
    gone: &[crate::kernel::registry::RegisteredTree],
) -> Result<Vec<PathBuf>> {
    let trees = home.trees();
    let paths_of = |t: &crate::kernel::registry::RegisteredTree| -> Vec<PathBuf> {
        let mut v = vec![t.kdir.clone()];
        if let Some(b) = &t.boot {
            v.extend([b.image.clone(), b.modules_dir.clone()]);
            v.extend(b.dtbs.clone());
        }
        v
    };
    let sysroot_of = |p: &Path| -> Option<PathBuf> {
        let rel = p.strip_prefix(&trees).ok()?;
        Some(trees.join(rel.components().next()?))
    };
    let used: Vec<PathBuf> = registry.trees.iter().flat_map(paths_of).collect();
    let used_sysroots: Vec<PathBuf> = registry
        .trees
        .iter()
        .filter_map(|t| sysroot_of(&t.kdir))
        .collect();
    let mut deleted = Vec::new();
    let mut delete = |p: &Path| -> Result<()> {
        if !p.starts_with(&trees) || p == trees || std::fs::symlink_metadata(p).is_err() {
            return Ok(());
        }
        let doomed = trees.join(format!(
            "{}{}",
            crate::state::tmp::prefix(),
            p.file_name().and_then(|n| n.to_str()).unwrap_or("tree")
        ));
        std::fs::rename(p, &doomed).map_err(|e| Error::io("remove", p, e))?;
        let removed = if doomed.is_dir() {
            std::fs::remove_dir_all(&doomed)
        } else {
            std::fs::remove_file(&doomed)
        };
        removed.map_err(|e| Error::io("remove", &doomed, e))?;
        deleted.push(p.to_path_buf());
        Ok(())
    };
    for t in gone {
        match sysroot_of(&t.kdir) {
            Some(root) if !used_sysroots.contains(&root) => delete(&root)?,
            _ => {
                for p in paths_of(t).iter().filter(|p| !used.contains(p)) {
                    delete(p)?;
                }
            }
        }
    }
    Ok(deleted)
}

/// The newest downloaded `<pkg>_<version>_<arch>.deb` in `dir`.
fn downloaded(dir: &Path, pkg: &str, arch: &str) -> Option<PathBuf> {
    let mut found: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&format!("{pkg}_")) && name.ends_with(&format!("_{arch}.deb"))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// Unpack one image package and busybox into a staging directory next to the sysroot,
/// index the modules, and rename the pieces into place (image last).
fn install_boot(
    sysroot: &Path,
    release: &str,
    arch: &str,
    image_deb: &Path,
    busybox_deb: &Path,
) -> Result<()> {
    let parent = sysroot.parent().unwrap_or(sysroot);
    let staging = tempfile::Builder::new()
        .prefix(".staging-boot-")
        .tempdir_in(parent)
        .map_err(|e| Error::io("create a directory in", parent, e))?;
    let root = staging.path();
    for deb in [image_deb, busybox_deb] {
        super::apt::dpkg_extract(deb, root)?;
    }
    // Merged-/usr packages put modules under usr/lib; depmod -b looks in lib/.
    let usr_mods = root.join(format!("usr/lib/modules/{release}"));
    let mods = root.join(format!("lib/modules/{release}"));
    if !mods.exists() && usr_mods.exists() {
        std::fs::create_dir_all(root.join("lib/modules"))
            .map_err(|e| Error::io("create directory", root, e))?;
        std::fs::rename(&usr_mods, &mods).map_err(|e| Error::io("move", &usr_mods, e))?;
    }
    let image = root.join(format!("boot/vmlinuz-{release}"));
    if !image.is_file() || !mods.is_dir() {
        return Err(Error::env(format!(
            "{} does not contain boot/vmlinuz-{release} and lib/modules/{release}",
            image_deb.display()
        ))
        .hint("the tree's release and the image package disagree: check `kmx kernels list`"));
    }
    process::output(
        Command::new("depmod").arg("-b").arg(root).arg(release),
        Kind::Environment,
    )?;
    let busybox = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::env(format!("{} contains no bin/busybox", busybox_deb.display())))?;
    let dest = boot_paths(sysroot, release, arch);
    for dir in [sysroot.join("boot"), sysroot.join("lib/modules")] {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
    }
    if !dest.modules_dir.join("modules.dep").is_file() {
        if dest.modules_dir.exists() {
            std::fs::remove_dir_all(&dest.modules_dir)
                .map_err(|e| Error::io("remove incomplete", &dest.modules_dir, e))?;
        }
        std::fs::rename(&mods, &dest.modules_dir)
            .map_err(|e| Error::io("move into place", &dest.modules_dir, e))?;
    }
    std::fs::rename(&busybox, &dest.busybox)
        .map_err(|e| Error::io("move into place", &dest.busybox, e))?;
    // Device trees (ARM): Debian's image packages keep them in usr/lib/linux-image-<release>.
    let dtbs = root.join(format!("usr/lib/linux-image-{release}"));
    if let Some(dest_dtbs) = dest.dtbs.as_ref().filter(|d| dtbs.is_dir() && !d.exists()) {
        let parent = dest_dtbs.parent().unwrap_or(sysroot);
        std::fs::create_dir_all(parent).map_err(|e| Error::io("create directory", parent, e))?;
        std::fs::rename(&dtbs, dest_dtbs)
            .map_err(|e| Error::io("move into place", dest_dtbs, e))?;
    }
    std::fs::rename(&image, &dest.image)
        .map_err(|e| Error::io("move into place", &dest.image, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_is_taken_from_flavour_packages_only() {
        assert_eq!(
            abi_of("linux-headers-6.1.0-50-arm64", "arm64").as_deref(),
            Some("6.1.0-50")
        );
        assert_eq!(abi_of("linux-headers-6.1.0-50-rt-arm64", "arm64"), None);
        assert_eq!(abi_of("linux-headers-6.1.0-50-cloud-arm64", "arm64"), None);
        assert_eq!(abi_of("linux-headers-6.1.0-50-common", "arm64"), None);
        assert_eq!(
            abi_of("linux-headers-6.1.0-50-686-pae", "686-pae").as_deref(),
            Some("6.1.0-50")
        );
        // The newer Debian style, Raspberry Pi OS's, Ubuntu's.
        assert_eq!(
            abi_of("linux-headers-6.12.95+deb12-armmp", "armmp").as_deref(),
            Some("6.12.95+deb12")
        );
        assert_eq!(
            abi_of("linux-headers-6.6.74+rpt-rpi-v8", "rpi-v8").as_deref(),
            Some("6.6.74+rpt")
        );
        assert_eq!(
            abi_of("linux-headers-6.8.0-45-generic", "generic").as_deref(),
            Some("6.8.0-45")
        );
        assert_eq!(
            abi_of("linux-headers-6.12.95+deb12-rt-arm64", "arm64"),
            None
        );
        assert_eq!(abi_of("linux-headers-6.12-arm64", "arm64"), None);
        assert_eq!(abi_of("linux-headers-6.12.95+deb12-common", "rpi"), None);
        assert_eq!(
            abi_of("linux-headers-6.12.95+deb12-arm64-16k", "arm64"),
            None
        );
    }

    #[test]
    fn a_series_is_major_minor_and_the_distributions_build() {
        assert_eq!(abi_series("6.1.0-57"), "6.1");
        assert_eq!(abi_series("6.1.0-50"), abi_series("6.1.0-57"));
        assert_eq!(abi_series("6.12.118+deb12"), "6.12+deb12");
        assert_eq!(abi_series("6.12.95+deb12"), abi_series("6.12.118+deb12"));
        assert_ne!(abi_series("6.12.117+deb13"), abi_series("6.12.118+deb12"));
        assert_eq!(abi_series("6.12.115+deb13.1"), abi_series("6.12.117+deb13"));
        assert_eq!(abi_series("6.6.74+rpt"), "6.6+rpt");
        assert_eq!(abi_series("6.8.0-45"), "6.8");
    }

    #[test]
    fn abis_order_numerically() {
        let mut v = vec![
            "6.1.0-9",
            "6.12.95+deb12",
            "6.1.0-50",
            "6.12.118+deb12",
            "6.1.0-47",
        ];
        v.sort_by_key(|a| std::cmp::Reverse(abi_key(a)));
        assert_eq!(
            v,
            [
                "6.12.118+deb12",
                "6.12.95+deb12",
                "6.1.0-50",
                "6.1.0-47",
                "6.1.0-9"
            ]
        );
    }

    #[test]
    fn makefile_include_becomes_relative() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("Makefile"),
            "include /usr/src/linux-headers-6.1.0-50-common/Makefile\n",
        )
        .unwrap();
        relocate_makefile(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("Makefile")).unwrap(),
            "include $(dir $(lastword $(MAKEFILE_LIST)))../linux-headers-6.1.0-50-common/Makefile\n"
        );
    }
}

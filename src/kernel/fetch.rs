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

use rayon::prelude::*;

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
    /// The trees' kernel images are wanted too (`--with-image`): an ABI whose image does not
    /// download is passed over like one whose headers do not.
    pub with_image: bool,
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
/// receives progress lines. A source without a tree for a target is said, not an error; so
/// is an ABI whose packages the archive does not serve (its index names files its pool
/// lacks, as a mirror between two syncs does): the target takes the next newest ABI of that
/// series that downloads ([`resolve`]). A target that gets no tree from any of its sources
/// is an error.
pub fn fetch(
    home: &Home,
    req: &FetchRequest,
    say: &mut dyn FnMut(&str),
) -> Result<Vec<FetchedTree>> {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, w) in req.wants.iter().enumerate() {
        groups.entry(w.source.apt_line()).or_default().push(i);
    }
    let mut result: Vec<FetchedTree> = Vec::new();
    let mut lock = None;
    // Every source's apt state, prepared once; then the ABIs each (target, series) can take.
    let mut apts: BTreeMap<String, Apt> = BTreeMap::new();
    let mut found: Vec<(String, Candidate)> = Vec::new();
    for wants in groups.values() {
        let source = &req.wants[wants[0]].source;
        // A pinned ABI whose trees are all present needs no apt at all. Sources named
        // alike share a sysroot (`debian-<ABI>`): a tree an earlier source gave is not
        // given again under this one's name.
        if let Some(abi) = &req.abi {
            let sysroot = sysroot_of(home, source, abi);
            let present: Vec<FetchedTree> = wants
                .iter()
                .filter_map(|&i| existing(&sysroot, abi, &req.wants[i]))
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
        for &i in wants {
            let w = &req.wants[i];
            let k = &w.source.kernel;
            let abis = match &req.abi {
                Some(abi) => apt
                    .show(&[format!("{}:{}", k.headers(abi), k.arch)])?
                    .map(|_| vec![abi.clone()])
                    .unwrap_or_default(),
                None => indexed_abis(&apt, &names, k)?,
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
            found.extend(
                abis.into_iter()
                    .map(|abi| (w.target.clone(), Candidate { abi, want: i })),
            );
        }
        apts.insert(source.apt_line(), apt);
    }
    let label = |i: usize| req.wants[i].source.label();
    let line = |i: usize| req.wants[i].source.apt_line();
    let fetched = resolve(
        rank(found),
        &line,
        &label,
        &mut |abi, wants, say| {
            let wants: Vec<&Want> = wants.iter().map(|&i| &req.wants[i]).collect();
            say(&format!("{}: kernel ABI {abi}", wants[0].source.label()));
            let apt = &apts[&wants[0].source.apt_line()];
            fetch_abi(home, apt, abi, &wants, req.with_image, say)
        },
        say,
    )?;
    result.extend(fetched);
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
            "no source of {} has {what} whose packages download",
            without.join(", ")
        ))
        .hint("`kmx kernels fetch --refresh` updates the package lists; omit --abi to take the newest; the sources are each target's [[kernels.source]] (`kmx targets`)"));
    }
    Ok(result)
}

/// A (target, kernel series) of a fetch: `("rpi", "6.12+deb13")`.
pub type SeriesKey = (String, String);

/// How [`resolve`] tries one (source, ABI) for some wants (indices into `req.wants`).
pub type Attempt<'a, T> =
    dyn FnMut(&str, &[usize], &mut dyn FnMut(&str)) -> Result<Vec<Outcome<T>>> + 'a;

/// An ABI a target's kernel series can take, from the source of `req.wants[want]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub abi: String,
    pub want: usize,
}

/// Each (target, series)'s candidates in the order they are tried: the newest ABI first; of
/// one ABI in two sources, the source listed first (its want comes first).
pub fn rank(found: Vec<(String, Candidate)>) -> BTreeMap<SeriesKey, Vec<Candidate>> {
    let mut ranked: BTreeMap<SeriesKey, Vec<Candidate>> = BTreeMap::new();
    for (target, c) in found {
        ranked
            .entry((target, abi_series(&c.abi)))
            .or_default()
            .push(c);
    }
    for cands in ranked.values_mut() {
        cands.sort_by(|a, b| {
            abi_key(&b.abi)
                .cmp(&abi_key(&a.abi))
                .then(a.want.cmp(&b.want))
        });
        cands.dedup();
    }
    ranked
}

/// What became of one want's attempt at an ABI.
#[derive(Debug)]
pub enum Outcome<T> {
    /// The tree is there.
    Got(T),
    /// The ABI's packages did not download, and why (the archive's answer per file).
    NotServed(String),
}

/// Take, for each (target, series), the first of its ranked candidates whose packages
/// download. Each round tries the head candidate of every (target, series) still open,
/// grouped by source (`line`) and ABI, with `attempt(abi, wants, say)`; a candidate whose
/// packages the archive did not serve is said (which target, which ABI of which source, the
/// archive's answer, and what is tried next) and the next one is tried in the next round.
/// A series whose every candidate failed is said, and left without a tree; any other
/// failure of `attempt` ends the fetch.
pub fn resolve<T>(
    mut ranked: BTreeMap<SeriesKey, Vec<Candidate>>,
    line: &dyn Fn(usize) -> String,
    label: &dyn Fn(usize) -> String,
    attempt: &mut Attempt<T>,
    say: &mut dyn FnMut(&str),
) -> Result<Vec<T>> {
    let mut got = Vec::new();
    loop {
        // (source, ABI) -> the (target, series) keys whose head candidate it is.
        let mut round: BTreeMap<(String, String), Vec<(SeriesKey, usize)>> = BTreeMap::new();
        for (key, cands) in &ranked {
            if let Some(c) = cands.first() {
                round
                    .entry((line(c.want), c.abi.clone()))
                    .or_default()
                    .push((key.clone(), c.want));
            }
        }
        if round.is_empty() {
            return Ok(got);
        }
        for ((_, abi), members) in round {
            let wants: Vec<usize> = members.iter().map(|(_, w)| *w).collect();
            let outcomes = attempt(&abi, &wants, say)?;
            for ((key, want), outcome) in members.into_iter().zip(outcomes) {
                match outcome {
                    Outcome::Got(t) => {
                        got.push(t);
                        ranked.remove(&key);
                    }
                    Outcome::NotServed(why) => {
                        let cands = ranked.get_mut(&key).expect("a ranked key");
                        cands.remove(0);
                        let next = match cands.first() {
                            Some(c) => {
                                format!("taking the next newest, {} from {}", c.abi, label(c.want))
                            }
                            None => {
                                format!(
                                    "no other ABI of the {} series is left: none fetched",
                                    key.1
                                )
                            }
                        };
                        say(&format!(
                            "{}: skipping kernel ABI {abi} from {}: its packages do not download ({why}); {next}",
                            key.0,
                            label(want)
                        ));
                        if cands.is_empty() {
                            ranked.remove(&key);
                        }
                    }
                }
            }
        }
    }
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

/// Every ABI of this source with a headers package for the flavour and architecture, newest
/// first (bookworm-security carries several of both 6.1 and 6.12): [`rank`] orders them with
/// the other sources' and [`resolve`] takes the first that downloads.
fn indexed_abis(apt: &Apt, names: &[String], k: &DebianKernel) -> Result<Vec<String>> {
    let mut candidates: Vec<String> = names.iter().filter_map(|n| abi_of(n, &k.flavour)).collect();
    candidates.sort_by_key(|a| std::cmp::Reverse(abi_key(a)));
    candidates.dedup();
    let mut found: Vec<String> = Vec::new();
    for abi in candidates {
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
/// the source's sysroot for that ABI; trees already there are reused. Each want's own
/// packages (its flavour's headers, and with `images` its kernel image, which
/// [`fetch_boot`] then finds downloaded) are downloaded first: a want whose packages the
/// archive does not serve is [`Outcome::NotServed`], and costs the others nothing. One
/// outcome per want, in order.
fn fetch_abi(
    home: &Home,
    apt: &Apt,
    abi: &str,
    wants: &[&Want],
    images: bool,
    say: &mut dyn FnMut(&str),
) -> Result<Vec<Outcome<FetchedTree>>> {
    let source = &wants[0].source;
    let sysroot = sysroot_of(home, source, abi);
    let mut outcomes: Vec<Option<Outcome<FetchedTree>>> = wants
        .iter()
        .map(|w| existing(&sysroot, abi, w).map(Outcome::Got))
        .collect();
    let missing: Vec<&Want> = wants
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.is_none())
        .map(|(w, _)| *w)
        .collect();
    if missing.is_empty() {
        return Ok(outcomes.into_iter().flatten().collect());
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
    // What each missing want needs of its own, and what they share.
    let mut own: Vec<Vec<String>> = Vec::new();
    let mut shared: Vec<String> = Vec::new();
    let mut versions = BTreeMap::new();
    let mut why_not: Vec<Option<String>> = vec![None; missing.len()];
    for (j, (w, p)) in missing.iter().zip(&flavours).enumerate() {
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
            if !shared.contains(&dep) {
                shared.push(dep);
            }
        }
        let mut mine = vec![qualified[j].clone()];
        if images {
            let k = &w.source.kernel;
            match image_package(apt, abi, k)? {
                Some(image) => mine.push(format!("{image}:{}", k.arch)),
                None => {
                    why_not[j] = Some(format!(
                        "the index has no linux-image-{abi}-{}:{}",
                        k.flavour, k.arch
                    ))
                }
            }
        }
        own.push(mine);
    }
    let debs = apt.dir.join("debs").join(abi);
    // Only this download's packages: an older upload of the same ABI must not be unpacked.
    let _ = std::fs::remove_dir_all(&debs);
    let theirs: Vec<String> = own
        .iter()
        .zip(&why_not)
        .filter(|(_, why)| why.is_none())
        .flat_map(|(mine, _)| mine.iter().cloned())
        .collect();
    say(&format!(
        "Downloading {} packages: {}",
        theirs.len(),
        theirs.join(" ")
    ));
    let not_served = apt.download_served(&theirs, &debs)?;
    let answers = |pkgs: &[String]| -> Option<String> {
        let bare = |p: &String| p.split(':').next().unwrap_or(p).to_string();
        let said: Vec<String> = not_served
            .iter()
            .filter(|(p, _)| pkgs.iter().any(|q| bare(q) == *p))
            .map(|(p, answer)| format!("{p}: {answer}"))
            .collect();
        (!said.is_empty()).then(|| said.join(", "))
    };
    for (j, mine) in own.iter().enumerate() {
        if why_not[j].is_none() {
            why_not[j] = answers(mine);
        }
    }
    let served: Vec<usize> = (0..missing.len())
        .filter(|j| why_not[*j].is_none())
        .collect();
    if !served.is_empty() {
        say(&format!(
            "Downloading {} packages: {}",
            shared.len(),
            shared.join(" ")
        ));
        let not_served = apt.download_served(&shared, &debs)?;
        if let Some(why) = (!not_served.is_empty()).then(|| {
            let said: Vec<String> = not_served
                .iter()
                .map(|(p, answer)| format!("{p}: {answer}"))
                .collect();
            said.join(", ")
        }) {
            for j in &served {
                why_not[*j] = Some(why.clone());
            }
        } else {
            // Only the headers are unpacked here (the images wait in `debs` for `fetch_boot`).
            let headers: Vec<String> = qualified
                .iter()
                .chain(&shared)
                .map(|p| p.split(':').next().unwrap_or(p).to_string())
                .collect();
            let theirs: Vec<String> = served.iter().map(|j| flavours[*j].clone()).collect();
            say("Unpacking");
            unpack_trees(home, &sysroot, &debs, &headers, &theirs)?;
        }
    }
    let mut fresh = missing
        .iter()
        .zip(&flavours)
        .zip(why_not)
        .map(|((w, p), why)| match why {
            Some(why) => Outcome::NotServed(why),
            None => Outcome::Got(FetchedTree {
                target: w.target.clone(),
                origin: format!("{} {p} {}", source.label(), versions[p]),
                kdir: sysroot.join("usr/src").join(p),
                new: true,
                abi: abi.to_string(),
                sysroot: sysroot.clone(),
                source: w.source.clone(),
            }),
        });
    for o in outcomes.iter_mut().filter(|o| o.is_none()) {
        *o = fresh.next();
    }
    Ok(outcomes.into_iter().flatten().collect())
}

/// Unpack the downloaded `debs` of `packages` into a staging directory next to `sysroot`,
/// then move the shared parts (kbuild tools, common parts), then each of `flavours`' trees,
/// into place: a flavour in the sysroot implies what it needs is there.
fn unpack_trees(
    home: &Home,
    sysroot: &Path,
    debs: &Path,
    packages: &[String],
    flavours: &[String],
) -> Result<()> {
    let trees = home.trees();
    std::fs::create_dir_all(&trees).map_err(|e| Error::io("create directory", &trees, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(&trees)
        .map_err(|e| Error::io("create a directory in", &trees, e))?;
    // `<package>_<version>_<arch>.deb`, as apt-get download names them.
    let mut deb_files: Vec<PathBuf> = std::fs::read_dir(debs)
        .map_err(|e| Error::io("read directory", debs, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            packages.iter().any(|k| name.split('_').next() == Some(k))
        })
        .collect();
    deb_files.sort();
    for deb in &deb_files {
        super::apt::dpkg_extract(deb, staging.path())?;
    }
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
    for p in flavours {
        let kdir = sysroot.join("usr/src").join(p);
        if !kdir.join("Makefile").exists() {
            return Err(Error::env(format!(
                "the unpacked package did not provide {}",
                kdir.display()
            )));
        }
    }
    Ok(())
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
        // One state per source, prepared once. The downloads go one after the other (apt
        // and the lock are one); the unpacking (dpkg-deb's xz, depmod: CPU) runs in parallel
        // below, once per image: trees of two targets on one kernel (rpi3 on arm64's) share
        // its files.
        let mut apts: BTreeMap<String, Apt> = BTreeMap::new();
        let mut unpacks: Vec<(&BootRequest, PathBuf, PathBuf)> = Vec::new();
        for t in missing {
            if unpacks
                .iter()
                .any(|(u, _, _)| u.tree.sysroot == t.tree.sysroot && u.release == t.release)
            {
                continue;
            }
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
            let image_pkg = image_package(apt, abi, d)?.ok_or_else(|| {
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
            unpacks.push((t, image, busybox));
        }
        unpacks
            .par_iter()
            .map(|(t, image, busybox)| {
                let arch = &t.tree.source.kernel.arch;
                install_boot(&t.tree.sysroot, &t.release, arch, image, busybox)
            })
            .collect::<Result<Vec<()>>>()?;
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

/// The image package of an ABI's flavour in the index, if any: the signed image is what users
/// run; some architectures (armhf) only have that name, others also ship `-unsigned` with the
/// same kernel.
fn image_package(apt: &Apt, abi: &str, d: &DebianKernel) -> Result<Option<String>> {
    let signed = format!("linux-image-{abi}-{}", d.flavour);
    let unsigned = format!("{signed}-unsigned");
    for p in [signed, unsigned] {
        if apt.show(&[format!("{p}:{}", d.arch)])?.is_some() {
            return Ok(Some(p));
        }
    }
    Ok(None)
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

    /// The ABIs of the rpi flavour in trixie (want 0) and trixie-security (want 1) as this
    /// machine's mirror had them on 2026-12-07, and armhf's in trixie-security (want 2).
    fn trixie_candidates() -> Vec<(String, Candidate)> {
        let c = |t: &str, abi: &str, want: usize| {
            (
                t.to_string(),
                Candidate {
                    abi: abi.to_string(),
                    want,
                },
            )
        };
        vec![
            c("rpi", "6.12.117+deb13", 0),
            c("rpi", "6.12.107+deb13", 0),
            c("rpi", "6.12.118+deb13", 1),
            c("rpi", "6.12.117+deb13", 1),
            c("rpi", "6.12.116+deb13", 1),
            c("rpi", "6.12.115+deb13.1", 1),
            c("rpi", "6.12.113+deb13", 1),
            c("rpi", "6.1.0-50", 3),
            c("armhf", "6.12.118+deb13", 2),
        ]
    }

    #[test]
    fn candidates_rank_newest_first_and_the_first_listed_source_on_a_tie() {
        let ranked = rank(trixie_candidates());
        let order: Vec<(String, usize)> = ranked[&("rpi".to_string(), "6.12+deb13".to_string())]
            .iter()
            .map(|c| (c.abi.clone(), c.want))
            .collect();
        let want = [
            ("6.12.118+deb13", 1),
            ("6.12.117+deb13", 0),
            ("6.12.117+deb13", 1),
            ("6.12.116+deb13", 1),
            ("6.12.115+deb13.1", 1),
            ("6.12.113+deb13", 1),
            ("6.12.107+deb13", 0),
        ];
        assert_eq!(
            order,
            want.map(|(a, w)| (a.to_string(), w)).to_vec(),
            "{ranked:?}"
        );
        // Another series of the same target, and another target, are ranked apart.
        assert_eq!(ranked[&("rpi".to_string(), "6.1".to_string())].len(), 1);
        assert_eq!(ranked.len(), 3);
    }

    /// What each (target, series) got (want, ABI), what was said, and the (ABI, wants) tried.
    type Resolved = (Vec<(usize, String)>, Vec<String>, Vec<(String, Vec<usize>)>);

    /// Runs [`resolve`] over the trixie candidates with an archive that does not serve the
    /// (ABI, want) pairs in `withheld`: what each (target, series) got, what was said, and
    /// the groups tried.
    fn resolve_with(withheld: &[(&str, usize)]) -> Resolved {
        let line =
            |i: usize| ["trixie", "trixie-security", "trixie-security", "bookworm"][i].to_string();
        let label = |i: usize| format!("debian {}", line(i));
        let mut tried = Vec::new();
        let mut said = Vec::new();
        let got = resolve(
            rank(trixie_candidates()),
            &line,
            &label,
            &mut |abi, wants, _| {
                tried.push((abi.to_string(), wants.to_vec()));
                Ok(wants
                    .iter()
                    .map(|&w| {
                        if withheld.contains(&(abi, w)) {
                            Outcome::NotServed(format!("linux-headers-{abi}-x: 404 Not Found"))
                        } else {
                            Outcome::Got((w, abi.to_string()))
                        }
                    })
                    .collect())
            },
            &mut |l| said.push(l.to_string()),
        )
        .unwrap();
        (got, said, tried)
    }

    #[test]
    fn an_abi_that_does_not_download_gives_way_to_the_next_newest_and_is_said() {
        // This mirror: trixie-security's 118, 117, 116 and 115.1 and trixie's 117 of the rpi
        // flavour 404; armhf's 118, in the same group as rpi's, downloads.
        let withheld = [
            ("6.12.118+deb13", 1),
            ("6.12.117+deb13", 0),
            ("6.12.117+deb13", 1),
            ("6.12.116+deb13", 1),
            ("6.12.115+deb13.1", 1),
        ];
        let (mut got, said, tried) = resolve_with(&withheld);
        got.sort();
        assert_eq!(
            got,
            [
                (1, "6.12.113+deb13".to_string()),
                (2, "6.12.118+deb13".to_string()),
                (3, "6.1.0-50".to_string())
            ]
        );
        // rpi and armhf shared one attempt at trixie-security's 118; only rpi moved on.
        assert!(
            tried
                .iter()
                .any(|(a, w)| a == "6.12.118+deb13" && w.len() == 2),
            "{tried:?}"
        );
        assert_eq!(said.len(), 5, "{said:?}");
        assert_eq!(
            said[0],
            "rpi: skipping kernel ABI 6.12.118+deb13 from debian trixie-security: its packages do not download (linux-headers-6.12.118+deb13-x: 404 Not Found); taking the next newest, 6.12.117+deb13 from debian trixie"
        );
        assert!(
            said[4].contains("6.12.115+deb13.1 from debian trixie-security")
                && said[4].ends_with(
                    "taking the next newest, 6.12.113+deb13 from debian trixie-security"
                ),
            "{said:?}"
        );
        // Nothing older than the ABI taken was tried.
        assert!(
            !tried.iter().any(|(a, _)| a == "6.12.107+deb13"),
            "{tried:?}"
        );
    }

    #[test]
    fn a_series_none_of_whose_abis_downloads_is_said_and_left_out() {
        let every: Vec<(&str, usize)> = trixie_candidates()
            .iter()
            .filter(|(t, c)| t == "rpi" && c.abi.contains("deb13"))
            .map(|(_, c)| (Box::leak(c.abi.clone().into_boxed_str()) as &str, c.want))
            .collect();
        let (mut got, said, _) = resolve_with(&every);
        got.sort();
        // The rpi target keeps its 6.1 tree; armhf is not held back by rpi.
        assert_eq!(
            got,
            [
                (2, "6.12.118+deb13".to_string()),
                (3, "6.1.0-50".to_string())
            ]
        );
        assert_eq!(said.len(), 7, "{said:?}");
        assert!(
            said[6].ends_with("no other ABI of the 6.12+deb13 series is left: none fetched"),
            "{said:?}"
        );
        // With nothing withheld, the newest of each series, and nothing said.
        let (mut got, said, _) = resolve_with(&[]);
        got.sort();
        assert_eq!(got[0], (1, "6.12.118+deb13".to_string()));
        assert!(said.is_empty(), "{said:?}");
    }

    #[test]
    fn a_failure_other_than_the_archives_answer_ends_the_fetch() {
        let err = resolve::<()>(
            rank(trixie_candidates()),
            &|i| i.to_string(),
            &|i| i.to_string(),
            &mut |_, _, _| Err(Error::env("no network")),
            &mut |_| {},
        );
        assert!(err.is_err());
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

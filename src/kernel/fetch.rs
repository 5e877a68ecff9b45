//! Provisioning kernel build trees from Debian's `linux-headers` packages.
//!
//! Debian ships, per architecture, prepared build trees (`linux-headers-<ABI>-<flavour>`)
//! plus an arch-independent `-common` part and the host build tools (`linux-kbuild-<series>`,
//! whose amd64 binaries serve every target tree). kmx fetches them with a PRIVATE apt state
//! under `$KMX_HOME/apt` (its own lists, cache, sources and architecture list), so it never
//! changes the system's dpkg architectures and works as non-root, then unpacks them with
//! `dpkg-deb -x` into one sysroot per ABI (`$KMX_HOME/trees/debian-<ABI>/`).
//!
//! One fix makes the sysroot relocatable: each flavour's `Makefile` is a single absolute
//! `include /usr/src/linux-headers-<ABI>-common/Makefile`, rewritten here relative to the
//! flavour directory.
//!
//! Atomicity: packages are unpacked into a staging directory; each tree directory is then
//! renamed into the sysroot (shared parts first), so a tree is either complete or absent.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::config::profile::DebianKernel;
use crate::error::{Error, Kind, Result};
use crate::kernel::registry::BootFiles;
use crate::process;
use crate::state::Home;

/// What to fetch, resolved from the command line and the target profiles.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// (target name, where Debian publishes its kernels)
    pub targets: Vec<(String, DebianKernel)>,
    /// A pinned ABI such as `6.1.0-50`; `None` picks the newest available for every target.
    pub abi: Option<String>,
    pub mirror: String,
    pub suite: String,
    /// Refresh the package lists even if they are recent.
    pub refresh: bool,
}

pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
pub const DEFAULT_SUITE: &str = "bookworm";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Package lists younger than this are reused without `apt-get update`.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A tree that is now on disk, ready to be inspected and registered.
#[derive(Debug, Clone)]
pub struct FetchedTree {
    pub target: String,
    pub kdir: PathBuf,
    pub origin: String,
    /// False when the tree was already there and nothing was downloaded for it.
    pub new: bool,
    /// The Debian kernel ABI, e.g. `6.1.0-50`.
    pub abi: String,
    /// The sysroot the tree lives in (`$KMX_HOME/trees/debian-<ABI>`).
    pub sysroot: PathBuf,
}

/// The private apt state: every apt call kmx makes goes through here.
struct Apt {
    dir: PathBuf,
    config: PathBuf,
}

impl Apt {
    fn prepare(home: &Home, req: &FetchRequest, archs: &[String]) -> Result<Apt> {
        if !Path::new(KEYRING).exists() {
            return Err(Error::env(format!("{KEYRING} is missing"))
                .hint("install Debian's archive keyring: apt-get install debian-archive-keyring"));
        }
        which::which("apt-get").map_err(|_| {
            Error::env("apt-get not found: kmx fetches kernel trees with apt")
                .hint("run kmx on Debian or a derivative, or point a target at kernel trees with [kernels] paths")
        })?;
        let dir = home.apt();
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "etc/apt.conf.d",
            "etc/preferences.d",
            "etc/sources.list.d",
        ] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| Error::io("create directory", &p, e))?;
        }
        let status = dir.join("status");
        if !status.exists() {
            std::fs::write(&status, b"").map_err(|e| Error::io("create", &status, e))?;
        }
        let sources = format!(
            "deb [signed-by={KEYRING}] {} {} main\n",
            req.mirror, req.suite
        );
        write_if_changed(&dir.join("etc/sources.list"), &sources)?;
        let user = std::env::var("USER").ok().filter(|u| !u.is_empty());
        let user = if crate::process::is_root() {
            "root".to_string()
        } else {
            user.unwrap_or_else(|| "root".into())
        };
        let d = dir.display();
        let arch_list: String = archs.iter().map(|a| format!("\"{a}\"; ")).collect();
        let conf = format!(
            "Dir::State \"{d}\";\nDir::State::Lists \"{d}/lists\";\nDir::State::status \"{d}/status\";\n\
             Dir::Cache \"{d}/cache\";\nDir::Etc \"{d}/etc\";\nDir::Etc::SourceList \"{d}/etc/sources.list\";\n\
             Dir::Etc::SourceParts \"{d}/etc/sources.list.d\";\nDir::Etc::Parts \"{d}/etc/apt.conf.d\";\n\
             Dir::Etc::Preferences \"{d}/etc/preferences\";\nDir::Etc::PreferencesParts \"{d}/etc/preferences.d\";\n\
             APT::Architecture \"{host}\";\nAPT::Architectures {{ {arch_list}}};\nAcquire::Languages \"none\";\n\
             Acquire::GzipIndexes \"true\";\nAcquire::IndexTargets::deb::Contents-deb::DefaultEnabled \"false\";\n\
             APT::Sandbox::User \"{user}\";\nDebug::NoLocking \"true\";\n",
            host = host_debian_arch(),
        );
        let config = dir.join("apt.conf");
        write_if_changed(&config, &conf)?;
        Ok(Apt { dir, config })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("APT_CONFIG", &self.config).env("LC_ALL", "C");
        cmd
    }

    fn lists_fresh(&self) -> bool {
        let stamp = self.dir.join("lists/.kmx-updated");
        std::fs::metadata(stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE)
    }

    fn update(&self, mirror: &str) -> Result<()> {
        let hint = "kmx needs the network to reach the Debian mirror (set --mirror or KMX_DEBIAN_MIRROR for another one)";
        let out = process::output(
            self.cmd("apt-get").args(["-q", "update"]),
            Kind::Environment,
        )
        .map_err(|e| e.hint(hint))?;
        // apt-get update exits 0 when every download failed: read what it said.
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let failures: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("Err:") || l.starts_with("E:") || l.starts_with("W: Failed to fetch")
            })
            .take(3)
            .collect();
        if !failures.is_empty() {
            return Err(
                Error::env(format!("cannot update the package lists from {mirror}"))
                    .caused_by(failures.join("\n"))
                    .hint(hint),
            );
        }
        let stamp = self.dir.join("lists/.kmx-updated");
        std::fs::write(&stamp, b"").map_err(|e| Error::io("write", &stamp, e))
    }

    /// `apt-cache show` for `pkgs`: `Some(text)` if every package exists, `None` if one does
    /// not; an apt that fails otherwise (a broken state, unreadable lists) is an error.
    fn show(&self, pkgs: &[String]) -> Result<Option<String>> {
        let mut cmd = self.cmd("apt-cache");
        cmd.args(["show", "--no-all-versions"]).args(pkgs);
        let out = cmd.output().map_err(|e| process::spawn_error(&cmd, e))?;
        if out.status.success() {
            return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No packages found") || stderr.contains("Unable to locate package") {
            return Ok(None);
        }
        Err(Error::env(format!(
            "`{}` failed: {}",
            process::display_args(&cmd),
            process::describe_status(out.status)
        ))
        .caused_by(process::tail(&out.stderr, 4))
        .hint(format!(
            "kmx's apt state in {} may be damaged: run `kmx kernels fetch --refresh`, or delete it",
            self.dir.display()
        )))
    }

    fn pkgnames(&self, prefix: &str) -> Result<Vec<String>> {
        let out = process::output(
            self.cmd("apt-cache").args(["pkgnames", prefix]),
            Kind::Environment,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }
}

/// The dpkg architecture of this host (the kbuild host tools must run here).
pub fn host_debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "i386",
        "aarch64" => "arm64",
        "arm" => "armhf",
        "powerpc64" => "ppc64el",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    std::fs::write(path, text).map_err(|e| Error::io("write", path, e))
}

/// Compare Debian kernel ABIs like `6.1.0-50` numerically, component by component.
fn abi_key(abi: &str) -> Vec<u64> {
    abi.split(['.', '-'])
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// The ABI part of `linux-headers-<ABI>-<flavour>` (ABI = `N.N.N-N`).
fn abi_of(pkg: &str, flavour: &str) -> Option<String> {
    let abi = pkg
        .strip_prefix("linux-headers-")?
        .strip_suffix(&format!("-{flavour}"))?;
    let (ver, num) = abi.rsplit_once('-')?;
    let ok = num.chars().all(|c| c.is_ascii_digit())
        && !num.is_empty()
        && ver.split('.').count() == 3
        && ver
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    ok.then(|| abi.to_string())
}

fn field<'a>(stanza: &'a str, name: &str) -> Option<&'a str> {
    stanza
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

/// Fetch (or find already fetched) trees for every requested target. `say` receives
/// progress lines.
pub fn fetch(
    home: &Home,
    req: &FetchRequest,
    say: &mut dyn FnMut(&str),
) -> Result<Vec<FetchedTree>> {
    let host = host_debian_arch().to_string();
    let mut archs: Vec<String> = vec![host.clone()];
    for (_, d) in &req.targets {
        if !archs.contains(&d.arch) {
            archs.push(d.arch.clone());
        }
    }
    // A pinned ABI whose trees are all present needs no apt at all.
    if let Some(abi) = &req.abi {
        let sysroot = home.trees().join(format!("debian-{abi}"));
        let present: Vec<FetchedTree> = req
            .targets
            .iter()
            .filter_map(|(t, d)| existing(&sysroot, abi, t, d))
            .collect();
        if present.len() == req.targets.len() {
            say(&format!("Kernel trees for ABI {abi} are already present"));
            return Ok(present);
        }
    }
    let apt = Apt::prepare(home, req, &archs)?;
    // One fetch at a time per home: apt's own locking is off in the private state.
    let _lock =
        crate::state::store::lock_file(&apt.dir.join("lock"), true, "the kernel tree cache")?;
    if req.refresh || !apt.lists_fresh() {
        say(&format!(
            "Updating package lists from {} {} ({})",
            req.mirror,
            req.suite,
            archs.join(", ")
        ));
        apt.update(&req.mirror)?;
    }
    let abi = match &req.abi {
        Some(abi) => abi.clone(),
        None => resolve_abi(&apt, &req.targets)?,
    };
    say(&format!("Using Debian kernel ABI {abi}"));
    let sysroot = home.trees().join(format!("debian-{abi}"));
    let mut result = Vec::new();
    let mut missing = Vec::new();
    for (target, d) in &req.targets {
        match existing(&sysroot, &abi, target, d) {
            Some(tree) => result.push(tree),
            None => missing.push((target.clone(), d.clone())),
        }
    }
    if missing.is_empty() {
        say("All requested trees are already present");
        return Ok(result);
    }
    // Which packages: the flavours, the common part, and the host build tools.
    let flavour_pkgs: Vec<String> = missing
        .iter()
        .map(|(_, d)| format!("linux-headers-{abi}-{}:{}", d.flavour, d.arch))
        .collect();
    let info = apt.show(&flavour_pkgs)?.ok_or_else(|| {
        Error::env(format!(
            "Debian {} has no linux-headers packages for ABI {abi} for: {}",
            req.suite,
            flavour_pkgs.join(" ")
        ))
        .hint("pick an ABI that exists (omit --abi to let kmx choose), or run with --refresh")
    })?;
    let version = field(&info, "Version").unwrap_or("").to_string();
    let kbuild = field(&info, "Depends")
        .and_then(|deps| {
            deps.split(',')
                .map(str::trim)
                .find(|d| d.starts_with("linux-kbuild-"))
        })
        .and_then(|d| d.split_whitespace().next())
        .ok_or_else(|| {
            Error::env(format!(
                "cannot find the linux-kbuild dependency of {}",
                flavour_pkgs[0]
            ))
        })?
        .to_string();
    let mut pkgs = flavour_pkgs.clone();
    pkgs.push(format!("linux-headers-{abi}-common"));
    pkgs.push(format!("{kbuild}:{host}"));
    let debs = apt.dir.join("debs").join(&abi);
    // Only this download's packages: an older upload of the same ABI must not be unpacked.
    let _ = std::fs::remove_dir_all(&debs);
    std::fs::create_dir_all(&debs).map_err(|e| Error::io("create directory", &debs, e))?;
    say(&format!(
        "Downloading {} packages: {}",
        pkgs.len(),
        pkgs.join(" ")
    ));
    process::output(
        apt.cmd("apt-get").args(["-q", "download"]).args(&pkgs).current_dir(&debs),
        Kind::Environment,
    )
    .map_err(|e| e.hint("check the network and the mirror; `kmx kernels fetch --refresh` updates the package lists"))?;

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
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            pkgs.iter().any(|pkg| {
                let base = pkg.split(':').next().unwrap_or(pkg);
                name.starts_with(&format!("{base}_"))
            })
        })
        .collect();
    deb_files.sort();
    for deb in &deb_files {
        process::output(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(deb)
                .arg(staging.path()),
            Kind::Environment,
        )
        .map_err(|e| e.hint("dpkg-deb comes with dpkg: apt-get install dpkg"))?;
    }
    // Shared parts first (kbuild tools, -common), then each flavour.
    let mut moves: Vec<PathBuf> = Vec::new();
    let series = kbuild.trim_start_matches("linux-kbuild-");
    moves.push(PathBuf::from(format!("usr/lib/linux-kbuild-{series}")));
    moves.push(PathBuf::from(format!("usr/src/linux-kbuild-{series}")));
    moves.push(PathBuf::from(format!("usr/src/linux-headers-{abi}-common")));
    for (_, d) in &missing {
        moves.push(PathBuf::from(format!(
            "usr/src/linux-headers-{abi}-{}",
            d.flavour
        )));
    }
    for rel in &moves {
        let from = staging.path().join(rel);
        let to = sysroot.join(rel);
        if !from.exists() || to.exists() {
            continue;
        }
        if rel.starts_with("usr/src") && rel.to_string_lossy().contains("linux-headers-") {
            relocate_makefile(&from)?;
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io("create directory", parent, e))?;
        }
        std::fs::rename(&from, &to).map_err(|e| Error::io("move into place", &to, e))?;
    }
    for (target, d) in &missing {
        let kdir = sysroot.join(format!("usr/src/linux-headers-{abi}-{}", d.flavour));
        if !kdir.join("Makefile").exists() {
            return Err(Error::env(format!(
                "the unpacked package did not provide {}",
                kdir.display()
            )));
        }
        result.push(FetchedTree {
            target: target.clone(),
            origin: format!(
                "debian {} linux-headers-{abi}-{} {version}",
                req.suite, d.flavour
            ),
            kdir,
            new: true,
            abi: abi.clone(),
            sysroot: sysroot.clone(),
        });
    }
    Ok(result)
}

fn existing(sysroot: &Path, abi: &str, target: &str, d: &DebianKernel) -> Option<FetchedTree> {
    let kdir = sysroot.join(format!("usr/src/linux-headers-{abi}-{}", d.flavour));
    kdir.join("Makefile").exists().then(|| FetchedTree {
        target: target.to_string(),
        origin: format!("debian linux-headers-{abi}-{}", d.flavour),
        kdir,
        new: false,
        abi: abi.to_string(),
        sysroot: sysroot.to_path_buf(),
    })
}

/// The newest ABI for which every requested target has a headers package.
fn resolve_abi(apt: &Apt, targets: &[(String, DebianKernel)]) -> Result<String> {
    let names = apt.pkgnames("linux-headers-")?;
    let Some((_, first)) = targets.first() else {
        return Err(Error::usage("no target to fetch kernel trees for"));
    };
    let mut candidates: Vec<String> = names
        .iter()
        .filter_map(|n| abi_of(n, &first.flavour))
        .collect();
    candidates.sort_by_key(|a| std::cmp::Reverse(abi_key(a)));
    candidates.dedup();
    for abi in &candidates {
        let pkgs: Vec<String> = targets
            .iter()
            .map(|(_, d)| format!("linux-headers-{abi}-{}:{}", d.flavour, d.arch))
            .collect();
        if apt.show(&pkgs)?.is_some() {
            return Ok(abi.clone());
        }
    }
    let wanted: Vec<String> = targets
        .iter()
        .map(|(t, d)| format!("{t} ({}:{})", d.flavour, d.arch))
        .collect();
    Err(Error::env(format!("no kernel ABI has linux-headers packages for every requested target: {}", wanted.join(", ")))
        .hint("fetch the targets one by one (--target), or run with --refresh to update the package lists"))
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
    pub debian: DebianKernel,
    /// The tree's kernel release (`6.1.0-50-amd64`): the image and module tree must match it.
    pub release: String,
}

/// Where the boot files of `release` live in a sysroot (present or not).
fn boot_paths(sysroot: &Path, release: &str, arch: &str) -> BootFiles {
    BootFiles {
        image: sysroot.join(format!("boot/vmlinuz-{release}")),
        modules_dir: sysroot.join(format!("lib/modules/{release}")),
        busybox: sysroot.join(format!("boot/busybox-{arch}")),
    }
}

/// The boot files of a tree when every one of them is on disk.
pub fn existing_boot(sysroot: &Path, release: &str, arch: &str) -> Option<BootFiles> {
    let b = boot_paths(sysroot, release, arch);
    (b.image.is_file() && b.modules_dir.join("modules.dep").is_file() && b.busybox.is_file())
        .then_some(b)
}

/// Fetch, for each tree, Debian's kernel image of the same release, its module tree
/// (with `modules.dep` made by `depmod -b`) and `busybox-static` for the architecture, into
/// the tree's sysroot: `boot/vmlinuz-<release>`, `lib/modules/<release>/`,
/// `boot/busybox-<arch>`. Each is unpacked in a staging directory and renamed into place,
/// the image last, so a tree's boot files are complete or absent. Trees whose files are
/// present cost nothing (no apt call).
pub fn fetch_boot(
    home: &Home,
    req: &FetchRequest,
    trees: &[BootRequest],
    say: &mut dyn FnMut(&str),
) -> Result<Vec<BootFiles>> {
    let missing: Vec<&BootRequest> = trees
        .iter()
        .filter(|t| existing_boot(&t.tree.sysroot, &t.release, &t.debian.arch).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(trees
            .iter()
            .map(|t| boot_paths(&t.tree.sysroot, &t.release, &t.debian.arch))
            .collect());
    }
    let host = host_debian_arch().to_string();
    let mut archs = vec![host];
    for t in &missing {
        if !archs.contains(&t.debian.arch) {
            archs.push(t.debian.arch.clone());
        }
    }
    let apt = Apt::prepare(home, req, &archs)?;
    // One fetch at a time per home: apt's own locking is off in the private state.
    let _lock =
        crate::state::store::lock_file(&apt.dir.join("lock"), true, "the kernel tree cache")?;
    if req.refresh || !apt.lists_fresh() {
        say(&format!(
            "Updating package lists from {} {}",
            req.mirror, req.suite
        ));
        apt.update(&req.mirror)?;
    }
    which::which("depmod").map_err(|_| {
        Error::env("depmod not found: kmx needs it to index the kernel's modules")
            .hint("apt-get install kmod")
    })?;
    for t in missing {
        let abi = &t.tree.abi;
        let d = &t.debian;
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
                "Debian {} has no linux-image-{abi}-{} package for {}",
                req.suite, d.flavour, d.arch
            ))
            .hint("run with --refresh, or pin an ABI that still has images with --abi")
        })?;
        let debs = apt.dir.join("debs").join(abi);
        std::fs::create_dir_all(&debs).map_err(|e| Error::io("create directory", &debs, e))?;
        let mut files = Vec::new();
        for pkg in [image_pkg.as_str(), "busybox-static"] {
            let deb = match downloaded(&debs, pkg, &d.arch) {
                Some(deb) => deb,
                None => {
                    say(&format!("Downloading {pkg}:{}", d.arch));
                    process::output(
                        apt.cmd("apt-get")
                            .args(["-q", "download"])
                            .arg(format!("{pkg}:{}", d.arch))
                            .current_dir(&debs),
                        Kind::Environment,
                    )
                    .map_err(|e| e.hint("check the network and the mirror; `kmx kernels fetch --refresh` updates the package lists"))?;
                    downloaded(&debs, pkg, &d.arch).ok_or_else(|| {
                        Error::env(format!("apt-get download left no {pkg} package")).at(&debs)
                    })?
                }
            };
            files.push(deb);
        }
        say(&format!("Unpacking {image_pkg}:{} and busybox", d.arch));
        install_boot(&t.tree.sysroot, &t.release, &d.arch, &files[0], &files[1])?;
    }
    trees
        .iter()
        .map(|t| {
            existing_boot(&t.tree.sysroot, &t.release, &t.debian.arch).ok_or_else(|| {
                Error::env(format!(
                    "the kernel image package did not provide boot/vmlinuz-{} with its modules",
                    t.release
                ))
                .at(&t.tree.sysroot)
                .hint("check that the tree's release matches the Debian ABI (kmx kernels list)")
            })
        })
        .collect()
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
        process::output(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(root),
            Kind::Environment,
        )
        .map_err(|e| e.hint("dpkg-deb comes with dpkg: apt-get install dpkg"))?;
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
    }

    #[test]
    fn abis_order_numerically() {
        let mut v = vec!["6.1.0-9", "6.1.0-50", "6.1.0-47", "6.12.0-1"];
        v.sort_by_key(|a| std::cmp::Reverse(abi_key(a)));
        assert_eq!(v, ["6.12.0-1", "6.1.0-50", "6.1.0-47", "6.1.0-9"]);
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

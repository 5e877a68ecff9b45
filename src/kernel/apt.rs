//! kmx's private apt states: one per kernel source (archive, suite, component, keyring),
//! under `$KMX_HOME/apt/<source>/`, with its own lists, cache, sources and architecture
//! list. The system's dpkg configuration is never read or changed, and it works as non-root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::config::profile::KernelSource;
use crate::error::{Error, Kind, Result};
use crate::process;
use crate::state::Home;

/// Package lists younger than this are reused without `apt-get update`.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The private apt state of one source: every apt call for it goes through here.
pub struct Apt {
    pub dir: PathBuf,
    config: PathBuf,
    /// What the lists were made from (sources line and architectures): lists made for
    /// another set are stale.
    stamp: String,
    source: KernelSource,
}

/// The directory name of a source's apt state: readable, and one per apt line.
fn state_name(source: &KernelSource) -> String {
    let url = source.url.split("://").nth(1).unwrap_or(&source.url);
    let mut name: String = format!("{url}_{}_{}", source.suite, source.component)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-+.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Two keyrings for one archive are two states.
    if source.keyring.as_path() != Path::new(crate::config::profile::DEBIAN_KEYRING) {
        name.push('_');
        name.push_str(&crate::digest::sha256(source.keyring.to_string_lossy().as_bytes())[..8]);
    }
    name
}

impl Apt {
    /// Make (or reuse) the state for `source`, able to see packages of `archs`.
    pub fn prepare(home: &Home, source: &KernelSource, archs: &[String]) -> Result<Apt> {
        if !source.keyring.exists() {
            let hint = if source.keyring.as_path()
                == Path::new(crate::config::profile::DEBIAN_KEYRING)
            {
                "install Debian's archive keyring: apt-get install debian-archive-keyring".into()
            } else {
                format!(
                    "put the archive's signing key there (as {} publishes it), or change `keyring` in the target's [[kernels.source]]",
                    source.url
                )
            };
            return Err(Error::env(format!("{} is missing", source.keyring.display())).hint(hint));
        }
        which::which("apt-get").map_err(|_| {
            Error::env("apt-get not found: kmx fetches kernel trees with apt")
                .hint("run kmx on Debian or a derivative, or point a target at kernel trees with [kernels] paths")
        })?;
        let dir = home.apt().join(state_name(source));
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
        let sources = format!("{}\n", source.apt_line());
        write_if_changed(&dir.join("etc/sources.list"), &sources)?;
        let user = if process::is_root() {
            "root".to_string()
        } else {
            std::env::var("USER")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "root".into())
        };
        let d = dir.display();
        // The architectures asked for, and those the lists already have (a later fetch for
        // fewer targets reuses them instead of updating for a smaller set).
        let mut archs: Vec<String> = archs.to_vec();
        if let Ok(stamp) = std::fs::read_to_string(dir.join("lists/.kmx-updated"))
            && let Some((line, listed)) = stamp.split_once('\n')
            && line == sources.trim_end()
        {
            archs.extend(listed.split_whitespace().map(str::to_string));
        }
        archs.sort();
        archs.dedup();
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
        Ok(Apt {
            dir,
            config,
            stamp: format!("{sources}{}\n", archs.join(" ")),
            source: source.clone(),
        })
    }

    pub fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("APT_CONFIG", &self.config).env("LC_ALL", "C");
        cmd
    }

    fn stamp_path(&self) -> PathBuf {
        self.dir.join("lists/.kmx-updated")
    }

    /// Lists made less than a day ago, for these sources and architectures.
    fn lists_fresh(&self) -> bool {
        let path = self.stamp_path();
        let young = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        young && std::fs::read_to_string(&path).is_ok_and(|s| s == self.stamp)
    }

    /// `apt-get update` unless the lists are fresh (or `refresh`).
    pub fn update(&self, refresh: bool, say: &mut dyn FnMut(&str)) -> Result<()> {
        if !refresh && self.lists_fresh() {
            return Ok(());
        }
        say(&format!(
            "Updating package lists of {} ({} {})",
            self.source.label(),
            self.source.url,
            self.source.component
        ));
        let hint = "kmx needs the network to reach the archive (for Debian, set --mirror or KMX_DEBIAN_MIRROR to use another mirror)";
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
                l.starts_with("Err:")
                    || l.starts_with("E:")
                    || l.starts_with("W: Failed to fetch")
                    || l.starts_with("W: GPG error")
            })
            .take(3)
            .collect();
        if !failures.is_empty() {
            return Err(Error::env(format!(
                "cannot update the package lists of {} from {}",
                self.source.label(),
                self.source.url
            ))
            .caused_by(failures.join("\n"))
            .hint(hint));
        }
        let stamp = self.stamp_path();
        std::fs::write(&stamp, &self.stamp).map_err(|e| Error::io("write", &stamp, e))
    }

    /// `apt-cache show` for `pkgs`: `Some(stanzas)` if every package exists, `None` if one
    /// does not; an apt that fails otherwise (a broken state, unreadable lists) is an error.
    pub fn show(&self, pkgs: &[String]) -> Result<Option<String>> {
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

    /// Every package name starting with `prefix`, in any architecture.
    pub fn pkgnames(&self, prefix: &str) -> Result<Vec<String>> {
        let out = process::output(
            self.cmd("apt-cache").args(["pkgnames", prefix]),
            Kind::Environment,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// `apt-get download pkgs` into `dir`.
    pub fn download(&self, pkgs: &[String], dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        process::output(
            self.cmd("apt-get")
                .args(["-q", "download"])
                .args(pkgs)
                .current_dir(dir),
            Kind::Environment,
        )
        .map(|_| ())
        .map_err(|e| {
            e.hint("check the network and the archive; `kmx kernels fetch --refresh` updates the package lists")
        })
    }
    /// `apt-get download pkgs` into `dir`, telling the packages the archive did not serve
    /// (HTTP 404 or 410, or a file that does not match its index: the index names a file the
    /// pool lacks) from a failure to reach the archive at all. Returns each package not
    /// served with what the archive answered; any other failure is an error.
    pub fn download_served(&self, pkgs: &[String], dir: &Path) -> Result<Vec<(String, String)>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        let mut cmd = self.cmd("apt-get");
        cmd.args(["-q", "download"]).args(pkgs).current_dir(dir);
        let out = cmd.output().map_err(|e| process::spawn_error(&cmd, e))?;
        if out.status.success() {
            return Ok(Vec::new());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        match not_served(&stderr) {
            Some(missing) => Ok(missing),
            None => Err(Error::env(format!(
                "`{}` failed: {}",
                process::display_args(&cmd),
                process::describe_status(out.status)
            ))
            .caused_by(process::tail(&out.stderr, 4))
            .hint("check the network and the archive; `kmx kernels fetch --refresh` updates the package lists")),
        }
    }

    /// Download `pkgs` and everything they depend on into `dir`: `apt-get install
    /// --download-only` against the state's empty dpkg status resolves the whole closure
    /// (no recommends), and nothing is installed.
    pub fn download_closure(&self, pkgs: &[String], dir: &Path) -> Result<()> {
        let partial = dir.join("partial");
        std::fs::create_dir_all(&partial)
            .map_err(|e| Error::io("create directory", &partial, e))?;
        process::output(
            self.cmd("apt-get")
                .args(["-q", "-y", "--no-install-recommends", "--download-only"])
                .arg("-o")
                .arg(format!("Dir::Cache::archives={}", dir.display()))
                .arg("install")
                .args(pkgs),
            Kind::Environment,
        )
        .map(|_| ())
        .map_err(|e| {
            e.hint("check the network and the archive; `kmx kernels fetch --refresh` updates the package lists")
        })
    }
}

/// The packages apt's `E: Failed to fetch <url>  <answer>` lines name, with the answer, when
/// every failure is the archive's answer for one file (not found, gone, or not the file its
/// index describes); `None` when apt failed otherwise (no network, a refused connection,
/// no failure line at all).
pub fn not_served(stderr: &str) -> Option<Vec<(String, String)>> {
    let mut missing = Vec::new();
    for line in stderr.lines().filter(|l| l.starts_with("E: ")) {
        let rest = line.strip_prefix("E: Failed to fetch ")?;
        let (url, answer) = rest.split_once(char::is_whitespace)?;
        let answer = answer.split(" [IP:").next().unwrap_or("").trim();
        let answer = answer.split_whitespace().collect::<Vec<_>>().join(" ");
        let archive_said = ["404 ", "410 "].iter().any(|c| answer.starts_with(c))
            || answer.starts_with("Hash Sum mismatch")
            || answer.starts_with("File has unexpected size");
        if !archive_said {
            return None;
        }
        let file = url
            .rsplit('/')
            .next()?
            .replace("%2b", "+")
            .replace("%2B", "+");
        let package = file.split('_').next()?.to_string();
        missing.push((package, answer));
    }
    (!missing.is_empty()).then_some(missing)
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

/// The value of `name:` in one package stanza.
pub fn field<'a>(stanza: &'a str, name: &str) -> Option<&'a str> {
    stanza
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

/// The stanza of package `pkg` in `apt-cache show` output.
pub fn stanza<'a>(text: &'a str, pkg: &str) -> Option<&'a str> {
    text.split("\n\n")
        .find(|s| field(s, "Package") == Some(pkg))
}

/// The packages a stanza depends on whose names start with `prefix` (first alternative of
/// each group, without version constraints).
pub fn depends_on(stanza: &str, prefix: &str) -> Vec<String> {
    field(stanza, "Depends")
        .unwrap_or("")
        .split(',')
        .filter_map(|group| group.split('|').next())
        .filter_map(|d| d.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// One fetch or removal at a time per home: apt's own locking is off in the private states.
/// Holding it, the single apt state earlier versions kept directly in `HOME/apt` (now one per
/// source) is removed: its lists and downloads are no longer read.
pub fn apt_lock(home: &Home) -> Result<crate::state::store::Lock> {
    let dir = home.apt();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
    let lock = crate::state::store::lock_file(&dir.join("lock"), true, "the kernel tree cache")?;
    for old in ["lists", "cache", "etc", "debs"] {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    for old in ["status", "apt.conf"] {
        let _ = std::fs::remove_file(dir.join(old));
    }
    Ok(lock)
}

/// Unpack a .deb's files into `into` (`dpkg-deb -x`: no maintainer scripts).
pub(crate) fn dpkg_extract(deb: &Path, into: &Path) -> Result<()> {
    process::output(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(into),
        Kind::Environment,
    )
    .map(|_| ())
    .map_err(|e| e.hint("dpkg-deb comes with dpkg: apt-get install dpkg"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_the_archive_did_not_serve_are_told_from_a_network_failure() {
        // apt-get download's stderr on this mirror (2026-12-07), one file found, two not.
        let err = "E: Failed to fetch http://deb.debian.org/debian-security/pool/updates/main/l/linux/linux-headers-6.12.117%2bdeb13-rpi_6.12.117-1_armel.deb  404  Not Found [IP: 203.0.113.80 80]\n\
                   E: Failed to fetch http://deb.debian.org/debian-security/pool/updates/main/l/linux/linux-image-6.12.116%2Bdeb13-rpi_6.12.116-1_armel.deb  Hash Sum mismatch\n";
        assert_eq!(
            not_served(err).unwrap(),
            [
                (
                    "linux-headers-6.12.117+deb13-rpi".to_string(),
                    "404 Not Found".to_string()
                ),
                (
                    "linux-image-6.12.116+deb13-rpi".to_string(),
                    "Hash Sum mismatch".to_string()
                )
            ]
        );
        // No archive answered: not a reason to take an older ABI.
        let down = "E: Failed to fetch http://deb.debian.org/debian/pool/main/l/linux/linux-kbuild-6.1_6.1.176-1_amd64.deb  Could not connect to deb.debian.org:80 (203.0.113.80), connection timed out\n";
        assert_eq!(not_served(down), None);
        // One file missing and the network lost for another: an error, not a fallback.
        assert_eq!(not_served(&format!("{err}{down}")), None);
        assert_eq!(not_served("E: Unable to locate package x\n"), None);
        assert_eq!(not_served(""), None);
    }

    #[test]
    fn dependencies_are_read_from_the_right_stanza() {
        let text = "Package: linux-headers-6.1.0-50-rpi\nVersion: 6.1.176-1\nDepends: linux-headers-6.1.0-50-common (= 6.1.176-1), linux-kbuild-6.1 (>= 6.1.176-1), linux-compiler-gcc-12-arm\n\n\
                    Package: linux-headers-6.12.95+deb12-arm64\nDepends: linux-base (>= 4.12~), linux-headers-6.12.95+deb12-common (= 6.12.95-1~bpo12+1), linux-image-6.12.95+deb12-arm64 (= 6.12.95-1~bpo12+1) | linux-image-6.12.95+deb12-arm64-unsigned (= 1), linux-kbuild-6.12.95+deb12, gcc-12\n";
        let s = stanza(text, "linux-headers-6.12.95+deb12-arm64").unwrap();
        assert_eq!(
            depends_on(s, "linux-headers-"),
            ["linux-headers-6.12.95+deb12-common"]
        );
        assert_eq!(
            depends_on(s, "linux-kbuild-"),
            ["linux-kbuild-6.12.95+deb12"]
        );
        let s = stanza(text, "linux-headers-6.1.0-50-rpi").unwrap();
        assert_eq!(field(s, "Version"), Some("6.1.176-1"));
        assert_eq!(depends_on(s, "linux-kbuild-"), ["linux-kbuild-6.1"]);
    }
}

//! Debian binary packages of built cells (`kmx package --format deb`): one package per
//! module x kernel release x target, shaped like Debian's prebuilt module packages
//! (module-assistant's `<module>-modules-<release>`), so image builders (mmdebstrap, debos,
//! live-build) install kmx's modules with dpkg like any other package.
//!
//! It owns the package's name, version, control file and maintainer scripts. The module
//! files themselves come from [`super::prepare_files`], exactly as `kmx install` writes them
//! (DEST_MODULE_LOCATION, compression, signature); the archive is made by `dpkg-deb`. It
//! reads the store and never writes it; every package is written under a temporary name in
//! the output directory and renamed into place.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Kind, Result};
use crate::process;
use crate::state::store::BuiltRecord;

/// What goes into one package besides the module files.
#[derive(Debug, Clone)]
pub struct Meta {
    /// The target's Debian architecture (`[debian] arch` of its profile).
    pub arch: String,
    /// The Depends field: the kernel's image package (`linux-image-<release>`).
    pub depends: String,
    /// The Maintainer field.
    pub maintainer: String,
}

/// One written package.
#[derive(Debug)]
pub struct Written {
    pub file: PathBuf,
    pub package: String,
    /// Every module in it carries a signature.
    pub signed: bool,
    pub notes: Vec<String>,
}

/// A name as Debian package names must be: lower case, `_` as `-`; None when another
/// character is left that Debian does not allow (`[a-z0-9+.-]`).
fn debian_word(s: &str) -> Option<String> {
    let w: String = s
        .chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    w.chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c))
        .then_some(w)
}

/// `<module>-modules-<release>`, as module-assistant names prebuilt module packages.
pub fn package_name(module: &str, release: &str) -> Result<String> {
    let bad = |what: &str, value: &str| {
        Error::usage(format!(
            "{what} `{value}` cannot be part of a Debian package name (letters, digits, `+`, `-`, `.` and `_` only)"
        ))
    };
    let m = debian_word(module).ok_or_else(|| bad("module name", module))?;
    let r = debian_word(release).ok_or_else(|| bad("kernel release", release))?;
    let name = format!("{m}-modules-{r}");
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(bad("module name", module));
    }
    Ok(name)
}

/// Check `version` is a Debian version (`[epoch:]upstream[-revision]`, the upstream part
/// starting with a digit) and return it without its epoch, for the file name.
pub fn check_version(module: &str, version: &str) -> Result<String> {
    let (epoch, rest) = match version.split_once(':') {
        Some((e, r)) => (Some(e), r),
        None => (None, version),
    };
    let ok = epoch.is_none_or(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()))
        && rest.starts_with(|c: char| c.is_ascii_digit())
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c))
        && !rest.ends_with('-');
    if !ok {
        return Err(Error::usage(format!(
            "{module}'s version `{version}` is not a Debian package version"
        ))
        .hint("Debian versions start with a digit and hold only letters, digits and `.+~-` (e.g. 1.0, 2.3-1, 0~git20240101): change PACKAGE_VERSION, `kmx add` the source again and rebuild"));
    }
    Ok(rest.to_string())
}

/// Check an architecture given by hand (`--arch`): a dpkg architecture name.
pub fn check_arch(arch: &str) -> Result<String> {
    let ok = arch.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && arch
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        return Err(Error::usage(format!(
            "`{arch}` is not a Debian architecture name"
        ))
        .hint("name one as dpkg does: amd64, i386, arm64, armhf, riscv64, ... (`dpkg-architecture -L` lists them)"));
    }
    Ok(arch.to_string())
}

/// The package's file name: `<package>_<version without epoch>_<arch>.deb`.
pub fn file_name(package: &str, version: &str, arch: &str) -> String {
    format!("{package}_{version}_{arch}.deb")
}

/// The control file.
fn control(built: &BuiltRecord, package: &str, meta: &Meta, installed_kib: u64) -> String {
    let modules: Vec<&str> = built.files.iter().map(|f| f.dest_name.as_str()).collect();
    format!(
        "Package: {package}\n\
         Source: {source}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: {maintainer}\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Provides: {source}-modules\n\
         Section: kernel\n\
         Priority: optional\n\
         Description: {module} {version} kernel modules for Linux {release}\n \
         The {module} modules ({list}) built by kmx for the {target} target against\n \
         kernel {release}, installed under /lib/modules/{release}.\n \
         .\n \
         vermagic: {vermagic}\n",
        source = debian_word(&built.module).unwrap_or_default(),
        version = built.version,
        arch = meta.arch,
        depends = meta.depends,
        maintainer = meta.maintainer,
        module = built.module,
        list = modules.join(", "),
        target = built.target,
        release = built.release,
        vermagic = built.vermagic,
    )
}

/// A maintainer script that runs depmod for `release` when `when` matches its first
/// argument: in the root dpkg installs into (`DPKG_ROOT`, set by `dpkg --root` with
/// `--force-script-chrootless`, as mmdebstrap does), or in `/` (also inside a chroot).
fn depmod_script(what: &str, release: &str, when: &str) -> String {
    format!(
        "#!/bin/sh\n\
         # {what} of a kernel module package written by kmx: rebuild modules.dep and friends\n\
         # for kernel {release}, where dpkg installs (DPKG_ROOT for a chrootless image root).\n\
         set -e\n\
         case \"$1\" in\n\
         \x20 {when})\n\
         \x20   if [ -d \"${{DPKG_ROOT:-}}/lib/modules/{release}\" ] && command -v depmod >/dev/null 2>&1; then\n\
         \x20     if [ -n \"${{DPKG_ROOT:-}}\" ]; then\n\
         \x20       depmod -b \"$DPKG_ROOT\" -a {release}\n\
         \x20     else\n\
         \x20       depmod -a {release}\n\
         \x20     fi\n\
         \x20   fi\n\
         \x20   ;;\n\
         esac\n\
         exit 0\n"
    )
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    crate::state::write_atomic_mode(path, bytes, Some(mode))
}

/// Write the package of the built cell `built` (files in `cell_dir`) into `out_dir`, its
/// modules prepared as `kmx install` prepares them (`opts`: the signing key and tool).
pub fn write(
    built: &BuiltRecord,
    cell_dir: &Path,
    opts: &super::Options,
    meta: &Meta,
    out_dir: &Path,
) -> Result<Written> {
    let package = package_name(&built.module, &built.release)?;
    let file_version = check_version(&built.module, &built.version)?;
    let stage = crate::state::tmp::dir_in(out_dir)?;
    let work = stage.path().join("work");
    let root = stage.path().join("root");
    for d in [&work, &root] {
        std::fs::create_dir_all(d).map_err(|e| Error::io("create directory", d, e))?;
    }
    let mut notes = Vec::new();
    // A Debian package: where DKMS puts modules on Debian.
    let location = super::distribution_location("debian");
    let files = super::prepare_files(built, cell_dir, opts, location, &work, &mut notes)?;
    let mut kib = 0;
    for f in &files {
        write_file(&root.join(&f.rel), &f.bytes, 0o644)?;
        kib += (f.bytes.len() as u64).div_ceil(1024);
    }
    let debian = root.join("DEBIAN");
    write_file(
        &debian.join("control"),
        control(built, &package, meta, kib).as_bytes(),
        0o644,
    )?;
    let scripts = [
        ("postinst", "configure"),
        (
            "postrm",
            "remove|purge|abort-install|abort-upgrade|disappear",
        ),
    ];
    for (name, when) in scripts {
        let text = depmod_script(name, &built.release, when);
        write_file(&debian.join(name), text.as_bytes(), 0o755)?;
    }
    let name = file_name(&package, &file_version, &meta.arch);
    let built_deb = stage.path().join(&name);
    let mut cmd = Command::new("dpkg-deb");
    cmd.args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(&built_deb);
    process::output(&mut cmd, Kind::Failed)
        .map_err(|e| e.hint_if_missing("install dpkg (it provides dpkg-deb)"))?;
    let dest = out_dir.join(&name);
    std::fs::rename(&built_deb, &dest).map_err(|e| Error::io("rename into place", &dest, e))?;
    Ok(Written {
        file: dest,
        package,
        signed: files.iter().all(|f| f.signed),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions_are_debians() {
        assert_eq!(
            package_name("hello", "6.1.0-50-arm64").unwrap(),
            "hello-modules-6.1.0-50-arm64"
        );
        assert_eq!(
            package_name("Demo_Drv", "6.1.0-50-686-pae").unwrap(),
            "demo-drv-modules-6.1.0-50-686-pae"
        );
        assert_eq!(
            package_name("wifi", "6.1 rc").unwrap_err().to_string(),
            "kernel release `6.1 rc` cannot be part of a Debian package name (letters, digits, `+`, `-`, `.` and `_` only)"
        );
        assert!(package_name("-x", "6.1").is_err());
        assert_eq!(check_version("m", "1.0").unwrap(), "1.0");
        assert_eq!(check_version("m", "2:2.3-1").unwrap(), "2.3-1");
        assert_eq!(
            check_version("m", "0~git20240101").unwrap(),
            "0~git20240101"
        );
        for bad in ["v1.0", "", "1.0-", "x:1.0", "1 0", "1_0"] {
            let err = check_version("m", bad).expect_err(bad);
            assert_eq!(
                err.to_string(),
                format!("m's version `{bad}` is not a Debian package version")
            );
        }
        assert_eq!(check_arch("riscv64").unwrap(), "riscv64");
        assert!(check_arch("arm 64").is_err() && check_arch("-x").is_err());
        assert_eq!(
            file_name("hello-modules-6.1.0-50-arm64", "1.0", "arm64"),
            "hello-modules-6.1.0-50-arm64_1.0_arm64.deb"
        );
    }

    #[test]
    fn the_scripts_run_depmod_for_the_release_in_the_root_dpkg_installs_into() {
        let s = depmod_script("postinst", "6.1.0-50-arm64", "configure");
        assert!(s.contains("  configure)\n"), "{s}");
        assert!(
            s.contains("depmod -b \"$DPKG_ROOT\" -a 6.1.0-50-arm64\n"),
            "{s}"
        );
        assert!(s.contains("      depmod -a 6.1.0-50-arm64\n"), "{s}");
        let out = Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(&s)
            .output()
            .unwrap();
        assert!(out.status.success(), "{s}");
    }
}

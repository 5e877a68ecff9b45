//! The native `kmx.toml` manifest: the dkms.conf concepts, typed, declarative, and checked
//! strictly (unknown keys are errors with file:line:col). Per-kernel choices resolve the way
//! DKMS resolves MAKE_MATCH/PATCH_MATCH: `[build] make` is the default, the last
//! `[[build.when]]` whose `kernel` regex matches the kernel release wins, and a `[[patch]]`
//! applies when it has no `kernel` regex or it matches. Command lines (`make`, hooks) are
//! shell command lines run at build time; nothing is expanded here. Pure parsing: no I/O but
//! reading the file.
//!
//! ```toml
//! depends = ["other-module"]
//! [package]
//! name = "hello"
//! version = "1.0"
//! autoinstall = true
//! [[module]]
//! name = "hello"              # built name, without .ko
//! location = "src"            # relative to the build dir; default: top
//! dest_location = "/updates/kmx"
//! [build]
//! make = "make -C $kernel_source_dir M=$PWD"
//! [[build.when]]
//! kernel = '^5\.'
//! make = "make LEGACY=1"
//! [[patch]]
//! file = "fix-6.6.patch"
//! kernel = '^6\.6\.'
//! [exclusive]
//! arch = "^(x86_64|aarch64)$"
//! kernel_min = "5.10"
//! config = ["CONFIG_PCI", "!CONFIG_PREEMPT_RT"]
//! ```

// crate::Error is 128+ bytes; boxing it is error.rs's call, not this module's.
#![allow(clippy::result_large_err)]

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::manifest::CellVars;
use super::manifest::{self, BuiltModule, Format, ModuleField, ModuleSpec};
use crate::{Error, Result};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    package: Package,
    #[serde(default)]
    depends: Vec<String>,
    #[serde(default)]
    module: Vec<Module>,
    #[serde(default)]
    build: Build,
    #[serde(default)]
    patch: Vec<Patch>,
    #[serde(default)]
    install: Install,
    #[serde(default)]
    exclusive: Exclusive,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Package {
    name: Spanned<String>,
    version: Spanned<String>,
    #[serde(default)]
    autoinstall: bool,
    #[serde(default)]
    no_weak_modules: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Module {
    name: Spanned<String>,
    #[serde(default)]
    location: String,
    dest_name: Option<Spanned<String>>,
    dest_location: Option<Spanned<String>>,
    #[serde(default = "yes")]
    strip: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Build {
    make: Option<String>,
    clean: Option<String>,
    pre_build: Option<String>,
    post_build: Option<String>,
    /// A pre_build / post_build that exits non-zero fails the cell (DKMS only warns).
    #[serde(default)]
    strict_scripts: bool,
    #[serde(default)]
    when: Vec<When>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct When {
    kernel: Spanned<String>,
    make: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    file: Spanned<PathBuf>,
    kernel: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Install {
    pre_install: Option<String>,
    post_install: Option<String>,
    post_remove: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Exclusive {
    kernel: Option<Spanned<String>>,
    kernel_min: Option<String>,
    kernel_max: Option<String>,
    arch: Option<Spanned<String>>,
    #[serde(default)]
    config: Vec<Spanned<String>>,
}

/// Load `kmx.toml` for one cell (the kernel release picks `when` and `patch` entries).
pub fn load(path: &Path, vars: &CellVars) -> Result<ModuleSpec> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    parse(path, &text, &vars.kernelver)
}

fn parse(path: &Path, text: &str, kernelver: &str) -> Result<ModuleSpec> {
    // An error at byte `pos` of the file.
    let err_at = |pos: usize, msg: String| {
        let before = &text[..pos.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Error::config(path, msg).line(line, col)
    };
    let f: File = toml::from_str(text).map_err(|e| {
        let msg = e.message().trim_end().to_string();
        match e.span() {
            Some(span) => err_at(span.start, msg),
            None => Error::config(path, msg),
        }
    })?;
    let regex = |re: &Spanned<String>, key: &str| -> Result<String> {
        manifest::ere(re.get_ref())
            .map(|_| re.get_ref().clone())
            .map_err(|e| {
                err_at(
                    re.span().start,
                    format!("{key} is not a valid regular expression"),
                )
                .caused_by(e)
            })
    };

    let p = &f.package;
    for (key, v) in [("name", &p.name), ("version", &p.version)] {
        let s = v.get_ref();
        if let Some(why) = super::manifest::invalid_identity(s) {
            return Err(err_at(
                v.span().start,
                format!("package {key} {s:?} cannot name a directory: {why}"),
            ));
        }
    }
    let mut spec = ModuleSpec::new(
        Format::KmxToml,
        p.name.get_ref().clone(),
        p.version.get_ref().clone(),
    );
    spec.autoinstall = p.autoinstall;
    spec.no_weak_modules = p.no_weak_modules;
    spec.build_depends = f.depends;

    for m in &f.module {
        let dest = m.dest_name.as_ref().unwrap_or(&m.name);
        let location = Spanned::new(m.name.span(), m.location.clone());
        let checked = [
            ("name", ModuleField::BuiltName, &m.name),
            ("location", ModuleField::BuiltLocation, &location),
            ("dest_name", ModuleField::DestName, dest),
        ];
        for (key, field, v) in checked.into_iter().chain(
            m.dest_location
                .iter()
                .map(|l| ("dest_location", ModuleField::DestLocation, l)),
        ) {
            if let Err(why) = manifest::check_module_field(field, v.get_ref()) {
                return Err(err_at(
                    v.span().start,
                    format!("module {key} {:?} {why}", v.get_ref()),
                ));
            }
        }
        let dest_location = match &m.dest_location {
            Some(loc) => manifest::trim_slashes(loc.get_ref()).to_string(),
            None => manifest::DEFAULT_DEST_LOCATION.to_string(),
        };
        spec.modules.push(BuiltModule {
            built_name: m.name.get_ref().clone(),
            built_location: PathBuf::from(manifest::trim_slashes(&m.location)),
            dest_name: dest.get_ref().clone(),
            dest_location,
            strip: m.strip,
        });
    }
    if spec.modules.is_empty() {
        spec.modules.push(BuiltModule {
            built_name: spec.name.clone(),
            built_location: PathBuf::new(),
            dest_name: spec.name.clone(),
            dest_location: manifest::DEFAULT_DEST_LOCATION.to_string(),
            strip: true,
        });
    }

    let b = f.build;
    spec.make = b.make;
    for w in &b.when {
        if manifest::ere(&regex(&w.kernel, "kernel")?).is_ok_and(|r| r.is_match(kernelver)) {
            spec.make = Some(w.make.clone());
        }
    }
    (spec.clean, spec.pre_build, spec.post_build) = (b.clean, b.pre_build, b.post_build);
    spec.strict_scripts = b.strict_scripts;
    for patch in &f.patch {
        if patch
            .file
            .get_ref()
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(err_at(
                patch.file.span().start,
                "patch file must be a relative path without '..'".into(),
            ));
        }
        let applies = match &patch.kernel {
            Some(re) => manifest::ere(&regex(re, "kernel")?).is_ok_and(|r| r.is_match(kernelver)),
            None => true,
        };
        if applies {
            spec.patches.push(patch.file.get_ref().clone());
        }
    }
    let i = f.install;
    (spec.pre_install, spec.post_install, spec.post_remove) =
        (i.pre_install, i.post_install, i.post_remove);

    let x = f.exclusive;
    spec.exclusive.kernel = x.kernel.as_ref().map(|r| regex(r, "kernel")).transpose()?;
    spec.exclusive.arch = x.arch.as_ref().map(|r| regex(r, "arch")).transpose()?;
    (spec.exclusive.kernel_min, spec.exclusive.kernel_max) = (x.kernel_min, x.kernel_max);
    for c in x.config {
        let name = c.get_ref().strip_prefix('!').unwrap_or(c.get_ref());
        if !name.starts_with("CONFIG_") || name.contains(char::is_whitespace) {
            return Err(err_at(
                c.span().start,
                format!(
                    "config entry {:?} is not CONFIG_X or !CONFIG_X",
                    c.get_ref()
                ),
            ));
        }
        spec.exclusive.config.push(c.into_inner());
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_spec;
    use crate::error::render;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/dkms")
            .join(name)
    }

    fn vars(kernelver: &str) -> (tempfile::TempDir, CellVars) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut v = CellVars::for_tests(tmp.path());
        v.kernelver = kernelver.into();
        (tmp, v)
    }

    fn err(text: &str) -> String {
        render(&parse(Path::new("kmx.toml"), text, "6.1.0").expect_err("must fail"))
    }

    #[test]
    fn full_manifest_resolves_per_kernel() {
        let (_t, v) = vars("6.6.13-amd64");
        let s = load(&fixture("toml-full/kmx.toml"), &v).expect("loads");
        assert_eq!(
            (s.name.as_str(), s.version.as_str(), s.autoinstall),
            ("wifi", "2.3-1", true)
        );
        assert_eq!(s.build_depends, ["cfg80211-backport"]);
        assert_eq!(
            s.modules,
            vec![
                BuiltModule {
                    built_name: "wifi_core".into(),
                    built_location: "core".into(),
                    dest_name: "wifi_core".into(),
                    dest_location: "/updates/kmx".into(),
                    strip: true,
                },
                BuiltModule {
                    built_name: "wifi_usb".into(),
                    built_location: "usb".into(),
                    dest_name: "wifi-usb".into(),
                    dest_location: "/kernel/drivers/net".into(),
                    strip: false,
                },
            ]
        );
        assert_eq!(s.make.as_deref(), Some("make six"));
        assert_eq!(
            s.patches,
            [PathBuf::from("all.patch"), PathBuf::from("six.patch")]
        );
        assert_eq!(s.post_install.as_deref(), Some("depmod -a"));
        assert_eq!(
            s.exclusion("6.6.13-amd64", &["aarch64", "arm64"], &|_| true)
                .as_deref(),
            Some(r#"[exclusive] arch = "^x86_64$" does not match aarch64 (target arm64)"#)
        );
        assert_eq!(
            s.exclusion("6.6.13-amd64", &["x86_64"], &|_| false)
                .as_deref(),
            Some("[exclusive] config: CONFIG_PCI is not set")
        );
        assert_eq!(
            s.exclusion("6.6.13-amd64", &["x86_64"], &|c| c == "CONFIG_PCI"),
            None
        );

        let (_t, v) = vars("5.10.0-28-amd64");
        let s = load(&fixture("toml-full/kmx.toml"), &v).expect("loads");
        assert_eq!(s.make.as_deref(), Some("make old"));
        assert_eq!(s.patches, [PathBuf::from("all.patch")]);
    }

    #[test]
    fn minimal_manifest_builds_the_package_module() {
        let s = parse(
            Path::new("kmx.toml"),
            "[package]\nname = \"hello\"\nversion = \"1\"\n",
            "6.1",
        )
        .expect("parses");
        assert_eq!(s.modules[0].built_name, "hello");
        assert_eq!(s.modules[0].dest_location, "/updates/kmx");
        assert_eq!((s.make, s.autoinstall), (None, false));
    }

    #[test]
    fn unknown_key_names_file_line_and_column() {
        let (_t, v) = vars("6.1.0");
        let path = fixture("toml-unknown-key/kmx.toml");
        let e = load(&path, &v).expect_err("must fail");
        assert_eq!(
            render(&e),
            format!(
                "error: {}:6:1: unknown field `lcation`, expected one of `name`, `location`, `dest_name`, `dest_location`, `strip`",
                path.display()
            )
        );
    }

    #[test]
    fn invalid_values_are_pinned() {
        assert_eq!(
            err(
                "[package]\nname = \"a\"\nversion = \"1\"\n[[build.when]]\nkernel = \"(\"\nmake = \"m\"\n"
            ),
            "error: kmx.toml:5:10: kernel is not a valid regular expression\n  caused by: regex parse error:\n    (\n    ^\nerror: unclosed group"
        );
        assert_eq!(
            err(
                "[package]\nname = \"a\"\nversion = \"1\"\n[[module]]\nname = \"a\"\ndest_location = \"/lib\"\n"
            ),
            "error: kmx.toml:6:17: module dest_location \"/lib\" does not start with /kernel, /updates or /extra"
        );
        assert_eq!(
            err("[package]\nname = \"a\"\nversion = \"1\"\n[exclusive]\nconfig = [\"PCI\"]\n"),
            "error: kmx.toml:5:11: config entry \"PCI\" is not CONFIG_X or !CONFIG_X"
        );
        assert_eq!(
            err("[package]\nname = \"a\"\n"),
            "error: kmx.toml:1:1: missing field `version`"
        );
    }

    #[test]
    fn kmx_toml_wins_over_dkms_conf() {
        let (_t, v) = vars("6.1.0");
        let s = load_spec(&fixture("both"), &v).expect("loads");
        assert_eq!((s.format, s.name.as_str()), (Format::KmxToml, "from-toml"));
    }
}

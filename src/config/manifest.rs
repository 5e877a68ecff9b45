//! The module manifest: what one module source directory asks kmx to build for one cell (one
//! source x one target x one kernel tree). Both input formats, `dkms.conf` ([`super::dkms`])
//! and the native `kmx.toml` ([`super::kmxtoml`]), produce the same [`ModuleSpec`], with every
//! per-kernel choice (MAKE_MATCH, PATCH_MATCH) already resolved for the cell. The
//! BUILD_EXCLUSIVE rules stay rules: [`ModuleSpec::exclusion`] decides whether the cell builds
//! and says which rule skipped it. Matching follows DKMS: regexes are POSIX ERE searched
//! anywhere in the string (bash `[[ =~ ]]`; the `regex` crate accepts the ERE subset these
//! files use), versions compare the way DKMS's `VER()` does. This module does no building.

// crate::Error is 128+ bytes; boxing it is error.rs's call, not this module's.
#![allow(clippy::result_large_err)]

use std::cmp::Ordering;
use std::path::PathBuf;

use regex::Regex;

/// Where modules go under `/lib/modules/<kver>` when `kmx.toml` does not say.
pub const DEFAULT_DEST_LOCATION: &str = "/updates/kmx";

/// Which file a [`ModuleSpec`] came from; rule names in messages follow its vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    DkmsConf,
    KmxToml,
}

/// One `.ko` the build must produce, and where it is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltModule {
    /// File name without `.ko` (BUILT_MODULE_NAME).
    pub built_name: String,
    /// Directory of the `.ko` relative to the build directory; empty = top.
    pub built_location: PathBuf,
    /// Installed file name without `.ko` (DEST_MODULE_NAME, default `built_name`).
    pub dest_name: String,
    /// Directory under `/lib/modules/<kver>`: starts with /kernel, /updates or /extra.
    pub dest_location: String,
    /// Strip debug info after the build (default yes).
    pub strip: bool,
}

/// The BUILD_EXCLUSIVE rules (global ones; DKMS's per-module variants are not modelled).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exclusive {
    /// Regex the kernel release must match.
    pub kernel: Option<String>,
    /// Oldest kernel release to build for.
    pub kernel_min: Option<String>,
    /// Newest kernel release to build for (DKMS's OBSOLETE_BY lands here when unset).
    pub kernel_max: Option<String>,
    /// Regex one of the arch names must match.
    pub arch: Option<String>,
    /// `CONFIG_X` must be set (y or m); `!CONFIG_X` must not be.
    pub config: Vec<String>,
}

/// What to build for one cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSpec {
    pub format: Format,
    /// PACKAGE_NAME.
    pub name: String,
    /// PACKAGE_VERSION.
    pub version: String,
    pub modules: Vec<BuiltModule>,
    /// The shell command line chosen for this kernel; None = kmx's default make.
    pub make: Option<String>,
    pub clean: Option<String>,
    /// Patches for this kernel, relative to the source's `patches/` directory, in order.
    pub patches: Vec<PathBuf>,
    pub pre_build: Option<String>,
    pub post_build: Option<String>,
    /// A PRE_BUILD / POST_BUILD that exits non-zero fails the cell (kmx.toml's
    /// `strict_scripts`); DKMS, and kmx by default, only warn.
    pub strict_scripts: bool,
    pub post_add: Option<String>,
    pub pre_install: Option<String>,
    pub post_install: Option<String>,
    pub post_remove: Option<String>,
    pub autoinstall: bool,
    pub no_weak_modules: bool,
    /// Other modules (PACKAGE_NAMEs) that must be built first.
    pub build_depends: Vec<String>,
    pub obsolete_by: Option<String>,
    pub exclusive: Exclusive,
    /// Things that are probably mistakes but do not stop the build.
    pub warnings: Vec<String>,
    /// What evaluating the manifest printed (dkms.conf's stdout and stderr).
    pub log: String,
}

impl ModuleSpec {
    /// A spec with only the package identity set; the loaders fill in the rest.
    pub(crate) fn new(format: Format, name: String, version: String) -> ModuleSpec {
        ModuleSpec {
            format,
            name,
            version,
            modules: Vec::new(),
            make: None,
            clean: None,
            patches: Vec::new(),
            pre_build: None,
            post_build: None,
            strict_scripts: false,
            post_add: None,
            pre_install: None,
            post_install: None,
            post_remove: None,
            autoinstall: false,
            no_weak_modules: false,
            build_depends: Vec::new(),
            obsolete_by: None,
            exclusive: Exclusive::default(),
            warnings: Vec::new(),
            log: String::new(),
        }
    }

    /// None if the cell should build; otherwise the rule that excludes it, in DKMS's order
    /// (kernel, min, max, arch, config). `arch_names[0]` is DKMS's `$arch` (`uname -m`
    /// style); further names (kmx's target name) are alternatives the arch regex may match.
    /// `config` says whether `CONFIG_X` is set (y or m) in the kernel tree.
    pub fn exclusion(
        &self,
        kernelver: &str,
        arch_names: &[&str],
        config: &dyn Fn(&str) -> bool,
    ) -> Option<String> {
        let ex = &self.exclusive;
        let rule = |dkms: &str, toml: &str| match self.format {
            Format::DkmsConf => format!("BUILD_EXCLUSIVE_{dkms}="),
            Format::KmxToml => format!("[exclusive] {toml} = "),
        };
        if let Some(re) = &ex.kernel
            && !ere_matches(re, kernelver)
        {
            let rule = rule("KERNEL", "kernel");
            return Some(format!("{rule}{re:?} does not match {kernelver}"));
        }
        if let Some(min) = &ex.kernel_min
            && compare_versions(kernelver, min) == Ordering::Less
        {
            let rule = rule("KERNEL_MIN", "kernel_min");
            return Some(format!("{rule}{min:?} > {kernelver}"));
        }
        if let Some(max) = &ex.kernel_max
            && compare_versions(kernelver, max) == Ordering::Greater
        {
            let rule = rule("KERNEL_MAX", "kernel_max");
            return Some(format!("{rule}{max:?} < {kernelver}"));
        }
        if let Some(re) = &ex.arch
            && !arch_names.iter().any(|a| ere_matches(re, a))
        {
            let mut names = arch_names.iter();
            let first = names.next().copied().unwrap_or("");
            let rest: Vec<&str> = names.copied().filter(|n| *n != first).collect();
            let mut msg = format!("{}{re:?} does not match {first}", rule("ARCH", "arch"));
            if !rest.is_empty() {
                msg.push_str(&format!(" (target {})", rest.join(", ")));
            }
            return Some(msg);
        }
        let config_rule = match self.format {
            Format::DkmsConf => "BUILD_EXCLUSIVE_CONFIG",
            Format::KmxToml => "[exclusive] config",
        };
        for item in &ex.config {
            match item.strip_prefix('!') {
                Some(name) if config(name) => return Some(format!("{config_rule}: {name} is set")),
                Some(_) => {}
                None if !config(item) => return Some(format!("{config_rule}: {item} is not set")),
                None => {}
            }
        }
        None
    }
}

/// Compile a POSIX ERE the way bash's `=~` uses it (unanchored search).
pub(crate) fn ere(pattern: &str) -> std::result::Result<Regex, regex::Error> {
    Regex::new(pattern)
}

/// Whether `pattern` matches `text`; an invalid pattern matches nothing (as in bash, where
/// `[[ =~ ]]` with a bad regex is false). Loaders reject invalid patterns up front.
pub(crate) fn ere_matches(pattern: &str, text: &str) -> bool {
    ere(pattern).is_ok_and(|re| re.is_match(text))
}

/// DKMS's `VER()`: split digit runs from the rest, pad numbers shorter than three digits
/// with zeros, and compare the results as byte strings. Faithful to DKMS, including its
/// quirk that numbers of four or more digits are not padded.
pub fn version_key(version: &str) -> String {
    let mut out = String::new();
    let mut chars = version.chars().peekable();
    while let Some(&c) = chars.peek() {
        let is_digit = c.is_ascii_digit();
        let mut run = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_digit() != is_digit {
                break;
            }
            run.push(c);
            chars.next();
        }
        if is_digit && run.len() < 3 {
            out.push_str(&"0".repeat(3 - run.len()));
        }
        out.push_str(&run);
    }
    out
}

/// Compare two kernel versions as DKMS does (see [`version_key`]).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    version_key(a).cmp(&version_key(b))
}

/// One of a module's four names and places, as a package writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleField {
    /// BUILT_MODULE_NAME: the `.ko`'s file name in the build directory, without `.ko`.
    BuiltName,
    /// BUILT_MODULE_LOCATION: its directory, relative to the build directory.
    BuiltLocation,
    /// DEST_MODULE_NAME: the installed file's name, without `.ko`.
    DestName,
    /// DEST_MODULE_LOCATION: its directory under `/lib/modules/<kver>`.
    DestLocation,
}

impl ModuleField {
    /// The dkms.conf name of the field (kmx.toml's messages say theirs).
    pub fn dkms_name(self) -> &'static str {
        match self {
            ModuleField::BuiltName => "BUILT_MODULE_NAME",
            ModuleField::BuiltLocation => "BUILT_MODULE_LOCATION",
            ModuleField::DestName => "DEST_MODULE_NAME",
            ModuleField::DestLocation => "DEST_MODULE_LOCATION",
        }
    }
}

/// The one rule for a module's names and places, applied wherever a package's values enter
/// kmx (`add`, `build`, `load-tarball`, `install`, `package`): a name is a plain file name
/// (not empty, no `/`, no leading `.`, no NUL, no `.ko`/`.o` suffix); BUILT_MODULE_LOCATION
/// is a relative path without `..`; DEST_MODULE_LOCATION starts with /kernel, /updates or
/// /extra (DKMS's rule, on the value as written) and no `..` in it climbs above its start
/// (Debian 13's mstflint-dkms has `/kernel/../misc/`, which DKMS takes: [`dest_components`]).
/// So no value can name a file outside the cell's build directory or outside
/// `/lib/modules/<kver>`. `Err` says what is wrong with `value`.
pub fn check_module_field(field: ModuleField, value: &str) -> Result<(), BadField> {
    if value.contains('\0') {
        return Err(BadField::Nul);
    }
    let parent = || value.split('/').any(|c| c == "..");
    match field {
        ModuleField::BuiltName | ModuleField::DestName => {
            if value.is_empty() || value.contains('/') || value.starts_with('.') {
                return Err(BadField::NotPlainName);
            }
            if value.ends_with(".ko") || value.ends_with(".o") {
                return Err(BadField::ObjectSuffix);
            }
        }
        ModuleField::BuiltLocation if value.starts_with('/') => {
            return Err(BadField::Absolute);
        }
        ModuleField::BuiltLocation if parent() => {
            return Err(BadField::LeavesBuildDir);
        }
        ModuleField::BuiltLocation => {}
        ModuleField::DestLocation => {
            if !["/kernel", "/updates", "/extra"]
                .iter()
                .any(|p| value.starts_with(p))
            {
                return Err(BadField::DestOutsideTrees);
            }
            if dest_components(value).is_none() {
                return Err(BadField::ClimbsOut);
            }
        }
    }
    Ok(())
}

/// What is wrong with a module's name or place ([`check_module_field`]); its text follows
/// the field and its value in the caller's message (`DEST_MODULE_NAME "x.o" must not ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadField {
    #[error("contains a NUL byte")]
    Nul,
    #[error("must be a plain file name (no `/`, not starting with `.`)")]
    NotPlainName,
    #[error("must not end in .o or .ko: name the module without its suffix")]
    ObjectSuffix,
    #[error("must be relative to the build directory")]
    Absolute,
    #[error("must not contain `..`: it would leave the build directory")]
    LeavesBuildDir,
    #[error("does not start with /kernel, /updates or /extra")]
    DestOutsideTrees,
    #[error("climbs out with `..`: it would leave /lib/modules/<kver>")]
    ClimbsOut,
}

/// A DEST_MODULE_LOCATION as the directories under `/lib/modules/<kver>` it names: `.` and
/// empty components dropped, each `..` taking back the one before it (what DKMS's `mkdir -p`
/// and `mv` into `$install_tree/$kernelver$location` make of it); `None` when a `..` would
/// climb above `/lib/modules/<kver>`.
pub fn dest_components(value: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    for c in value.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// Drop trailing slashes (but keep a lone "/").
pub(crate) fn trim_slashes(s: &str) -> &str {
    let t = s.trim_end_matches('/');
    if t.is_empty() && s.starts_with('/') {
        "/"
    } else {
        t
    }
}

/// A module's name and version as its caller gives them, DKMS's `dkms add -m NAME -v VERSION`
/// (what Debian's dh_dkms postinst runs, with the version of `/usr/src/<name>-<version>`):
/// they are `$module`/`$module_version` while dkms.conf is read and the identity the module
/// is built and registered with (`/var/lib/dkms/<name>/<version>/build`), whatever
/// PACKAGE_NAME and PACKAGE_VERSION say (DKMS only checks those are not empty). `None`: as
/// DKMS decides without `-m`/`-v` ([`super::dkms`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given {
    pub name: Option<String>,
    pub version: Option<String>,
}

impl Given {
    /// Both given (a registered module: its name and version).
    pub fn both(name: &str, version: &str) -> Given {
        Given {
            name: Some(name.to_string()),
            version: Some(version.to_string()),
        }
    }
}

/// The variables DKMS defines for a dkms.conf, for one cell.
#[derive(Debug, Clone)]
pub struct CellVars {
    /// The kernel release (`uname -r` of the target kernel).
    pub kernelver: String,
    /// The kernel build tree.
    pub kernel_source_dir: PathBuf,
    /// DKMS's `$arch`: `uname -m` of the target (x86_64, i686, aarch64, armv7l).
    pub arch: String,
    /// The module's source directory: where the file is evaluated from, and the name
    /// `$module`/`$module_version` are guessed from.
    pub source_dir: PathBuf,
    /// DKMS's `$source_tree`: the directory that holds `<module>-<version>` (/usr/src).
    pub source_tree: PathBuf,
    /// DKMS's `$dkms_tree` (/var/lib/dkms): holds `<module>/<version>/build`.
    pub dkms_tree: PathBuf,
    /// The module name the caller expects (`$module` before PACKAGE_NAME is known); None =
    /// guess from the source directory's `<module>-<version>` name.
    pub module_hint: Option<String>,
    /// PACKAGE_NAME and PACKAGE_VERSION from an earlier reading of the same file (that
    /// reading also checked its syntax): `$module` and `$module_version` are these.
    pub identity: Option<(String, String)>,
    /// The name and version the caller gave, if any.
    pub given: Given,
    /// Evaluate a dkms.conf inside the sandbox ([`crate::sandbox`]), where these other
    /// sources of the run are under /usr/src; `None` = on the host's paths.
    pub sandbox: Option<std::sync::Arc<Vec<crate::sandbox::Source>>>,
    /// How far the sandbox confines it (`--sandbox open`: as under DKMS).
    pub mode: crate::sandbox::Mode,
}

/// Why `value` cannot be a module's name or version (`None` when it can): it names
/// directories (`/usr/src/<name>-<version>`, the state store, the output), so it is one
/// printable word of valid UTF-8, without `/`, not `.`-led.
pub fn invalid_identity(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        Some("it is empty")
    } else if value.contains('/') {
        Some("it contains '/'")
    } else if value.starts_with('.') {
        Some("it starts with '.'")
    } else if value.contains('\u{FFFD}') {
        Some("it is not valid UTF-8")
    } else if value.contains(|c: char| c.is_control() || c.is_whitespace()) {
        Some("it contains a space, newline or other control character")
    } else {
        None
    }
}

#[cfg(test)]
impl CellVars {
    /// Variables for a cell under `dir` (kernel 6.1.0-18-amd64 on x86_64).
    pub(crate) fn for_tests(dir: &std::path::Path) -> CellVars {
        CellVars {
            kernelver: "6.1.0-18-amd64".into(),
            kernel_source_dir: dir.join("kernel"),
            arch: "x86_64".into(),
            source_dir: dir.to_path_buf(),
            source_tree: dir.to_path_buf(),
            dkms_tree: dir.join("dkms"),
            module_hint: None,
            identity: None,
            given: Given::default(),
            sandbox: None,
            mode: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_and_places_never_leave_the_build_directory_or_lib_modules() {
        use ModuleField::*;
        for (field, value) in [
            (BuiltName, "hello"),
            (BuiltName, "snd-hda_x.y"),
            (BuiltLocation, ""),
            (BuiltLocation, "src/core"),
            (BuiltLocation, "./src"),
            (DestName, "hello"),
            (DestLocation, "/updates/dkms"),
            (DestLocation, "/kernel/drivers/net"),
            (DestLocation, "/extra"),
            (DestLocation, "/kernel/../misc"),
            (DestLocation, "/kernel/.."),
        ] {
            assert_eq!(
                check_module_field(field, value),
                Ok(()),
                "{field:?} {value:?}"
            );
        }
        for (field, value, why) in [
            (BuiltName, "", BadField::NotPlainName),
            (BuiltName, "../../../../tmp/x/plant", BadField::NotPlainName),
            (BuiltName, "a/b", BadField::NotPlainName),
            (BuiltName, "..", BadField::NotPlainName),
            (BuiltName, ".hidden", BadField::NotPlainName),
            (BuiltName, "hello.ko", BadField::ObjectSuffix),
            (DestName, "x.o", BadField::ObjectSuffix),
            (DestName, "../x", BadField::NotPlainName),
            (BuiltName, "a\0b", BadField::Nul),
            (BuiltLocation, "../../..", BadField::LeavesBuildDir),
            (BuiltLocation, "src/../../x", BadField::LeavesBuildDir),
            (BuiltLocation, "/tmp/x", BadField::Absolute),
            (DestLocation, "/updates/../../", BadField::ClimbsOut),
            (DestLocation, "/kernel/../..", BadField::ClimbsOut),
            (DestLocation, "/extra/a/../../../etc", BadField::ClimbsOut),
            (DestLocation, "/lib", BadField::DestOutsideTrees),
            (DestLocation, "updates", BadField::DestOutsideTrees),
        ] {
            assert_eq!(
                check_module_field(field, value),
                Err(why),
                "{field:?} {value:?}"
            );
        }
        assert_eq!(dest_components("/kernel/../misc/"), Some(vec!["misc"]));
        assert_eq!(
            dest_components("/kernel/./a//b"),
            Some(vec!["kernel", "a", "b"])
        );
        assert_eq!(dest_components("/kernel/../../x"), None);
    }

    #[test]
    fn version_key_pads_like_dkms_ver() {
        assert_eq!(
            version_key("2.6.9-1cvs200409091247"),
            "002.006.009-001cvs200409091247"
        );
        assert_eq!(compare_versions("6.1.0-50-arm64", "6.2"), Ordering::Less);
        assert_eq!(compare_versions("6.10", "6.9"), Ordering::Greater);
        assert_eq!(compare_versions("5.15.0", "5.15"), Ordering::Greater);
    }

    fn spec() -> ModuleSpec {
        ModuleSpec::new(Format::DkmsConf, "m".into(), "1".into())
    }

    #[test]
    fn exclusion_names_the_rule() {
        let none = |_: &str| false;
        let mut s = spec();
        assert_eq!(s.exclusion("6.1.0", &["aarch64", "arm64"], &none), None);
        s.exclusive.arch = Some("^x86_64$".into());
        assert_eq!(
            s.exclusion("6.1.0", &["aarch64", "arm64"], &none)
                .as_deref(),
            Some(r#"BUILD_EXCLUSIVE_ARCH="^x86_64$" does not match aarch64 (target arm64)"#)
        );
        assert_eq!(s.exclusion("6.1.0", &["x86_64", "amd64"], &none), None);
        s.exclusive.kernel_min = Some("6.2".into());
        assert_eq!(
            s.exclusion("6.1.0-50-arm64", &["x86_64"], &none).as_deref(),
            Some(r#"BUILD_EXCLUSIVE_KERNEL_MIN="6.2" > 6.1.0-50-arm64"#)
        );
        let mut s = spec();
        s.exclusive.kernel_max = Some("6.0".into());
        assert_eq!(
            s.exclusion("6.1.0", &["x86_64"], &none).as_deref(),
            Some(r#"BUILD_EXCLUSIVE_KERNEL_MAX="6.0" < 6.1.0"#)
        );
        let mut s = spec();
        s.exclusive.kernel = Some("REQUIRES CONFIG_X".into());
        assert_eq!(
            s.exclusion("6.1.0", &["x86_64"], &none).as_deref(),
            Some(r#"BUILD_EXCLUSIVE_KERNEL="REQUIRES CONFIG_X" does not match 6.1.0"#)
        );
        let mut s = spec();
        s.exclusive.config = vec!["CONFIG_X".into(), "!CONFIG_Y".into()];
        let x_only = |c: &str| c == "CONFIG_X";
        let both = |c: &str| c == "CONFIG_X" || c == "CONFIG_Y";
        assert_eq!(
            s.exclusion("6.1", &["x86_64"], &none).as_deref(),
            Some("BUILD_EXCLUSIVE_CONFIG: CONFIG_X is not set")
        );
        assert_eq!(s.exclusion("6.1", &["x86_64"], &x_only), None);
        assert_eq!(
            s.exclusion("6.1", &["x86_64"], &both).as_deref(),
            Some("BUILD_EXCLUSIVE_CONFIG: CONFIG_Y is set")
        );
        s.format = Format::KmxToml;
        assert_eq!(
            s.exclusion("6.1", &["x86_64"], &both).as_deref(),
            Some("[exclusive] config: CONFIG_Y is set")
        );
    }
}

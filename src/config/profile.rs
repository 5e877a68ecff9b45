//! Target and toolchain profiles: the TOML the user writes (`targets/*.toml`,
//! `toolchains/*.toml`) and the resolved, typed values the rest of kmx uses.
//!
//! Parsing is strict: unknown keys are errors naming the file, line and column, so a typo in
//! a build matrix never passes silently. Nothing here touches the file system; loading and
//! layering of directories is `config::load`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use target_lexicon::Triple;

use crate::config::arch::ElfIdentity;
use crate::error::{Error, Result};

/// `toolchains/NAME.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolchainFile {
    triple: toml::Spanned<String>,
    cross_compile: Option<String>,
    debian_package: Option<String>,
    #[serde(default)]
    launcher: Vec<String>,
    cc: Option<String>,
    compiler_cache: Option<bool>,
}

/// A cross toolchain: how to call the compiler for one GNU triple.
#[derive(Debug, Clone, Serialize)]
pub struct Toolchain {
    pub name: String,
    /// The GNU triple exactly as written (target-lexicon's Display adds a vendor).
    pub triple: String,
    /// The `CROSS_COMPILE` prefix, e.g. `aarch64-linux-gnu-`.
    pub cross_compile: String,
    /// The Debian package that provides the compiler, for hints.
    pub debian_package: Option<String>,
    /// Words put before the compiler (`ccache`, `distcc`).
    pub launcher: Vec<String>,
    /// Whether kmx's default compiler cache may go before the compiler when `launcher` is
    /// empty (`compiler_cache = false` turns it off; [`crate::config::ccache`]).
    pub compiler_cache: bool,
    /// A compiler to call instead of the one the kernel tree names.
    pub cc: Option<String>,
    /// What modules built by this toolchain must say in their ELF header.
    pub identity: ElfIdentity,
    pub file: PathBuf,
}

impl Toolchain {
    pub fn parse(name: &str, text: &str, file: &Path) -> Result<Toolchain> {
        let raw: ToolchainFile = parse_toml(text, file)?;
        let triple_text = raw.triple.get_ref().clone();
        let span = raw.triple.span();
        let bad_triple = |why: String| {
            let (line, col) = line_col(text, span.start);
            Error::config(file, format!("invalid GNU triple `{triple_text}`: {why}"))
                .line(line, col)
                .hint("write a triple such as `aarch64-linux-gnu` or `arm-linux-gnueabihf`")
        };
        let triple = Triple::from_str(&triple_text).map_err(|e| bad_triple(e.to_string()))?;
        let identity = ElfIdentity::from_triple(&triple).ok_or_else(|| {
            bad_triple(format!(
                "kmx knows no ELF machine for architecture `{}`",
                triple.architecture
            ))
        })?;
        Ok(Toolchain {
            name: name.to_string(),
            cross_compile: raw
                .cross_compile
                .unwrap_or_else(|| format!("{triple_text}-")),
            triple: triple_text,
            debian_package: raw.debian_package,
            launcher: raw.launcher,
            compiler_cache: raw.compiler_cache.unwrap_or(true),
            cc: raw.cc,
            identity,
            file: file.to_path_buf(),
        })
    }
}

/// `targets/NAME.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFile {
    description: Option<String>,
    kernel_arch: String,
    toolchain: toml::Spanned<String>,
    dkms_arch: Option<String>,
    debian: Option<DebianKernel>,
    #[serde(default)]
    kernels: KernelsFile,
    boot: Option<Boot>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KernelsFile {
    #[serde(default)]
    fetched: bool,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    source: Vec<toml::Spanned<SourceFile>>,
}

/// `[[kernels.source]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFile {
    suite: String,
    url: Option<String>,
    component: Option<String>,
    keyring: Option<PathBuf>,
    arch: Option<String>,
    flavour: Option<String>,
    name: Option<String>,
}

/// Debian's main archive, where `[[kernels.source]]` entries without `url` point.
pub const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
/// Debian's security archive: the default `url` of a `*-security` suite.
pub const DEBIAN_SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
/// The suite a target with `[debian]` and no `[[kernels.source]]` fetches from.
pub const DEFAULT_SUITE: &str = "bookworm";
/// The key Debian's archives are signed with (package debian-archive-keyring).
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One apt archive a target's kernel trees come from: `kmx kernels fetch` takes the newest
/// ABI (or a pinned one) of `linux-headers-<ABI>-<flavour>:<arch>` in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelSource {
    /// What the trees' directory is named after (`debian`, or the archive's host name).
    pub name: String,
    pub url: String,
    pub suite: String,
    pub component: String,
    /// The key the archive's Release file is signed with.
    pub keyring: PathBuf,
    pub kernel: DebianKernel,
}

impl KernelSource {
    /// A Debian suite with Debian's mirror and keyring (`--suite`, or a profile's default).
    pub fn debian(suite: &str, mirror: Option<&str>, kernel: DebianKernel) -> KernelSource {
        let url = match mirror {
            Some(m) => m.to_string(),
            None if suite.ends_with("-security") => DEBIAN_SECURITY_MIRROR.to_string(),
            None => DEBIAN_MIRROR.to_string(),
        };
        KernelSource {
            name: "debian".into(),
            url,
            suite: suite.to_string(),
            component: "main".into(),
            keyring: PathBuf::from(DEBIAN_KEYRING),
            kernel,
        }
    }

    /// How lists and origins name it: `debian bookworm-backports`.
    pub fn label(&self) -> String {
        format!("{} {}", self.name, self.suite)
    }

    /// The archive, suite and component: two sources with the same key share one apt state.
    pub fn apt_line(&self) -> String {
        format!(
            "deb [signed-by={}] {} {} {}",
            self.keyring.display(),
            self.url,
            self.suite,
            self.component
        )
    }

    fn resolve(
        raw: SourceFile,
        debian: Option<&DebianKernel>,
    ) -> std::result::Result<Self, BadSource> {
        let arch = raw.arch.or_else(|| debian.map(|d| d.arch.clone()));
        let flavour = raw.flavour.or_else(|| debian.map(|d| d.flavour.clone()));
        let (Some(arch), Some(flavour)) = (arch, flavour) else {
            return Err(BadSource::NoKernel);
        };
        let kernel = DebianKernel { arch, flavour };
        let Some(url) = raw.url else {
            let mut s = KernelSource::debian(&raw.suite, None, kernel);
            if let Some(k) = raw.keyring {
                s.keyring = k;
            }
            if let Some(c) = raw.component {
                s.component = c;
            }
            return Ok(s);
        };
        let Some(keyring) = raw.keyring else {
            return Err(BadSource::NoKeyring { url });
        };
        let host = url
            .split("://")
            .nth(1)
            .unwrap_or(&url)
            .split('/')
            .next()
            .unwrap_or("apt")
            .to_string();
        let name = raw.name.unwrap_or(
            if url.starts_with(DEBIAN_MIRROR) || url.starts_with(DEBIAN_SECURITY_MIRROR) {
                "debian".into()
            } else {
                host
            },
        );
        if name.is_empty() || name.contains(['/', ' ']) || name.starts_with('.') {
            return Err(BadSource::Name { name });
        }
        Ok(KernelSource {
            name,
            url: url.trim_end_matches('/').to_string(),
            suite: raw.suite,
            component: raw.component.unwrap_or_else(|| "main".into()),
            keyring,
            kernel,
        })
    }
}

/// What is wrong with a `[[kernels.source]]` of a target profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadSource {
    #[error("a kernel source needs `arch` and `flavour` (or a [debian] table to take them from)")]
    NoKernel,
    #[error("the kernel source {url} needs `keyring`: the file its archive is signed with")]
    NoKeyring { url: String },
    #[error("`name = \"{name}\"` must be a plain word: it names a directory")]
    Name { name: String },
}

/// Where Debian publishes this target's kernels: the dpkg architecture and flavour, as in
/// `linux-headers-<ABI>-<flavour>:<arch>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DebianKernel {
    pub arch: String,
    pub flavour: String,
}

impl DebianKernel {
    /// The headers package of kernel ABI `abi`: `linux-headers-<ABI>-<flavour>`.
    pub fn headers(&self, abi: &str) -> String {
        format!("linux-headers-{abi}-{}", self.flavour)
    }
}

/// `[boot]`: how `kmx smoke` boots this target's kernel under QEMU to load modules in it.
/// kmx always passes `-nodefaults -display none -serial stdio -no-reboot -smp 1` and the
/// kernel arguments `console=<console> panic=-1 quiet`, then `append`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// The QEMU system emulator, e.g. `qemu-system-aarch64`.
    pub qemu: String,
    /// `-M`, e.g. `virt` or `q35`.
    pub machine: String,
    /// `-cpu`, e.g. `cortex-a57`.
    pub cpu: String,
    /// The kernel's serial console device, e.g. `ttyS0` or `ttyAMA0`.
    pub console: String,
    /// Guest memory in MiB (an emulated board may accept only its own: raspi0 512, raspi3b
    /// 1024).
    #[serde(default = "default_boot_memory")]
    pub memory: u32,
    /// Guest CPUs (`-smp`; raspi3b has exactly 4).
    #[serde(default = "default_boot_smp")]
    pub smp: u32,
    /// A device tree from the kernel's image package, relative to its
    /// `usr/lib/linux-image-<release>/` (e.g. `broadcom/bcm2837-rpi-3-b.dtb`): passed with
    /// `-dtb`, for boards whose device tree QEMU does not make.
    #[serde(default)]
    pub dtb: Option<String>,
    /// Extra kernel command-line arguments, appended after kmx's own.
    #[serde(default)]
    pub append: String,
    /// Extra QEMU arguments, appended after kmx's own.
    #[serde(default)]
    pub qemu_args: Vec<String>,
}

fn default_boot_memory() -> u32 {
    512
}

fn default_boot_smp() -> u32 {
    1
}

/// A target profile: one kind of machine modules are built for.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub description: String,
    /// The kernel's `ARCH=` (x86, arm, arm64, ...).
    pub kernel_arch: String,
    /// The name of the toolchain profile.
    pub toolchain: String,
    /// What `$arch` is in a dkms.conf evaluated for this target (`uname -m` of the target).
    pub dkms_arch: String,
    pub debian: Option<DebianKernel>,
    /// Use the trees `kmx kernels fetch` registered for this target.
    pub fetched_kernels: bool,
    /// Explicit kernel build directories or globs (`~` expanded).
    pub kernel_paths: Vec<String>,
    /// Where `kmx kernels fetch` gets this target's trees: `[[kernels.source]]`, or Debian
    /// 12 (`bookworm`) for a target with `[debian]` and no source.
    pub kernel_sources: Vec<KernelSource>,
    /// How to boot the target's kernel under QEMU; `None`: `kmx smoke` is not configured.
    pub boot: Option<Boot>,
    pub file: PathBuf,
    /// Line and column of the `toolchain` value, for errors about it.
    #[serde(skip)]
    pub toolchain_at: (usize, usize),
}

impl Target {
    pub fn parse(name: &str, text: &str, file: &Path) -> Result<Target> {
        let raw: TargetFile = parse_toml(text, file)?;
        let toolchain_at = line_col(text, raw.toolchain.span().start);
        let mut kernel_sources = Vec::new();
        for spanned in &raw.kernels.source {
            let source = KernelSource::resolve(spanned.get_ref().clone(), raw.debian.as_ref())
                .map_err(|why| {
                    let (line, col) = line_col(text, spanned.span().start);
                    Error::config(file, why.to_string()).line(line, col)
                })?;
            kernel_sources.push(source);
        }
        if kernel_sources.is_empty()
            && let Some(d) = &raw.debian
        {
            kernel_sources.push(KernelSource::debian(DEFAULT_SUITE, None, d.clone()));
        }
        Ok(Target {
            name: name.to_string(),
            description: raw.description.unwrap_or_default(),
            dkms_arch: raw
                .dkms_arch
                .unwrap_or_else(|| default_dkms_arch(&raw.kernel_arch).to_string()),
            kernel_arch: raw.kernel_arch,
            toolchain: raw.toolchain.into_inner(),
            debian: raw.debian,
            fetched_kernels: raw.kernels.fetched,
            kernel_paths: raw.kernels.paths,
            kernel_sources,
            boot: raw.boot,
            file: file.to_path_buf(),
            toolchain_at,
        })
    }
}

fn default_dkms_arch(kernel_arch: &str) -> &str {
    match kernel_arch {
        "x86" => "x86_64",
        "arm64" => "aarch64",
        "arm" => "armv7l",
        other => other,
    }
}

/// Parse TOML into `T`, turning toml's error into a kmx error with file:line:column.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, file: &Path) -> Result<T> {
    toml::from_str(text).map_err(|e| {
        let mut err = Error::config(file, e.message().trim().to_string());
        if let Some(span) = e.span() {
            let (line, col) = line_col(text, span.start);
            err = err.line(line, col);
        }
        err
    })
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::render;

    #[test]
    fn kernel_sources_take_debians_defaults_or_an_archive_with_its_keyring() {
        let head = "kernel_arch = \"arm64\"\ntoolchain = \"aarch64-linux-gnu\"\n[debian]\narch = \"arm64\"\nflavour = \"arm64\"\n";
        let file = Path::new("targets/t.toml");
        // No source: Debian 12.
        let t = Target::parse("t", head, file).unwrap();
        assert_eq!(t.kernel_sources.len(), 1);
        assert!(
            t.no_tree_hint()
                .starts_with("run `kmx kernels fetch --target t`")
        );
        // Neither [debian] nor a source: nothing to fetch from, and the hint says so.
        let bare = Target::parse(
            "b",
            "kernel_arch = \"arm64\"\ntoolchain = \"aarch64-linux-gnu\"\n",
            file,
        )
        .unwrap();
        assert!(bare.kernel_sources.is_empty());
        assert_eq!(
            bare.no_tree_hint(),
            "list its kernel trees under [kernels] paths in targets/t.toml (it names no [[kernels.source]] to fetch from)"
        );
        assert_eq!(
            t.kernel_sources[0].apt_line(),
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main"
        );
        let text = format!(
            "{head}[[kernels.source]]\nsuite = \"bookworm-security\"\n[[kernels.source]]\nurl = \"http://archive.raspberrypi.com/debian/\"\nsuite = \"bookworm\"\nkeyring = \"/k/rpi.gpg\"\nflavour = \"rpi-v8\"\n"
        );
        let t = Target::parse("t", &text, file).unwrap();
        assert_eq!(t.kernel_sources[0].url, DEBIAN_SECURITY_MIRROR);
        let pi = &t.kernel_sources[1];
        assert_eq!(pi.label(), "archive.raspberrypi.com bookworm");
        assert_eq!(
            pi.apt_line(),
            "deb [signed-by=/k/rpi.gpg] http://archive.raspberrypi.com/debian bookworm main"
        );
        assert_eq!(
            (pi.kernel.arch.as_str(), pi.kernel.flavour.as_str()),
            ("arm64", "rpi-v8")
        );
        // An archive without its key is refused where it is written.
        let text = format!(
            "{head}\n[[kernels.source]]\nurl = \"http://x.example/debian\"\nsuite = \"s\"\n"
        );
        let err = Target::parse("t", &text, file).unwrap_err();
        assert_eq!(
            render(&err),
            "error: targets/t.toml:7:1: the kernel source http://x.example/debian needs `keyring`: the file its archive is signed with"
        );
    }

    #[test]
    fn toolchain_identity_comes_from_the_triple() {
        let t = Toolchain::parse(
            "arm",
            "triple = \"arm-linux-gnueabihf\"\n",
            Path::new("toolchains/arm.toml"),
        )
        .unwrap();
        assert_eq!(t.identity.to_string(), "ELF32 LSB ARM (40)");
        assert_eq!(t.cross_compile, "arm-linux-gnueabihf-");
    }

    #[test]
    fn bad_triple_names_file_and_line() {
        let err = Toolchain::parse(
            "x",
            "# a comment\ntriple = \"nonsense-cpu-linux-gnu\"\n",
            Path::new("toolchains/x.toml"),
        )
        .unwrap_err();
        assert_eq!(
            render(&err),
            "error: toolchains/x.toml:2:10: invalid GNU triple `nonsense-cpu-linux-gnu`: Unrecognized architecture: nonsense\n  hint: write a triple such as `aarch64-linux-gnu` or `arm-linux-gnueabihf`"
        );
    }

    #[test]
    fn boot_table_is_parsed_with_defaults() {
        let t = Target::parse(
            "t",
            "kernel_arch = \"arm64\"\ntoolchain = \"aarch64-linux-gnu\"\n[boot]\nqemu = \"qemu-system-aarch64\"\nmachine = \"virt\"\ncpu = \"cortex-a57\"\nconsole = \"ttyAMA0\"\n",
            Path::new("targets/t.toml"),
        )
        .unwrap();
        let boot = t.boot.unwrap();
        assert_eq!(boot.memory, 512);
        assert_eq!(boot.append, "");
        assert_eq!(boot.machine, "virt");
    }

    #[test]
    fn unknown_key_in_boot_table_names_file_and_line() {
        let err = Target::parse(
            "t",
            "kernel_arch = \"arm64\"\ntoolchain = \"aarch64-linux-gnu\"\n[boot]\nqemu = \"q\"\nmachine = \"virt\"\ncpu = \"c\"\nconsole = \"ttyAMA0\"\nmemroy = 256\n",
            Path::new("targets/t.toml"),
        )
        .unwrap_err();
        let text = render(&err);
        assert!(
            text.starts_with("error: targets/t.toml:8:1: unknown field `memroy`, expected one of"),
            "{text}"
        );
    }

    #[test]
    fn unknown_key_in_target_names_file_and_line() {
        let err = Target::parse(
            "t",
            "kernel_arch = \"arm64\"\ntoolchain = \"aarch64-linux-gnu\"\nkernal_arch = \"x\"\n",
            Path::new("targets/t.toml"),
        )
        .unwrap_err();
        let text = render(&err);
        assert!(
            text.starts_with(
                "error: targets/t.toml:3:1: unknown field `kernal_arch`, expected one of"
            ),
            "{text}"
        );
    }
}

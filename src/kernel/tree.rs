//! Inspecting a kernel build tree (a KDIR): its release, configuration, the vermagic its
//! modules must carry, where its `Module.symvers` is, which compiler and ARCH it forces, how
//! it signs and compresses modules, and whether its host tools run on this machine. It only
//! reads the tree; building in it and provisioning trees live elsewhere.

use std::path::{Path, PathBuf};

use super::kconfig::{KConfig, NOT_PREPARED};
use super::vermagic::{self, Vermagic};
use crate::config::arch::{ElfClass, ElfIdentity, Endian, machine};
use crate::{Error, Result};

/// An inspected kernel build tree.
#[derive(Debug, Clone)]
pub struct KernelTree {
    pub kdir: PathBuf,
    /// UTS_RELEASE, e.g. `6.1.0-50-amd64`.
    pub release: String,
    pub config: KConfig,
    /// The vermagic this tree stamps on modules.
    pub vermagic: Vermagic,
    /// `<kdir>/Module.symvers`, when the tree has one.
    pub symvers: Option<PathBuf>,
    /// The kernel ARCH (`x86`, `arm`, `arm64`, ...): `.kernelvariables`' `override ARCH`
    /// when present, else derived from `.config`.
    pub arch: String,
    /// The compiler the tree calls after `$(CROSS_COMPILE)` when it is not plain `gcc`
    /// (Debian's `.kernelvariables` sets `gcc-12`). `None` means `gcc`.
    pub compiler: Option<String>,
    /// CONFIG_CC_VERSION_TEXT: the compiler the kernel itself was built with.
    pub cc_version_text: Option<String>,
    pub module_sig: SigConfig,
    /// How `modules_install` compresses modules; `None` for plain `.ko`.
    pub compress: Option<Compression>,
    pub host_tools: HostTools,
    /// The toolchain roots of the tree's distribution ([`super::toolroot`]), when kmx
    /// assembled any for it.
    pub toolchains: Option<PathBuf>,
}

/// Module signing settings of a tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SigConfig {
    /// CONFIG_MODULE_SIG: the kernel checks signatures.
    pub enabled: bool,
    /// CONFIG_MODULE_SIG_FORCE: unsigned modules are refused, not just tainting.
    pub force: bool,
    /// CONFIG_MODULE_SIG_ALL: `modules_install` signs every module.
    pub all: bool,
    /// CONFIG_MODULE_SIG_HASH, e.g. `sha256`.
    pub hash: Option<String>,
}

pub use crate::modfile::Compression;

/// Whether the tree's host programs (`scripts/basic/fixdep`, `scripts/mod/modpost`) can run
/// here. Builds fail with "wrong ELF class" or "Exec format error" when they cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostTools {
    Ok,
    /// These tools do not exist (or are dangling symlinks).
    Missing(Vec<PathBuf>),
    /// `tool` is an ELF file for another machine.
    Foreign {
        tool: PathBuf,
        machine: ElfIdentity,
    },
    /// `tool` is not an ELF file at all.
    NotElf(PathBuf),
}

const HOST_TOOLS: [&str; 2] = ["scripts/basic/fixdep", "scripts/mod/modpost"];

impl KernelTree {
    /// Read everything kmx needs to know about the tree at `kdir`.
    pub fn inspect(kdir: &Path) -> Result<KernelTree> {
        if !kdir.is_dir() {
            return Err(Error::env("no such directory").at(kdir).hint(
                "pass the directory of a prepared kernel build tree (KDIR), or fetch one with `kmx kernels fetch`",
            ));
        }
        let release = read_define(kdir, "include/generated/utsrelease.h", "UTS_RELEASE")?;
        let config = KConfig::load(&kdir.join(".config"))?;
        let randstruct = if vermagic::needs_randstruct_hash(&config) {
            // 5.19 renamed the header along with the option.
            let file = if config.builtin("CONFIG_RANDSTRUCT") {
                "include/generated/randstruct_hash.h"
            } else {
                "include/generated/randomize_layout_hash.h"
            };
            Some(read_define(kdir, file, "RANDSTRUCT_HASHED_SEED")?)
        } else {
            None
        };
        let vermagic = vermagic::expected(&release, &config, randstruct.as_deref());
        let variables = read_optional(&kdir.join(".kernelvariables"))?.unwrap_or_default();
        let arch = match make_variable(&variables, "ARCH").or(config.kernel_arch()) {
            Some(arch) => arch.to_string(),
            None => {
                return Err(Error::env("cannot tell which architecture this kernel is for")
                    .at(kdir.join(".config"))
                    .hint("kmx reads CONFIG_X86, CONFIG_ARM64, CONFIG_ARM, CONFIG_PPC, CONFIG_RISCV, CONFIG_MIPS, CONFIG_S390, CONFIG_LOONGARCH; is this a complete .config?"));
            }
        };
        // Debian's `.kernelvariables` names it; a tree without one (an Ubuntu or self-built
        // kernel's headers) says in CONFIG_CC_VERSION_TEXT which compiler built the kernel.
        let compiler = match make_variable(&variables, "CC") {
            Some(cc) => cc
                .split_whitespace()
                .last()
                .map(|cc| cc.trim_start_matches("$(CROSS_COMPILE)"))
                .filter(|&cc| cc != "gcc" && !cc.is_empty())
                .map(str::to_string),
            None => config.get("CONFIG_CC_VERSION_TEXT").and_then(versioned_gcc),
        };
        let symvers = Some(kdir.join("Module.symvers")).filter(|p| p.is_file());
        let module_sig = SigConfig {
            enabled: config.builtin("CONFIG_MODULE_SIG"),
            force: config.builtin("CONFIG_MODULE_SIG_FORCE"),
            all: config.builtin("CONFIG_MODULE_SIG_ALL"),
            hash: config.get("CONFIG_MODULE_SIG_HASH").map(str::to_string),
        };
        let compress = [
            ("CONFIG_MODULE_COMPRESS_GZIP", Compression::Gzip),
            ("CONFIG_MODULE_COMPRESS_XZ", Compression::Xz),
            ("CONFIG_MODULE_COMPRESS_ZSTD", Compression::Zstd),
        ]
        .into_iter()
        .find(|(symbol, _)| config.builtin(symbol))
        .map(|(_, c)| c);
        Ok(KernelTree {
            kdir: kdir.to_path_buf(),
            release,
            cc_version_text: config.get("CONFIG_CC_VERSION_TEXT").map(str::to_string),
            vermagic,
            symvers,
            arch,
            compiler,
            module_sig,
            compress,
            host_tools: host_tools(kdir)?,
            toolchains: super::toolroot::roots_of_tree(kdir),
            config,
        })
    }

    /// Refuse a tree that is not for `target`'s architecture (its ARCH, and its word size:
    /// an amd64 tree is ARCH=x86 too, but not for an i386 target), before make fails far
    /// from the cause.
    pub fn check_arch(&self, target: &crate::config::Target) -> Result<()> {
        let fix = format!(
            "list this tree under the profile of its architecture, or correct [kernels] paths in {}",
            crate::config::load::where_to_change(&target.file)
        );
        if self.arch != target.kernel_arch {
            return Err(Error::env(format!(
                "is a kernel tree for ARCH={}, but target `{}` builds for ARCH={}",
                self.arch, target.name, target.kernel_arch
            ))
            .at(&self.kdir)
            .hint(fix));
        }
        let tree_64 = self.config.builtin("CONFIG_64BIT");
        let target_64 = matches!(
            target.dkms_arch.as_str(),
            "x86_64"
                | "aarch64"
                | "ppc64"
                | "ppc64le"
                | "riscv64"
                | "s390x"
                | "mips64"
                | "loongarch64"
        );
        if tree_64 != target_64 {
            let bits = |b: bool| if b { "64-bit" } else { "32-bit" };
            return Err(Error::env(format!(
                "is a {} kernel tree, but target `{}` ({}) is {}",
                bits(tree_64),
                target.name,
                target.dkms_arch,
                bits(target_64)
            ))
            .at(&self.kdir)
            .hint(fix));
        }
        Ok(())
    }

    /// Fail, saying what to do, when the kernel checks symbol CRCs (CONFIG_MODVERSIONS) but
    /// the tree has no `Module.symvers`: modpost then leaves `__versions` empty and the
    /// kernel refuses every module built here ("no symbol version for module_layout").
    pub fn check_modversions(&self) -> Result<()> {
        if self.symvers.is_some() || !self.config.builtin("CONFIG_MODVERSIONS") {
            return Ok(());
        }
        Err(Error::env(
            "the kernel has CONFIG_MODVERSIONS but the tree has no Module.symvers: modules built against it get no symbol CRCs and the kernel refuses them (\"no symbol version for module_layout\")",
        )
        .at(&self.kdir)
        .hint("copy the kernel's Module.symvers into the tree (Debian: from its linux-headers package; a self-built kernel: from its build directory after `make modules`), or fetch the tree with `kmx kernels fetch`"))
    }

    /// Fail, saying what to do, unless the tree's host tools run on this machine.
    pub fn check_host_tools(&self) -> Result<()> {
        let rebuild = format!(
            "rebuild them with `make -C {} scripts` on this host or fetch a tree with `kmx kernels fetch`",
            self.kdir.display()
        );
        match &self.host_tools {
            HostTools::Ok => Ok(()),
            HostTools::Missing(paths) => {
                let names: Vec<_> = paths
                    .iter()
                    .map(|p| {
                        p.strip_prefix(&self.kdir)
                            .unwrap_or(p)
                            .display()
                            .to_string()
                    })
                    .collect();
                Err(
                    Error::env(format!("host tools not found: {}", names.join(", ")))
                        .at(&self.kdir)
                        .hint(format!("the tree's host tools are not built; {rebuild}")),
                )
            }
            HostTools::NotElf(tool) => Err(Error::env("is not an ELF executable")
                .at(tool)
                .hint(format!("the tree's host tools are damaged; {rebuild}"))),
            HostTools::Foreign { tool, machine } => {
                let host = host_identity().map_or("unknown".to_string(), |h| describe(h, *machine));
                Err(Error::env(format!(
                    "is built for {}, this host is {host}",
                    describe(*machine, host_identity().unwrap_or(*machine))
                ))
                .at(tool)
                .hint(format!(
                    "the tree's host tools were built for another machine; {rebuild}"
                )))
            }
        }
    }
}

/// `ident` by machine name alone ("AArch64"), or in full when `other` has the same machine.
fn describe(ident: ElfIdentity, other: ElfIdentity) -> String {
    if ident.machine == other.machine {
        ident.to_string()
    } else {
        machine::name(ident.machine).to_string()
    }
}

/// The value of `#define <name> "<value>"` in `<kdir>/<file>`.
fn read_define(kdir: &Path, file: &str, name: &str) -> Result<String> {
    let path = kdir.join(file);
    let Some(text) = read_optional(&path)? else {
        return Err(Error::env("not found").at(&path).hint(NOT_PREPARED));
    };
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("#define")?.trim().strip_prefix(name))
        .find_map(|rest| rest.trim().strip_prefix('"')?.strip_suffix('"'))
        .map(str::to_string)
        .ok_or_else(|| {
            Error::env(format!("no `#define {name} \"...\"` line"))
                .at(&path)
                .hint(NOT_PREPARED)
        })
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// The value of a simple `[override] NAME = value` (or `:=`) assignment in a makefile.
/// The versioned GCC a CONFIG_CC_VERSION_TEXT names (`gcc-13` of
/// `x86_64-linux-gnu-gcc-13 (Ubuntu 13.2.0-23ubuntu4) 13.2.0`); `None` for plain `gcc` or
/// another compiler.
fn versioned_gcc(text: &str) -> Option<String> {
    let word = text.split_whitespace().next()?;
    let at = word.rfind("gcc-")?;
    let version = &word[at + 4..];
    (!version.is_empty() && version.chars().all(|c| c.is_ascii_digit()))
        .then(|| word[at..].to_string())
}

fn make_variable<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let line = line.trim();
        let line = line.strip_prefix("override ").unwrap_or(line).trim_start();
        let rest = line.strip_prefix(name)?.trim_start();
        let value = rest.strip_prefix(":=").or(rest.strip_prefix('='))?;
        Some(value.trim())
    })
}

fn host_tools(kdir: &Path) -> Result<HostTools> {
    let paths: Vec<PathBuf> = HOST_TOOLS.iter().map(|t| kdir.join(t)).collect();
    let missing: Vec<PathBuf> = paths.iter().filter(|p| !p.is_file()).cloned().collect();
    if !missing.is_empty() {
        return Ok(HostTools::Missing(missing));
    }
    let Some(host) = host_identity() else {
        return Ok(HostTools::Ok);
    };
    for tool in paths {
        match elf_identity(&tool)? {
            None => return Ok(HostTools::NotElf(tool)),
            Some(id) if id != host => return Ok(HostTools::Foreign { tool, machine: id }),
            Some(_) => {}
        }
    }
    Ok(HostTools::Ok)
}

/// Class, byte order and e_machine from the first 20 bytes of an ELF file; `None` when the
/// file is not ELF.
pub(crate) fn elf_identity(path: &Path) -> Result<Option<ElfIdentity>> {
    use std::io::Read;
    let mut header = [0u8; 20];
    let mut file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    if let Err(e) = file.read_exact(&mut header) {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Ok(None),
            _ => Err(Error::io("read", path, e)),
        };
    }
    if header[..4] != *b"\x7fELF" {
        return Ok(None);
    }
    let class = match header[4] {
        1 => ElfClass::Elf32,
        2 => ElfClass::Elf64,
        _ => return Ok(None),
    };
    let (endian, machine) = match header[5] {
        1 => (Endian::Little, u16::from_le_bytes([header[18], header[19]])),
        2 => (Endian::Big, u16::from_be_bytes([header[18], header[19]])),
        _ => return Ok(None),
    };
    Ok(Some(ElfIdentity {
        class,
        endian,
        machine,
    }))
}

/// The ELF identity of programs built for the machine kmx runs on.
fn host_identity() -> Option<ElfIdentity> {
    use ElfClass::*;
    use machine::*;
    let (class, machine) = match std::env::consts::ARCH {
        "x86" => (Elf32, EM_386),
        "x86_64" => (Elf64, EM_X86_64),
        "arm" => (Elf32, EM_ARM),
        "aarch64" => (Elf64, EM_AARCH64),
        "powerpc" => (Elf32, EM_PPC),
        "powerpc64" => (Elf64, EM_PPC64),
        "s390x" => (Elf64, EM_S390),
        "mips" => (Elf32, EM_MIPS),
        "mips64" => (Elf64, EM_MIPS),
        "riscv64" => (Elf64, EM_RISCV),
        "loongarch64" => (Elf64, EM_LOONGARCH),
        _ => return None,
    };
    let endian = if cfg!(target_endian = "little") {
        Endian::Little
    } else {
        Endian::Big
    };
    Some(ElfIdentity {
        class,
        endian,
        machine,
    })
}

impl KernelTree {
    /// [`Toolchain::probe`] for the compiler this tree calls; the error names the tree and
    /// the compiler its kernel was built with (CONFIG_CC_VERSION_TEXT): kmx builds a tree's
    /// modules with that compiler, never silently with another.
    pub fn probe_compiler(
        &self,
        toolchain: &crate::config::Toolchain,
    ) -> Result<crate::config::probe::Compiler> {
        let tree_cc = self.compiler.as_deref();
        // The root kmx assembled from the tree's own distribution comes first: it has the
        // compiler the kernel was built with, where the host's of the same name may not.
        if toolchain.cc.is_none()
            && let Some(root) = self
                .toolchains
                .as_ref()
                .and_then(|roots| super::toolroot::find(roots, &toolchain.compiler_name(tree_cc)))
        {
            return toolchain
                .probe_in_root(tree_cc, &root)
                .map_err(|e| self.refused(e));
        }
        toolchain.probe(tree_cc).map_err(|e| {
            // A fetched tree (`<sysroot>/usr/src/<name>`) can have a root made for it.
            let fetched = self.kdir.parent().is_some_and(|p| p.ends_with("usr/src"));
            let assemble = super::toolroot::compiler_package(&toolchain.compiler_name(tree_cc))
                .filter(|_| toolchain.cc.is_none() && fetched)
                .map(|_| "`kmx kernels fetch` for its target assembles a toolchain root with that compiler from the tree's distribution; ")
                .unwrap_or_default();
            let hint = format!("{assemble}{}", e.hint.as_deref().unwrap_or_default());
            self.refused(e.hint(hint))
        })
    }

    /// `e` (the compiler cannot be found or run) as the refusal of this tree.
    fn refused(&self, e: Error) -> Error {
        let hint = format!(
            "{}or forget the tree: `kmx kernels remove {}`",
            e.hint
                .as_deref()
                .map(|h| format!("{h}; "))
                .unwrap_or_default(),
            self.release
        );
        Error::env(format!(
            "{}: kernel {} was built with \"{}\", and kmx builds its modules with that compiler only",
            e.message,
            self.release,
            self.cc_version_text.as_deref().unwrap_or("an unknown compiler")
        ))
        .hint(hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiler_of_a_tree_without_kernelvariables_comes_from_cc_version_text() {
        assert_eq!(
            versioned_gcc("x86_64-linux-gnu-gcc-13 (Ubuntu 13.2.0-23ubuntu4) 13.2.0").as_deref(),
            Some("gcc-13")
        );
        assert_eq!(
            versioned_gcc("gcc-12 (Debian 12.2.0-14) 12.2.0").as_deref(),
            Some("gcc-12")
        );
        assert_eq!(versioned_gcc("gcc (GCC) 13.2.1 20230801"), None);
        assert_eq!(versioned_gcc("Debian clang version 16.0.6 (15)"), None);
    }
    use crate::error::render;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/trees")
            .join(name)
    }

    fn inspect(name: &str) -> KernelTree {
        KernelTree::inspect(&fixture(name)).unwrap()
    }

    #[test]
    fn vermagic_of_each_fixture_tree() {
        for (name, want) in [
            (
                "amd64",
                "6.1.0-50-amd64 SMP preempt mod_unload modversions ",
            ),
            (
                "686-pae",
                "6.1.0-50-686-pae SMP preempt mod_unload modversions 686 ",
            ),
            ("arm64", "6.1.0-50-arm64 SMP mod_unload modversions aarch64"),
            (
                "armmp",
                "6.1.0-50-armmp SMP mod_unload modversions ARMv7 p2v8 ",
            ),
            (
                "marvell",
                "6.1.0-50-marvell mod_unload modversions ARMv5 p2v8 ",
            ),
            (
                "rt-amd64",
                "6.1.0-50-rt-amd64 SMP preempt_rt mod_unload modversions ",
            ),
        ] {
            let tree = inspect(name);
            assert_eq!(tree.vermagic.to_string(), want, "tree {name}");
            assert_eq!(tree.release, want.split(' ').next().unwrap());
        }
    }

    #[test]
    fn arch_compiler_signing_and_compression() {
        let armmp = inspect("armmp");
        assert_eq!(armmp.arch, "arm");
        assert_eq!(armmp.compiler.as_deref(), Some("gcc-12"));
        assert_eq!(
            armmp.cc_version_text.as_deref(),
            Some("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0")
        );
        let sig = SigConfig {
            enabled: true,
            force: false,
            all: true,
            hash: Some("sha256".into()),
        };
        assert_eq!(armmp.module_sig, sig);
        assert_eq!(armmp.compress, None);
        assert_eq!(armmp.symvers, None);
        assert_eq!(inspect("686-pae").arch, "x86");
        // No .kernelvariables: ARCH from .config, the compiler CONFIG_CC_VERSION_TEXT names.
        let marvell = inspect("marvell");
        assert_eq!(
            (marvell.arch.as_str(), marvell.compiler.as_deref()),
            ("arm", Some("gcc-12"))
        );
        assert_eq!(marvell.compress, Some(Compression::Xz));
        assert!(!marvell.module_sig.enabled);
        let rt = inspect("rt-amd64");
        assert_eq!(rt.arch, "x86");
        assert!(rt.module_sig.force);
        assert_eq!(rt.module_sig.hash.as_deref(), Some("sha512"));
        assert_eq!(rt.compress.map(Compression::extension), Some("zst"));
    }

    #[test]
    fn missing_files_are_named_with_what_to_do() {
        let err = |name: &str| render(&KernelTree::inspect(&fixture(name)).unwrap_err());
        let kdir = fixture("no-utsrelease");
        assert_eq!(
            err("no-utsrelease"),
            format!(
                "error: {}/include/generated/utsrelease.h: not found\n  hint: {NOT_PREPARED}",
                kdir.display()
            )
        );
        let kdir = fixture("no-config");
        assert_eq!(
            err("no-config"),
            format!(
                "error: {}/.config: not found\n  hint: {NOT_PREPARED}",
                kdir.display()
            )
        );
    }

    /// The first 20 bytes of an ELF64 little-endian executable for `machine`.
    fn elf_header(machine: u16) -> Vec<u8> {
        let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        h.extend([0; 8]);
        h.extend(2u16.to_le_bytes()); // ET_EXEC
        h.extend(machine.to_le_bytes());
        h
    }

    fn tree_with_tools(header: &[u8]) -> (tempfile::TempDir, KernelTree) {
        let dir = tempfile::tempdir().unwrap();
        let kdir = dir.path();
        std::fs::create_dir_all(kdir.join("include/generated")).unwrap();
        std::fs::create_dir_all(kdir.join("scripts/basic")).unwrap();
        std::fs::create_dir_all(kdir.join("scripts/mod")).unwrap();
        for f in [".config", "include/generated/utsrelease.h"] {
            std::fs::copy(fixture("amd64").join(f), kdir.join(f)).unwrap();
        }
        for tool in HOST_TOOLS {
            std::fs::write(kdir.join(tool), header).unwrap();
        }
        let tree = KernelTree::inspect(kdir).unwrap();
        (dir, tree)
    }

    #[test]
    fn foreign_host_tools_are_named_with_their_machine() {
        let host = host_identity().unwrap();
        let other = if host.machine == machine::EM_AARCH64 {
            machine::EM_X86_64
        } else {
            machine::EM_AARCH64
        };
        let (dir, tree) = tree_with_tools(&elf_header(other));
        let fixdep = dir.path().join("scripts/basic/fixdep");
        assert!(matches!(&tree.host_tools,
            HostTools::Foreign { tool, machine } if *tool == fixdep && machine.machine == other));
        let e = render(&tree.check_host_tools().unwrap_err());
        if host.machine == machine::EM_X86_64 {
            assert_eq!(
                e,
                format!(
                    "error: {}: is built for AArch64, this host is x86-64\n  hint: the tree's host tools were built for another machine; rebuild them with `make -C {} scripts` on this host or fetch a tree with `kmx kernels fetch`",
                    fixdep.display(),
                    dir.path().display()
                )
            );
        }
        // Same machine, wrong class (i386-style ELF32 tools on a 64-bit host and vice versa).
        let mut header = elf_header(host.machine);
        header[4] = if host.class == ElfClass::Elf64 { 1 } else { 2 };
        let (_dir, tree) = tree_with_tools(&header);
        let e = tree.check_host_tools().unwrap_err().to_string();
        assert!(e.contains("is built for ELF"), "{e}");
    }

    #[test]
    fn host_tools_ok_missing_and_not_elf() {
        let host = host_identity().unwrap();
        let mut header = elf_header(host.machine);
        header[4] = if host.class == ElfClass::Elf64 { 2 } else { 1 };
        let (_dir, tree) = tree_with_tools(&header);
        assert_eq!(tree.host_tools, HostTools::Ok);
        tree.check_host_tools().unwrap();
        let (dir, tree) = tree_with_tools(b"#!/bin/sh\nexit 0\n");
        assert_eq!(
            tree.host_tools,
            HostTools::NotElf(dir.path().join("scripts/basic/fixdep"))
        );
        let amd64 = inspect("amd64");
        assert_eq!(
            amd64.host_tools,
            HostTools::Missing(
                HOST_TOOLS
                    .iter()
                    .map(|t| fixture("amd64").join(t))
                    .collect()
            )
        );
        assert_eq!(
            render(&amd64.check_host_tools().unwrap_err()),
            format!(
                "error: {kdir}: host tools not found: scripts/basic/fixdep, scripts/mod/modpost\n  hint: the tree's host tools are not built; rebuild them with `make -C {kdir} scripts` on this host or fetch a tree with `kmx kernels fetch`",
                kdir = fixture("amd64").display()
            )
        );
    }

    #[test]
    fn randstruct_hash_is_read_from_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let kdir = dir.path();
        std::fs::create_dir_all(kdir.join("include/generated")).unwrap();
        std::fs::copy(
            fixture("arm64").join("include/generated/utsrelease.h"),
            kdir.join("include/generated/utsrelease.h"),
        )
        .unwrap();
        let config = std::fs::read_to_string(fixture("arm64").join(".config")).unwrap();
        std::fs::write(kdir.join(".config"), config + "CONFIG_RANDSTRUCT=y\n").unwrap();
        let e = render(&KernelTree::inspect(kdir).unwrap_err());
        assert!(
            e.contains("include/generated/randstruct_hash.h: not found"),
            "{e}"
        );
        std::fs::write(
            kdir.join("include/generated/randstruct_hash.h"),
            // As scripts/gen-randstruct-seed.sh writes it: the sha256 of the seed.
            "#define RANDSTRUCT_HASHED_SEED \"5eed\"\n",
        )
        .unwrap();
        assert_eq!(
            KernelTree::inspect(kdir).unwrap().vermagic.to_string(),
            "6.1.0-50-arm64 SMP mod_unload modversions aarch64RANDSTRUCT_5eed"
        );
    }
}

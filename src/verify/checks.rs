//! The load checks: will this module load on that kernel, and if not, exactly why. Each
//! check answers one question the kernel asks at `insmod` time (kernel/module/main.c and
//! kernel/module/version.c), with the kernel's own rules, and reports pass / warn / fail
//! with its evidence:
//!
//! - [`identity`]: ELF class, byte order and machine of the target (`elf_check_arch`); on
//!   ARM also the `.ARM.attributes` CPU architecture against the kernel's `ARMv<N>`.
//! - [`vermagic`]: `same_magic`: with modversions on both sides the release is ignored and
//!   the rest must match byte for byte; otherwise the whole string.
//! - [`modversions`]: `check_version`: `module_layout` first, then every `__versions` CRC
//!   against the exporter's ("disagrees about version of symbol X").
//! - [`symbols`]: every undefined symbol resolved by the kernel's `Module.symvers` or by the
//!   other modules given ("Unknown symbol X"), GPL-only exports and symbol namespaces
//!   included.
//! - [`depends`]: `depends=` names found among the modules given or the kernel's own modules.
//! - [`signature`]: signed or not, and whether the kernel refuses unsigned modules.
//!
//! Inputs are already read: a [`Module`], the kernel tree with its `Module.symvers` loaded
//! once ([`TreeSymbols`]) and the exports of the other modules of the run ([`Others`]).
//! Nothing here does I/O except [`TreeSymbols::load`], prints, or stops at the first
//! problem: every check runs and says what it saw. `kmx verify` and `kmx build` (through
//! [`super::built`]) both use these functions, so there is one implementation of the rules.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::config::arch::{ElfIdentity, machine};
use crate::error::Result;
use crate::kernel::symvers::{FxBuildHasher, Symvers};
use crate::kernel::tree::KernelTree;
use crate::kernel::vermagic::{self, Vermagic};
use crate::verify::module::{Module, VersionsFormat};
use crate::verify::signing::{self, Keyring, Verdict};

/// The outcome of one check. Ordered by severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        })
    }
}

/// Which question a [`Check`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// The file could not be read as a module at all.
    Read,
    /// No kernel tree of the target fits the module.
    Kernel,
    Identity,
    Vermagic,
    Modversions,
    Symbols,
    Depends,
    Signature,
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckKind::Read => "read",
            CheckKind::Kernel => "kernel",
            CheckKind::Identity => "identity",
            CheckKind::Vermagic => "vermagic",
            CheckKind::Modversions => "modversions",
            CheckKind::Symbols => "symbols",
            CheckKind::Depends => "depends",
            CheckKind::Signature => "signature",
        })
    }
}

/// One check's verdict: a one-line summary and the evidence behind it (one item per symbol,
/// token or fact).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub check: CheckKind,
    pub status: Status,
    pub summary: String,
    pub evidence: Vec<String>,
    /// What the check found, where a caller acts on it (the summary is for people).
    #[serde(skip)]
    pub finding: Option<Finding>,
    /// How many of the first items of `evidence` are why the kernel refuses the module, one
    /// per symbol (modversions); the rest are notes (a CRC not known here, a symbol
    /// accepted). See [`Check::refusals`].
    #[serde(skip)]
    pub refused: usize,
}

/// A finding of a check that the commands act on beyond printing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// The module is unsigned and the kernel loads it tainted ([`UNSIGNED`]): the run
    /// ends with [`UNSIGNED_HINT`], once.
    Unsigned,
}

impl Check {
    /// The evidence items that are why the kernel refuses the module.
    pub fn refusals(&self) -> &[String] {
        &self.evidence[..self.refused.min(self.evidence.len())]
    }

    pub fn new(check: CheckKind, status: Status, summary: impl Into<String>) -> Check {
        Check {
            check,
            status,
            summary: summary.into(),
            evidence: Vec::new(),
            finding: None,
            refused: 0,
        }
    }

    fn with(mut self, evidence: Vec<String>) -> Check {
        self.evidence = evidence;
        self
    }
}

/// How strict to be beyond the kernel's own rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// A vermagic that differs only in the release (which the kernel accepts from a module
    /// with modversions) fails instead of warning.
    pub strict: bool,
    /// Judge as a kernel booted with `module.sig_enforce=1`: a module without a valid
    /// signature from a trusted key is refused.
    pub sig_enforce: bool,
}

/// A kernel tree's exports, loaded once per run and shared by every module checked
/// against it: `Module.symvers`, and the names of the in-tree modules it lists.
#[derive(Debug, Default)]
pub struct TreeSymbols {
    pub symvers: Symvers,
    /// Basenames of the exporting modules (`drivers/usb/storage/usb-storage` gives
    /// `usb_storage`), normalised with [`module_key`].
    pub modules: HashSet<String, FxBuildHasher>,
}

impl TreeSymbols {
    /// Load the tree's `Module.symvers`; `None` when the tree has none.
    pub fn load(tree: &KernelTree) -> Result<Option<TreeSymbols>> {
        match &tree.symvers {
            Some(path) => Ok(Some(TreeSymbols::new(Symvers::load(path)?))),
            None => Ok(None),
        }
    }

    pub fn new(symvers: Symvers) -> TreeSymbols {
        // A few thousand exporting modules among tens of thousands of symbols: each name
        // is normalised (allocated) once.
        let basenames: HashSet<&str, FxBuildHasher> =
            symvers.map.values().map(|e| basename(&e.module)).collect();
        let modules = basenames.into_iter().map(module_key).collect();
        TreeSymbols { symvers, modules }
    }
}

/// The kernel a module is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Kernel<'a> {
    pub tree: &'a KernelTree,
    /// `None` when the tree has no `Module.symvers`: CRCs and symbols cannot be checked.
    pub symbols: Option<&'a TreeSymbols>,
    /// The keys the kernel trusts for module signatures, as far as kmx knows them.
    pub keys: Keys<'a>,
}

/// What kmx knows of the keys a kernel trusts for module signatures.
#[derive(Debug, Clone, Copy)]
pub enum Keys<'a> {
    /// Its built-in certificates and/or those given with `--cert`.
    Known(&'a Keyring),
    /// Not known, and why (no kernel image fetched, unreadable image).
    Unknown(&'a KeysUnknown),
}

/// Why kmx does not know the keys a kernel trusts (so signatures are not checked).
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeysUnknown {
    /// Not asked for: the module is not signed, the kernel does not check signatures, or
    /// the caller judges loading without the signature (a build's own check, `kmx compat`).
    #[error("not asked for")]
    NotAsked,
    /// No image of the kernel was fetched, and no `--cert` given.
    #[error(
        "kmx has no certificate of kernel {release} (fetch its image with `kmx kernels fetch --with-image`, or pass --cert FILE)"
    )]
    NoCertificate { release: String },
    /// The kernel image's built-in certificates could not be read.
    #[error("{}", crate::error::render_inline(.0))]
    Image(crate::Error),
}

impl Kernel<'_> {
    fn has(&self, config: &str) -> bool {
        self.tree.config.builtin(config)
    }
}

/// A symbol exported by a module outside the kernel tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherExport {
    pub module: String,
    /// Known when the exporter's build `Module.symvers` was given; a `.ko` alone does not
    /// say it in a form worth decoding.
    pub crc: Option<u32>,
}

/// Exports of the other modules of the run (e.g. the rest of a modules tree, or a build's
/// dependencies): what resolves a symbol the kernel does not export.
#[derive(Debug, Default)]
pub struct Others {
    symbols: HashMap<String, OtherExport, FxBuildHasher>,
    modules: HashSet<String, FxBuildHasher>,
}

impl Others {
    /// Add a module's exports (CRCs unknown, unless a `Module.symvers` already gave them).
    pub fn add_module(&mut self, name: &str, exported: &[String]) {
        self.modules.insert(module_key(name));
        for symbol in exported {
            self.symbols
                .entry(symbol.clone())
                .or_insert_with(|| OtherExport {
                    module: name.to_string(),
                    crc: None,
                });
        }
    }

    /// Add a build's `Module.symvers` (out-of-tree exports with their CRCs).
    pub fn add_symvers(&mut self, symvers: &Symvers) {
        for (symbol, e) in &symvers.map {
            let module = basename(&e.module).to_string();
            self.modules.insert(module_key(&module));
            self.symbols.insert(
                symbol.clone(),
                OtherExport {
                    module,
                    crc: Some(e.crc),
                },
            );
        }
    }

    pub fn get(&self, symbol: &str) -> Option<&OtherExport> {
        self.symbols.get(symbol)
    }

    pub fn has_module(&self, name: &str) -> bool {
        self.modules.contains(&module_key(name))
    }
}

/// A module name as the kernel compares them: `-` and `_` are the same.
pub fn module_key(name: &str) -> String {
    name.replace('-', "_")
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The name a module goes by in messages: `name=` from `.modinfo`, else `fallback` (the
/// file name).
pub fn display_name<'a>(module: &'a Module, fallback: &'a str) -> &'a str {
    module.name().unwrap_or(fallback)
}

/// Every check for `module`: against `kernel` when there is one, else the identity check and
/// the facts `modinfo` would show (vermagic, modversions, signature).
pub fn run_all(
    module: &Module,
    expected: Option<&ElfIdentity>,
    kernel: Option<Kernel>,
    others: &Others,
    opts: Options,
) -> Vec<Check> {
    let mut out = Vec::with_capacity(6);
    if let Some(ident) = expected {
        out.push(identity(module, ident, kernel));
    }
    match kernel {
        Some(k) => {
            out.push(vermagic(module, k, opts));
            out.push(modversions(module, k, others));
            out.push(symbols(module, k, others));
            out.push(depends(module, Some(k), others));
            out.push(signature(module, Some(k), opts));
        }
        None => {
            out.push(vermagic_info(module));
            out.push(modversions_info(module));
            out.push(signature(module, None, opts));
        }
    }
    out
}

/// True when `module` uses a symbol, or names a dependency, that the kernel does not
/// provide: its `symbols`, `modversions` and `depends` verdicts then depend on the other
/// modules of the run.
pub fn needs_others(module: &Module, kernel: Kernel) -> bool {
    let Some(symbols) = kernel.symbols else {
        return false;
    };
    module
        .undefined
        .iter()
        .filter(|s| !ignored_undefined(s, module.identity.machine))
        .any(|s| symbols.symvers.get(s).is_none())
        || module
            .versions
            .iter()
            .any(|v| symbols.symvers.get(&v.name).is_none())
        || module
            .depends()
            .iter()
            .any(|d| !symbols.modules.contains(&module_key(d)))
}

// ---------------------------------------------------------------------------------------------
// ELF identity

/// ARM's Tag_CPU_arch values (ARM IHI 0045, "Addenda to the ARM ABI") as the `N` of the
/// kernel's `ARMv<N>` vermagic token: v4/v4T 4, v5T/v5TE/v5TEJ 5, v6/v6KZ/v6T2/v6K/v6-M/v6S-M
/// 6, v7/v7E-M 7, v8-A and later 8.
pub fn arm_cpu_level(tag_cpu_arch: u8) -> Option<u8> {
    Some(match tag_cpu_arch {
        1 | 2 => 4,
        3..=5 => 5,
        6..=9 | 11 | 12 => 6,
        10 | 13 => 7,
        14.. => 8,
        0 => return None,
    })
}

fn arm_level_of(vermagic: &str) -> Option<u8> {
    vermagic
        .split_whitespace()
        .find_map(|t| t.strip_prefix("ARMv"))
        .and_then(|n| n.parse().ok())
}

/// EF_ARM_EABIMASK and the EABI version every modern ARM module carries.
const EF_ARM_EABIMASK: u32 = 0xFF00_0000;
const EF_ARM_EABI_VER5: u32 = 0x0500_0000;

/// The ELF class, byte order and machine must be the target's (the kernel's
/// `elf_check_arch` refuses any other with "Invalid ELF header"). For ARM, whose armhf and
/// armel modules have identical headers, the `.ARM.attributes` CPU architecture is compared
/// with the kernel's `ARMv<N>`: the loader does not look at it, so either way it is a
/// warning saying which CPUs run the module.
pub fn identity(module: &Module, expected: &ElfIdentity, kernel: Option<Kernel>) -> Check {
    let found = module.identity;
    if found != *expected {
        let mut why = Vec::new();
        if found.class != expected.class {
            why.push(format!(
                "class: module {:?}, target {:?}",
                found.class, expected.class
            ));
        }
        if found.endian != expected.endian {
            why.push(format!(
                "byte order: module {:?}, target {:?}",
                found.endian, expected.endian
            ));
        }
        if found.machine != expected.machine {
            why.push(format!(
                "machine: module {} ({}), target {} ({})",
                machine::name(found.machine),
                found.machine,
                machine::name(expected.machine),
                expected.machine
            ));
        }
        return Check::new(
            CheckKind::Identity,
            Status::Fail,
            format!("is {found}, the target's modules are {expected}"),
        )
        .with(why);
    }
    let mut evidence = vec![found.to_string()];
    if found.machine != machine::EM_ARM {
        return Check::new(CheckKind::Identity, Status::Pass, found.to_string()).with(evidence);
    }
    let eabi = module.e_flags & EF_ARM_EABIMASK;
    evidence.push(format!(
        "e_flags {:#010x} (EABI{})",
        module.e_flags,
        eabi >> 24
    ));
    let mut status = Status::Pass;
    let mut summary = format!("{found}, EABI{}", eabi >> 24);
    if eabi != EF_ARM_EABI_VER5 {
        status = Status::Warn;
        summary = format!(
            "{found} with e_flags {:#010x}: not EABI5, which every current ARM kernel is built for",
            module.e_flags
        );
    }
    let kernel_level = kernel.and_then(|k| arm_level_of(&k.tree.vermagic.flags));
    match (module.arm_cpu_arch, kernel_level) {
        (Some(tag), Some(level)) => {
            let module_level = arm_cpu_level(tag);
            evidence.push(format!(
                "Tag_CPU_arch {tag} (ARMv{}), kernel ARMv{level}",
                module_level.map_or("?".to_string(), |l| l.to_string())
            ));
            match module_level {
                Some(m) if m > level => {
                    // The loader never reads .ARM.attributes: Debian's own armmp kernel
                    // ships ARMv8 crypto modules that check the CPU in their init.
                    status = status.max(Status::Warn);
                    summary = format!(
                        "needs an ARMv{m} CPU (Tag_CPU_arch {tag}); the kernel is built for ARMv{level}: it loads, but runs only on ARMv{m} CPUs (an armhf module on an armel kernel, or a module that checks the CPU at init)"
                    );
                }
                Some(m) if m < level => {
                    status = status.max(Status::Warn);
                    summary = format!(
                        "built for ARMv{m} CPUs (Tag_CPU_arch {tag}), the kernel for ARMv{level}: it runs, but was not built with the kernel's flags (an armel module on an armhf kernel?)"
                    );
                }
                _ => summary.push_str(&format!(", ARMv{level} (Tag_CPU_arch {tag})")),
            }
        }
        (Some(tag), None) => evidence.push(format!("Tag_CPU_arch {tag}")),
        (None, _) => evidence.push("no .ARM.attributes Tag_CPU_arch".to_string()),
    }
    Check::new(CheckKind::Identity, status, summary).with(evidence)
}

// ---------------------------------------------------------------------------------------------
// vermagic

/// The part of a vermagic string `same_magic` compares when both sides have modversions:
/// from the first space on (`strcspn(magic, " ")`).
fn after_release(magic: &str) -> &str {
    magic.find(' ').map_or("", |i| &magic[i..])
}

/// The kernel's `check_modinfo` + `same_magic`: a module with `__versions` on a
/// CONFIG_MODVERSIONS kernel may differ in the release (the kernel then relies on the CRCs:
/// a warning here, a failure with `--strict`); any other difference fails, explained token
/// by token.
pub fn vermagic(module: &Module, kernel: Kernel, opts: Options) -> Check {
    let expected = kernel.tree.vermagic.to_string();
    let Some(found) = module.vermagic() else {
        let summary = "the module has no vermagic: the kernel refuses it (\"bad vermagic\")";
        if kernel.has("CONFIG_MODULE_FORCE_LOAD") {
            return Check::new(
                CheckKind::Vermagic,
                Status::Warn,
                "the module has no vermagic: loads only forced (CONFIG_MODULE_FORCE_LOAD), tainting the kernel",
            );
        }
        return Check::new(CheckKind::Vermagic, Status::Fail, summary);
    };
    if found == expected {
        return Check::new(CheckKind::Vermagic, Status::Pass, format!("\"{found}\""));
    }
    let has_crcs =
        module.versions_format != VersionsFormat::None && kernel.has("CONFIG_MODVERSIONS");
    let explained = match Vermagic::parse(found) {
        Some(m) => vermagic::explain_difference(&m, &kernel.tree.vermagic),
        None => vec![format!("the module's vermagic \"{found}\" has no release")],
    };
    let evidence = std::iter::once(format!("module \"{found}\", kernel \"{expected}\""))
        .chain(explained.iter().cloned())
        .collect();
    if has_crcs && after_release(found) == after_release(&expected) {
        let (status, tail) = if opts.strict {
            (Status::Fail, "--strict requires the exact release")
        } else {
            (
                Status::Warn,
                "the kernel accepts it and relies on the symbol CRCs (modversions)",
            )
        };
        return Check::new(
            CheckKind::Vermagic,
            status,
            format!("{}: {tail}", explained.join("; ")),
        )
        .with(evidence);
    }
    Check::new(
        CheckKind::Vermagic,
        Status::Fail,
        format!(
            "{} (version magic '{found}' should be '{expected}')",
            explained.join("; ")
        ),
    )
    .with(evidence)
}

/// Without a kernel: the vermagic as `modinfo` shows it.
pub fn vermagic_info(module: &Module) -> Check {
    match module.vermagic() {
        Some(v) => Check::new(CheckKind::Vermagic, Status::Pass, format!("\"{v}\"")),
        None => Check::new(
            CheckKind::Vermagic,
            Status::Fail,
            "the module has no vermagic: no kernel loads it unforced",
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// modversions

/// The symbol the kernel checks before any other (`check_modstruct_version`).
const MODULE_LAYOUT: &str = "module_layout";

/// The kernel's `check_version` for every `__versions` entry: the CRC must equal the one the
/// exporter has (`module_layout` first). The kernel tree's `Module.symvers` knows the
/// kernel's and in-tree modules' CRCs; an out-of-tree exporter's CRC is known only from its
/// build's `Module.symvers`, otherwise the entry is accepted with a note.
pub fn modversions(module: &Module, kernel: Kernel, others: &Others) -> Check {
    let kind = CheckKind::Modversions;
    if !kernel.has("CONFIG_MODVERSIONS") {
        return Check::new(
            kind,
            Status::Pass,
            "not checked: the kernel has no CONFIG_MODVERSIONS",
        );
    }
    if module.versions_format == VersionsFormat::None {
        // check_version with no __versions: try_to_force_load, which only
        // CONFIG_MODULE_FORCE_LOAD allows ("module_layout: kernel tainted.").
        return if kernel.has("CONFIG_MODULE_FORCE_LOAD") {
            Check::new(
                kind,
                Status::Warn,
                "the module has no __versions: the kernel (CONFIG_MODULE_FORCE_LOAD) loads it forced, tainting itself (\"module_layout: kernel tainted\"), without checking any CRC; build it against a tree with Module.symvers",
            )
        } else {
            Check::new(
                kind,
                Status::Fail,
                "the module has no __versions: the kernel (CONFIG_MODVERSIONS without CONFIG_MODULE_FORCE_LOAD) refuses it (Exec format error); build it against a tree with Module.symvers",
            )
        };
    }
    // module_layout is always checked, and always has a CRC in a modversions kernel.
    if !module.versions.iter().any(|v| v.name == MODULE_LAYOUT) {
        let mut why = vec![no_version(MODULE_LAYOUT, module.versions.is_empty())];
        if kernel.symbols.is_none() {
            why.push(
                "the kernel tree has no Module.symvers: the other CRCs are not checked".into(),
            );
        }
        return Check {
            refused: 1,
            ..Check::new(kind, Status::Fail, why[0].clone()).with(why)
        };
    }
    let Some(symbols) = kernel.symbols else {
        return Check::new(
            kind,
            Status::Warn,
            format!(
                "{} CRCs not checked: the kernel tree has no Module.symvers",
                module.versions.len()
            ),
        );
    };
    let mut bad = Vec::new();
    let mut notes = Vec::new();
    let mut checked = 0usize;
    let listed: HashSet<&str, FxBuildHasher> =
        module.versions.iter().map(|v| v.name.as_str()).collect();
    // module_layout first, as the kernel does. A symbol the module uses without a CRC
    // in __versions is refused: Debian's 6.1 kernels print "no symbol version for X"
    // and refuse the module (measured under QEMU), where mainline's check_version warns
    // once and goes on; kmx follows the kernels it fetches.
    if let Some(layout) = symbols.symvers.get(MODULE_LAYOUT) {
        match module.versions.iter().find(|v| v.name == MODULE_LAYOUT) {
            Some(v) if v.crc != layout.crc => bad.push(Mismatch::Disagrees {
                symbol: MODULE_LAYOUT,
                module_crc: v.crc,
                kernel_crc: layout.crc,
                exporter: "vmlinux",
            }),
            Some(_) => checked += 1,
            None => bad.push(Mismatch::NoVersion {
                symbol: MODULE_LAYOUT,
                empty: module.versions.is_empty(),
            }),
        }
    }
    for name in &module.undefined {
        if listed.contains(name.as_str()) || ignored_undefined(name, module.identity.machine) {
            continue;
        }
        let has_crc = symbols.symvers.get(name).is_some()
            || others.get(name).is_some_and(|o| o.crc.is_some());
        if has_crc {
            bad.push(Mismatch::NoVersion {
                symbol: name,
                empty: false,
            });
        }
    }
    for v in &module.versions {
        if v.name == MODULE_LAYOUT && symbols.symvers.get(MODULE_LAYOUT).is_some() {
            continue;
        }
        if let Some(e) = symbols.symvers.get(&v.name) {
            if e.crc == v.crc {
                checked += 1;
            } else {
                bad.push(Mismatch::Disagrees {
                    symbol: &v.name,
                    module_crc: v.crc,
                    kernel_crc: e.crc,
                    exporter: &e.module,
                });
            }
        } else if let Some(o) = others.get(&v.name) {
            match o.crc {
                Some(crc) if crc == v.crc => checked += 1,
                Some(crc) => bad.push(Mismatch::Disagrees {
                    symbol: &v.name,
                    module_crc: v.crc,
                    kernel_crc: crc,
                    exporter: &o.module,
                }),
                None => notes.push(format!(
                    "{}: exported by {}, whose CRC is not known here (pass its build's Module.symvers with --symvers); accepted",
                    v.name, o.module
                )),
            }
        } else {
            notes.push(format!(
                "{}: exported by no known module, not checked (see symbols)",
                v.name
            ));
        }
    }
    let total = module.versions.len();
    if !bad.is_empty() {
        let summary = if bad.len() == 1 {
            bad[0].to_string()
        } else if module.versions.is_empty() {
            format!(
                "__versions is empty (built against a tree without Module.symvers?): no symbol version for {} symbols; the kernel refuses it (\"no symbol version for module_layout\")",
                bad.len()
            )
        } else {
            format!(
                "{} of {total} symbols disagree or have no version: {}",
                bad.len(),
                bad.iter()
                    .map(Mismatch::symbol)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut evidence: Vec<String> = bad.iter().map(Mismatch::to_string).collect();
        evidence.extend(notes);
        return Check {
            refused: bad.len(),
            ..Check::new(kind, Status::Fail, summary).with(evidence)
        };
    }
    let format = match module.versions_format {
        VersionsFormat::Extended => " (extended modversions)",
        _ => "",
    };
    Check::new(
        kind,
        Status::Pass,
        format!("{checked} of {total} CRCs match{format}"),
    )
    .with(notes)
}

fn no_version(symbol: &str, empty: bool) -> String {
    if empty {
        format!(
            "no symbol version for {symbol}: __versions is empty (built against a tree without Module.symvers?); the kernel refuses it"
        )
    } else {
        format!(
            "no symbol version for {symbol}: the module uses it without a CRC in __versions; the kernel refuses it"
        )
    }
}

/// Why the kernel's `check_version` refuses one `__versions` entry (or a symbol without one).
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub(crate) enum Mismatch<'a> {
    #[error(
        "disagrees about version of symbol {symbol} (module {module_crc:#010x}, {exporter} {kernel_crc:#010x})"
    )]
    Disagrees {
        symbol: &'a str,
        module_crc: u32,
        kernel_crc: u32,
        exporter: &'a str,
    },
    #[error("{}", no_version(symbol, *empty))]
    NoVersion { symbol: &'a str, empty: bool },
}

impl<'a> Mismatch<'a> {
    fn symbol(&self) -> &'a str {
        match *self {
            Mismatch::Disagrees { symbol, .. } | Mismatch::NoVersion { symbol, .. } => symbol,
        }
    }
}

/// Without a kernel: how many CRCs, and `module_layout`'s.
pub fn modversions_info(module: &Module) -> Check {
    let kind = CheckKind::Modversions;
    if module.versions_format == VersionsFormat::None {
        return Check::new(
            kind,
            Status::Pass,
            "none (built without CONFIG_MODVERSIONS)",
        );
    }
    let layout = module
        .versions
        .iter()
        .find(|v| v.name == MODULE_LAYOUT)
        .map(|v| format!(", module_layout {:#010x}", v.crc))
        .unwrap_or_default();
    Check::new(
        kind,
        Status::Pass,
        format!(
            "{} symbol CRCs in {}{layout}",
            module.versions.len(),
            module.versions_format
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// symbols

/// Licenses the kernel treats as GPL-compatible (include/linux/license.h).
fn license_is_gpl_compatible(license: &str) -> bool {
    matches!(
        license,
        "GPL"
            | "GPL v2"
            | "GPL and additional rights"
            | "Dual BSD/GPL"
            | "Dual MIT/GPL"
            | "Dual MPL/GPL"
    )
}

/// Undefined symbols the loader does not resolve (`ignore_undef_symbol`, and the module's
/// own `__this_module`, which modpost ignores too).
fn ignored_undefined(name: &str, machine: u16) -> bool {
    name == "__this_module"
        || (name == "_GLOBAL_OFFSET_TABLE_"
            && matches!(machine, machine::EM_386 | machine::EM_X86_64))
        || name.starts_with("__gnu_lto")
}

/// Every undefined symbol must be exported by the kernel (its `Module.symvers`, which lists
/// in-tree modules' exports too) or by another module of the run, as modpost's "undefined!"
/// and the loader's "Unknown symbol X". A kernel export must also be usable: GPL-only
/// exports need a GPL-compatible license, namespaced ones an `import_ns=`.
pub fn symbols(module: &Module, kernel: Kernel, others: &Others) -> Check {
    let kind = CheckKind::Symbols;
    let Some(symbols) = kernel.symbols else {
        return Check::new(
            kind,
            Status::Warn,
            format!(
                "{} undefined symbols not checked: the kernel tree has no Module.symvers",
                module.undefined.len()
            ),
        );
    };
    let license = module.modinfo_get("license");
    let gpl_ok = license.is_some_and(license_is_gpl_compatible);
    let allow_missing_ns = kernel.has("CONFIG_MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS");
    let mut unknown = Vec::new();
    let mut refused = Vec::new();
    let mut from_others = 0usize;
    let mut total = 0usize;
    for name in &module.undefined {
        if ignored_undefined(name, module.identity.machine) {
            continue;
        }
        total += 1;
        if let Some(e) = symbols.symvers.get(name) {
            if e.export == "EXPORT_SYMBOL_GPL" && !gpl_ok {
                refused.push(format!(
                    "{name} is exported GPL-only by {}, and the module's license {} is not GPL-compatible",
                    basename(&e.module),
                    license.map_or("(none)".to_string(), |l| format!("\"{l}\""))
                ));
            }
            if !e.namespace.is_empty()
                && !allow_missing_ns
                && !module.modinfo_all("import_ns").any(|ns| ns == e.namespace)
            {
                refused.push(format!(
                    "module uses symbol {name} from namespace {}, but does not import it",
                    e.namespace
                ));
            }
        } else if others.get(name).is_some() {
            from_others += 1;
        } else {
            unknown.push(name.as_str());
        }
    }
    if !unknown.is_empty() || !refused.is_empty() {
        let mut evidence: Vec<String> = unknown
            .iter()
            .map(|s| {
                format!("Unknown symbol {s}: exported neither by the kernel nor by the other modules given")
            })
            .collect();
        let summary = if unknown.is_empty() {
            refused[0].clone()
        } else {
            format!(
                "{} undefined symbol{} exported by neither the kernel nor the modules given: {}",
                unknown.len(),
                if unknown.len() == 1 { "" } else { "s" },
                unknown.join(", ")
            )
        };
        evidence.extend(refused);
        return Check::new(kind, Status::Fail, summary).with(evidence);
    }
    let tail = if from_others > 0 {
        format!(" ({from_others} by the other modules given)")
    } else {
        String::new()
    };
    Check::new(
        kind,
        Status::Pass,
        format!("{total} undefined symbols resolved{tail}"),
    )
}

// ---------------------------------------------------------------------------------------------
// depends

/// `depends=` (modpost's list of the modules whose exports this one uses) resolved among the
/// modules of the run or the kernel's own modules (those `Module.symvers` names as
/// exporters). The kernel itself never reads `depends=` (modprobe uses depmod's
/// modules.dep), so a name found nowhere is a warning: the `symbols` check says whether the
/// symbols themselves resolve.
pub fn depends(module: &Module, kernel: Option<Kernel>, others: &Others) -> Check {
    let kind = CheckKind::Depends;
    let deps = module.depends();
    if deps.is_empty() {
        return Check::new(kind, Status::Pass, "none");
    }
    let in_kernel = |d: &str| {
        kernel
            .and_then(|k| k.symbols)
            .is_some_and(|s| s.modules.contains(&module_key(d)))
    };
    let mut missing = Vec::new();
    let mut evidence = Vec::new();
    for d in &deps {
        if others.has_module(d) {
            evidence.push(format!("{d}: among the modules given"));
        } else if in_kernel(d) {
            evidence.push(format!("{d}: a module of the kernel"));
        } else {
            evidence.push(format!("{d}: not found"));
            missing.push(d.as_str());
        }
    }
    if missing.is_empty() {
        Check::new(kind, Status::Pass, deps.join(", ")).with(evidence)
    } else {
        Check::new(
            kind,
            Status::Warn,
            format!(
                "{} found neither among the modules given nor in the kernel's Module.symvers",
                missing.join(", ")
            ),
        )
        .with(evidence)
    }
}

// ---------------------------------------------------------------------------------------------
// signature

/// `module_sig_check` and `pkcs7_verify`: the signature is checked against the keys the
/// kernel trusts (its built-in certificates, from the kernel image, and any `--cert`):
///
/// - a signature over other bytes than the module's (changed after signing) fails: the
///   kernel refuses it even without enforcement ("Key was rejected by service");
/// - unsigned, signed by a key the kernel does not have, or with a signature kmx cannot
///   check: the kernel (CONFIG_MODULE_SIG) loads it tainted, so a warning, unless
///   signatures are enforced (CONFIG_MODULE_SIG_FORCE, or `--sig-enforce` for a kernel
///   booted with `module.sig_enforce=1`), which refuses them; a signature kmx cannot
///   check stays a warning saying so;
/// - where kmx does not know the kernel's keys it says so (a warning), never "passed".
///
/// A kernel without CONFIG_MODULE_SIG ignores signatures altogether.
/// The summary of an unsigned module a kernel with CONFIG_MODULE_SIG loads tainted; what
/// it means and what to do is [`UNSIGNED_HINT`], said once per run, not per module.
pub const UNSIGNED: &str = "unsigned (loads tainted)";

/// What [`UNSIGNED`] means and what to do about it.
pub const UNSIGNED_HINT: &str = "the kernel (CONFIG_MODULE_SIG) loads an unsigned module tainted, and refuses it under module.sig_enforce=1 or Secure Boot: sign modules with a key the kernel trusts (`kmx keys generate` makes one; `kmx install` signs with it)";

pub fn signature(module: &Module, kernel: Option<Kernel>, opts: Options) -> Check {
    let kind = CheckKind::Signature;
    let Some(k) = kernel else {
        return match &module.signature {
            Some(s) => Check::new(
                kind,
                Status::Pass,
                format!("signed by {} ({} {})", signer_of(s), s.id_type, s.hash_algo),
            )
            .with(vec![format!("key {}", s.key_id)]),
            None => Check::new(kind, Status::Pass, "unsigned"),
        };
    };
    let sig = &k.tree.module_sig;
    let enforced = sig.force || opts.sig_enforce;
    let enforced_by = if sig.force {
        "CONFIG_MODULE_SIG_FORCE"
    } else {
        "module.sig_enforce=1"
    };
    if !sig.enabled {
        let what = match &module.signature {
            Some(s) => format!("signed by {}", signer_of(s)),
            None => "unsigned".to_string(),
        };
        return Check::new(
            kind,
            Status::Pass,
            format!("{what}; the kernel does not check signatures (no CONFIG_MODULE_SIG)"),
        );
    }
    let Some(s) = &module.signature else {
        return if enforced {
            Check::new(
                kind,
                Status::Fail,
                format!(
                    "unsigned: the kernel refuses it (\"Loading of unsigned module is rejected\", {enforced_by}); sign it (`kmx install` signs with `kmx keys generate`'s key)"
                ),
            )
        } else {
            Check {
                finding: Some(Finding::Unsigned),
                ..Check::new(kind, Status::Warn, UNSIGNED)
            }
        };
    };
    let who = format!("signed by {} ({} {})", signer_of(s), s.id_type, s.hash_algo);
    let mut evidence = vec![format!("key {}", s.key_id)];
    let Some(message) = &s.message else {
        // mod_check_sig: only PKCS#7 is accepted (-ENOPKG, tolerated unless enforced).
        let why = format!(
            "{who}: the kernel checks only PKCS#7 signatures (\"module with unsupported crypto\")"
        );
        return if enforced {
            Check::new(
                kind,
                Status::Fail,
                format!("{why}; refused ({enforced_by})"),
            )
        } else {
            Check::new(kind, Status::Warn, format!("{why}; it loads tainted"))
        }
        .with(evidence);
    };
    let keyring = match k.keys {
        Keys::Known(keyring) => keyring,
        Keys::Unknown(why) => {
            return Check::new(
                kind,
                Status::Warn,
                format!("{who}; the signature was not checked: {why}"),
            )
            .with(evidence);
        }
    };
    evidence.push(format!("trusted keys: {}", keyring.source));
    match signing::verify(message, keyring) {
        Verdict::Good { key } => Check::new(
            kind,
            Status::Pass,
            format!("{who}, verified with \"{key}\""),
        )
        .with(evidence),
        Verdict::Bad { key, why } => {
            evidence.push(why.clone());
            Check::new(
                kind,
                Status::Fail,
                format!(
                    "{who}: {why} (changed after signing?): the kernel refuses it (\"Key was rejected by service\"), enforced or not; with key \"{key}\""
                ),
            )
            .with(evidence)
        }
        Verdict::UnknownKey => {
            if enforced {
                Check::new(
                    kind,
                    Status::Fail,
                    format!(
                        "{who}, a key the kernel does not trust ({}): refused (\"Loading of module with unavailable key is rejected\", {enforced_by})",
                        keyring.source
                    ),
                )
            } else {
                Check::new(
                    kind,
                    Status::Warn,
                    format!(
                        "{who}, a key the kernel does not trust ({}): it loads tainted (\"module verification failed\"), and is refused under module.sig_enforce=1 or Secure Boot",
                        keyring.source
                    ),
                )
            }
            .with(evidence)
        }
        Verdict::Unchecked { why } => Check::new(
            kind,
            Status::Warn,
            format!("{who}; kmx cannot check this signature: {why}"),
        )
        .with(evidence),
    }
}

fn signer_of(s: &crate::verify::module::Signature) -> String {
    if s.signer.is_empty() {
        "an unnamed signer".to_string()
    } else {
        format!("\"{}\"", s.signer)
    }
}

/// The worst status among `checks` (pass when empty).
pub fn worst(checks: &[Check]) -> Status {
    checks
        .iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(Status::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::kconfig::KConfig;
    use crate::verify::module::SignedMessage;

    fn root() -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// The amd64 fixture tree with `extra` .config lines.
    fn tree(extra: &str) -> KernelTree {
        let kdir = root().join("tests/fixtures/trees/amd64");
        let mut t = KernelTree::inspect(&kdir).unwrap();
        let text = std::fs::read_to_string(kdir.join(".config")).unwrap() + extra;
        t.config = KConfig::parse(&text);
        t.module_sig.force = t.config.builtin("CONFIG_MODULE_SIG_FORCE");
        t
    }

    fn hello() -> Module {
        Module::read(&root().join("tests/data/modules/amd64/hello.ko")).unwrap()
    }

    fn kernel(tree: &KernelTree) -> Kernel<'_> {
        Kernel {
            tree,
            symbols: None,
            keys: Keys::Unknown(&KeysUnknown::NotAsked),
        }
    }

    #[test]
    fn no_versions_follows_module_force_load() {
        let mut m = hello();
        m.versions.clear();
        m.versions_format = VersionsFormat::None;
        let forced = tree("CONFIG_MODULE_FORCE_LOAD=y\n");
        let c = modversions(&m, kernel(&forced), &Others::default());
        assert_eq!(c.status, Status::Warn, "{c:?}");
        let strict = tree("# CONFIG_MODULE_FORCE_LOAD is not set\n");
        let c = modversions(&m, kernel(&strict), &Others::default());
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(
            c.summary.contains("refuses it (Exec format error)"),
            "{c:?}"
        );
    }

    #[test]
    fn modversions_refuses_for_the_mismatches_and_notes_the_rest() {
        let mut m = hello();
        m.undefined.clear();
        m.versions = [("module_layout", 1), ("printk", 5), ("foo", 7)]
            .into_iter()
            .map(|(name, crc)| crate::verify::module::SymbolVersion {
                name: name.into(),
                crc,
            })
            .collect();
        m.versions_format = VersionsFormat::Classic;
        let t = tree("CONFIG_MODVERSIONS=y\n");
        let symbols = TreeSymbols {
            symvers: Symvers::parse(
                "0x00000002\tmodule_layout\tvmlinux\tEXPORT_SYMBOL\t\n\
                 0x00000005\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n",
                std::path::Path::new("Module.symvers"),
            )
            .unwrap(),
            modules: Default::default(),
        };
        let k = Kernel {
            symbols: Some(&symbols),
            ..kernel(&t)
        };
        let c = modversions(&m, k, &Others::default());
        assert_eq!(c.status, Status::Fail, "{c:?}");
        let refusal = "disagrees about version of symbol module_layout (module 0x00000001, vmlinux 0x00000002)";
        assert_eq!(c.summary, refusal);
        assert_eq!(c.refusals(), [refusal]);
        assert_eq!(
            c.evidence,
            [
                refusal,
                "foo: exported by no known module, not checked (see symbols)"
            ]
        );
        // Two refusals: the summary names their symbols, from the typed mismatches.
        m.versions[1].crc = 6;
        let c = modversions(&m, k, &Others::default());
        assert_eq!(
            c.summary,
            "2 of 3 symbols disagree or have no version: module_layout, printk"
        );
        assert_eq!(c.refusals().len(), 2);
    }

    #[test]
    fn empty_versions_fail_even_without_module_symvers() {
        let mut m = hello();
        m.versions.clear();
        let t = tree("");
        let c = modversions(&m, kernel(&t), &Others::default());
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.summary
                .starts_with("no symbol version for module_layout: __versions is empty")
        );
    }

    #[test]
    fn signature_verdicts_follow_enforcement() {
        let t = tree("");
        let unsigned = hello();
        let lax = Options::default();
        let enforce = Options {
            sig_enforce: true,
            ..Options::default()
        };
        assert_eq!(
            signature(&unsigned, Some(kernel(&t)), lax).status,
            Status::Warn
        );
        assert_eq!(
            signature(&unsigned, Some(kernel(&t)), enforce).status,
            Status::Fail
        );
        let forced = tree("CONFIG_MODULE_SIG_FORCE=y\n");
        let c = signature(&unsigned, Some(kernel(&forced)), lax);
        assert_eq!(c.status, Status::Fail);
        assert!(c.summary.contains("CONFIG_MODULE_SIG_FORCE"), "{c:?}");

        // Signed, but by a key no keyring has: ENOKEY, tolerated unless enforced.
        let mut signed = hello();
        signed.signature = Some(crate::verify::module::Signature {
            signer: "someone".into(),
            key_id: "01".into(),
            hash_algo: "sha256".into(),
            id_type: "PKCS#7".into(),
            message: Some(Box::new(SignedMessage {
                issuer: vec![0x30, 0],
                serial: vec![1],
                subject_key_id: None,
                digest_oid: vec![0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 1],
                signature_oid: vec![0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 1],
                signed_attrs: None,
                message_digest: None,
                signature: vec![0; 8],
                certificates: vec![],
                content_digest: Some(vec![0; 32]),
            })),
        });
        let keyring = Keyring::default();
        let with_keys = Kernel {
            keys: Keys::Known(&keyring),
            ..kernel(&t)
        };
        assert_eq!(
            signature(&signed, Some(with_keys), lax).status,
            Status::Warn
        );
        let c = signature(&signed, Some(with_keys), enforce);
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.summary
                .contains("Loading of module with unavailable key is rejected")
        );
        // No keys known: never a pass.
        let c = signature(&signed, Some(kernel(&t)), lax);
        assert_eq!(c.status, Status::Warn);
        assert!(c.summary.contains("the signature was not checked"), "{c:?}");
    }

    #[test]
    fn tag_cpu_arch_levels_follow_the_abi_table() {
        assert_eq!(arm_cpu_level(10), Some(7));
        assert_eq!(arm_cpu_level(4), Some(5));
        assert_eq!(arm_cpu_level(5), Some(5));
        assert_eq!(arm_cpu_level(6), Some(6));
        assert_eq!(arm_cpu_level(9), Some(6));
        assert_eq!(arm_cpu_level(2), Some(4));
        assert_eq!(arm_cpu_level(14), Some(8));
        assert_eq!(arm_cpu_level(0), None);
        assert_eq!(arm_cpu_level(15), Some(8));
        assert_eq!(
            arm_level_of("SMP mod_unload modversions ARMv7 p2v8 "),
            Some(7)
        );
        assert_eq!(arm_level_of("SMP aarch64"), None);
    }

    #[test]
    fn same_magic_compares_from_the_first_space() {
        assert_eq!(
            after_release("6.1.0-50-amd64 SMP preempt "),
            " SMP preempt "
        );
        assert_eq!(after_release("norelease"), "");
    }

    #[test]
    fn module_names_compare_dashes_and_underscores_alike() {
        let mut others = Others::default();
        others.add_module("usb-storage", &["usb_stor_probe1".to_string()]);
        assert!(others.has_module("usb_storage"));
        assert_eq!(others.get("usb_stor_probe1").unwrap().crc, None);
        assert_eq!(basename("drivers/usb/storage/usb-storage"), "usb-storage");
        assert_eq!(basename("vmlinux"), "vmlinux");
    }

    #[test]
    fn gpl_compatible_licenses() {
        assert!(license_is_gpl_compatible("Dual BSD/GPL"));
        assert!(!license_is_gpl_compatible("Proprietary"));
        assert!(!license_is_gpl_compatible("GPLv2"));
    }
}

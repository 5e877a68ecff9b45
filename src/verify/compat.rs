//! The compatibility matrix: for one built module, the verdict of every kernel of its target
//! that kmx knows. It answers "which kernels will this `.ko` load on?" with the same load
//! checks `kmx verify` makes against one tree ([`super::checks`]), so there is one
//! implementation of the kernel's rules: a module with modversions built for 6.1.0-50 may
//! load on 6.1.0-57 (the kernel ignores the release in vermagic when both sides have
//! modversions and compares CRCs instead), or be refused because a CRC changed.
//!
//! A verdict is one of [`Verdict`]: loads, loads with a warning (the release differs but
//! every CRC matches; an ARM CPU level above the kernel's), or refused, with the reasons in
//! the order the kernel checks them (`load_module`: ELF identity, `module_layout`'s CRC, the
//! vermagic, then each symbol's CRC and presence), the first being the message the kernel
//! prints. The signature is not part of the verdict: whether a kernel refuses unsigned or
//! foreign-signed modules is the machine's policy (Secure Boot, `module.sig_enforce`), which
//! `kmx verify --sig-enforce` judges. Nothing here reads files or prints.

use serde::Serialize;

use crate::config::arch::ElfIdentity;
use crate::verify::checks::{self, Check, CheckKind, Kernel, Options, Others, Status};
use crate::verify::module::Module;

/// Whether a kernel loads a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Loads,
    /// Loads, with a caveat (another release with matching CRCs, a CPU level).
    Warns,
    Refused,
}

impl Verdict {
    /// How the terminal table says it.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Loads => "loads",
            Verdict::Warns => "loads, warning",
            Verdict::Refused => "refused",
        }
    }
}

/// One kernel's verdict on one module.
#[derive(Debug, Clone, Serialize)]
pub struct Judgement {
    pub verdict: Verdict,
    /// Why it is refused or warned about, the kernel's first reason first: the failing (or
    /// warning) checks' evidence, one item per symbol or fact.
    pub reasons: Vec<String>,
    /// Every check made, as `kmx verify --json` reports them.
    pub checks: Vec<Check>,
}

/// The order `load_module` (kernel/module/main.c) meets each check's question.
fn kernel_order(kind: CheckKind) -> u8 {
    match kind {
        CheckKind::Read | CheckKind::Kernel => 0,
        CheckKind::Identity => 1,
        CheckKind::Modversions => 2,
        CheckKind::Vermagic => 3,
        CheckKind::Symbols => 4,
        CheckKind::Depends => 5,
        CheckKind::Signature => 6,
    }
}

/// The size of `struct module` on both sides: the module's `.gnu.linkonce.this_module`
/// section, and the kernel's (read from one of its own modules).
#[derive(Debug, Clone, Copy)]
pub struct ThisModule {
    pub module: u64,
    pub kernel: u64,
}

/// Since Linux 6.4 the loader compares the size of a module's `.gnu.linkonce.this_module`
/// with its own `struct module` while validating the ELF file, before `module_layout`'s CRC
/// (measured under QEMU: Debian's 6.12 says so first, 6.1 says `module_layout`).
fn checks_struct_module_size(release: &str) -> bool {
    let mut n = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (n.next().unwrap_or(0), n.next().unwrap_or(0)) >= (6, 4)
}

/// The kernel's message when the sizes of `struct module` differ, or `None`.
fn struct_module_reason(release: &str, this: Option<ThisModule>) -> Option<String> {
    let this = this.filter(|t| t.module != t.kernel)?;
    checks_struct_module_size(release).then(|| {
        format!(
            "identity: .gnu.linkonce.this_module section size must match the kernel's built struct module size at run time (module {} bytes, kernel {})",
            this.module, this.kernel
        )
    })
}

/// Judge `module` against `kernel`: the load checks without the signature. `this_module`,
/// when both sizes are known, adds the loader's check of `struct module`'s size.
pub fn judge(
    module: &Module,
    identity: &ElfIdentity,
    kernel: Kernel,
    others: &Others,
    this_module: Option<ThisModule>,
) -> Judgement {
    let checks = vec![
        checks::identity(module, identity, Some(kernel)),
        checks::vermagic(module, kernel, Options::default()),
        checks::modversions(module, kernel, others),
        checks::symbols(module, kernel, others),
        checks::depends(module, Some(kernel), others),
    ];
    let size_reason = struct_module_reason(&kernel.tree.release, this_module);
    let worst = if size_reason.is_some() {
        Status::Fail
    } else {
        checks::worst(&checks)
    };
    let verdict = match worst {
        Status::Pass => Verdict::Loads,
        Status::Warn => Verdict::Warns,
        Status::Fail => Verdict::Refused,
    };
    let mut telling: Vec<&Check> = checks.iter().filter(|c| c.status == worst).collect();
    telling.sort_by_key(|c| kernel_order(c.check));
    let reasons = if worst == Status::Pass {
        Vec::new()
    } else {
        size_reason
            .into_iter()
            .chain(telling.iter().flat_map(|c| reasons_of(c)))
            .collect::<Vec<String>>()
    };
    Judgement {
        verdict,
        reasons,
        checks,
    }
}

/// A check's reasons: the evidence items it refuses the module for, one per symbol
/// (modversions), else its summary; each prefixed with the check (`modversions: disagrees
/// about version of symbol X (...)`).
fn reasons_of(c: &Check) -> Vec<String> {
    if c.refusals().is_empty() {
        vec![format!("{}: {}", c.check, c.summary)]
    } else {
        c.refusals()
            .iter()
            .map(|e| format!("{}: {e}", c.check))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_order_puts_module_layout_before_vermagic() {
        // Linux 6.1 load_module: check_modstruct_version, then check_modinfo (vermagic),
        // then simplify_symbols (each CRC, unknown symbols).
        let mut kinds = [
            CheckKind::Symbols,
            CheckKind::Vermagic,
            CheckKind::Modversions,
            CheckKind::Identity,
        ];
        kinds.sort_by_key(|k| kernel_order(*k));
        assert_eq!(
            kinds,
            [
                CheckKind::Identity,
                CheckKind::Modversions,
                CheckKind::Vermagic,
                CheckKind::Symbols
            ]
        );
    }

    #[test]
    fn struct_module_size_is_the_first_reason_from_linux_6_4_on() {
        let differ = Some(ThisModule {
            module: 1344,
            kernel: 1280,
        });
        let same = Some(ThisModule {
            module: 1280,
            kernel: 1280,
        });
        assert_eq!(
            struct_module_reason("6.12.118+deb12-arm64", differ).as_deref(),
            Some(
                "identity: .gnu.linkonce.this_module section size must match the kernel's built struct module size at run time (module 1344 bytes, kernel 1280)"
            )
        );
        assert!(struct_module_reason("6.4.0-1-amd64", differ).is_some());
        assert_eq!(struct_module_reason("6.1.0-57-arm64", differ), None);
        assert_eq!(struct_module_reason("6.12.118+deb12-arm64", same), None);
        assert_eq!(struct_module_reason("6.12.118+deb12-arm64", None), None);
    }

    #[test]
    fn modversions_reasons_are_one_per_symbol_and_the_others_their_summary() {
        let mut c = Check::new(
            CheckKind::Modversions,
            Status::Fail,
            "2 of 3 symbols disagree or have no version: module_layout, param_ops_charp",
        );
        c.evidence = vec![
            "disagrees about version of symbol module_layout (module 0xb47ce167, vmlinux 0x0c1ad2e4)".into(),
            "disagrees about version of symbol param_ops_charp (module 0x1, vmlinux 0x2)".into(),
            "foo: exported by no known module, not checked (see symbols)".into(),
        ];
        c.refused = 2;
        assert_eq!(
            reasons_of(&c),
            [
                "modversions: disagrees about version of symbol module_layout (module 0xb47ce167, vmlinux 0x0c1ad2e4)",
                "modversions: disagrees about version of symbol param_ops_charp (module 0x1, vmlinux 0x2)"
            ]
        );
        let mut v = Check::new(
            CheckKind::Vermagic,
            Status::Warn,
            "release: module 6.1.0-50-arm64, kernel 6.1.0-57-arm64: the kernel accepts it",
        );
        v.evidence = vec!["module \"6.1.0-50-arm64 SMP\", kernel \"6.1.0-57-arm64 SMP\"".into()];
        assert_eq!(
            reasons_of(&v),
            [
                "vermagic: release: module 6.1.0-50-arm64, kernel 6.1.0-57-arm64: the kernel accepts it"
            ]
        );
    }
}

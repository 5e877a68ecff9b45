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

/// Judge `module` against `kernel`: the load checks without the signature.
pub fn judge(
    module: &Module,
    identity: &ElfIdentity,
    kernel: Kernel,
    others: &Others,
) -> Judgement {
    let checks = vec![
        checks::identity(module, identity, Some(kernel)),
        checks::vermagic(module, kernel, Options::default()),
        checks::modversions(module, kernel, others),
        checks::symbols(module, kernel, others),
        checks::depends(module, Some(kernel), others),
    ];
    let worst = checks::worst(&checks);
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
        telling
            .iter()
            .flat_map(|c| reasons_of(c))
            .collect::<Vec<String>>()
    };
    Judgement {
        verdict,
        reasons,
        checks,
    }
}

/// A check's reasons: its evidence items that name a problem, else its summary; each
/// prefixed with the check (`modversions: disagrees about version of symbol X (...)`).
fn reasons_of(c: &Check) -> Vec<String> {
    let problems: Vec<&String> = c
        .evidence
        .iter()
        .filter(|e| {
            !e.starts_with("module \"")
                && !e.contains("not checked")
                && !e.contains("accepted")
                && !e.contains("is not known here")
        })
        .collect();
    // modversions' evidence is one line per symbol (module_layout first); the others'
    // summaries already say it in one line.
    if c.check == CheckKind::Modversions && !problems.is_empty() {
        problems
            .into_iter()
            .map(|e| format!("{}: {e}", c.check))
            .collect()
    } else {
        vec![format!("{}: {}", c.check, c.summary)]
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

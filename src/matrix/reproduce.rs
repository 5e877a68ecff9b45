//! `kmx provenance check`: rebuild a cell from its provenance record and say whether the
//! bytes are the same, and if not, where they differ and (when it can be seen) why.
//!
//! The rebuild takes its inputs from this machine (the source, the kernel tree, the
//! compiler), plans the cell as `kmx build` would, and first compares the inputs with the
//! record's: a rebuild from other inputs proves nothing, so it is refused naming each input
//! that differs. Then the cell is built from scratch (no cache, no fresh output) into a
//! temporary directory and every output's sha256 is compared. Where the recorded module is
//! still beside the record, differing files are compared section by section, and strings
//! that differ are quoted (a date or a time is named as such).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::config::Profiles;
use crate::error::{Error, Result};
use crate::matrix::pipeline::{self, Options, Progress, TargetSetup};
use crate::matrix::provenance::Inputs;
pub use crate::matrix::provenance::Provenance;
use crate::state::Home;

/// What the rebuild of one record showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every output has the recorded bytes.
    Same,
    /// Some outputs differ.
    Differs(Vec<FileDiff>),
    /// This machine's inputs are not the record's: these fields differ.
    InputsDiffer(Vec<String>),
    /// The rebuild did not produce the cell (it failed, or was skipped by a rule).
    NotBuilt(String),
}

/// One output whose bytes differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDiff {
    pub file: String,
    pub recorded: String,
    /// `None`: the rebuild did not produce this file.
    pub rebuilt: Option<String>,
    /// The ELF sections whose bytes differ (when the recorded file is beside the record).
    pub sections: Vec<String>,
    /// Why, when it can be seen: strings that differ, a date or a time.
    pub reason: Option<String>,
}

/// The record's target, set up with only the recorded kernel's tree.
pub fn targets_of(
    record: &Provenance,
    profiles: &Profiles,
    home: &Home,
) -> Result<Vec<Arc<TargetSetup>>> {
    let mut notes = Vec::new();
    pipeline::setup_targets(
        profiles,
        home,
        std::slice::from_ref(&record.target),
        std::slice::from_ref(&record.kernel),
        &mut notes,
    )
}

/// Rebuild the cell of `record` (read from `record_path`) with `sources` (default: the
/// directory the record names) for `targets` ([`targets_of`]) into `out`.
pub fn check(
    record_path: &Path,
    record: &Provenance,
    sources: &[PathBuf],
    targets: &[Arc<TargetSetup>],
    out: &Path,
    stop: &AtomicBool,
    progress: &mut dyn Progress,
) -> Result<Verdict> {
    let sources = match sources.is_empty() {
        true => vec![record.inputs.source.dir.clone()],
        false => sources.to_vec(),
    };
    let plan = pipeline::plan(&sources, targets, out, Default::default())?;
    let Some(cell) = plan.cells.iter().find(|c| {
        c.spec.name == record.module
            && c.target.target.name == record.target
            && c.tree.release == record.kernel
    }) else {
        return Err(Error::usage(format!(
            "none of the sources given builds module {} {}",
            record.module, record.version
        ))
        .at(record_path)
        .hint("give its source with --source DIR (and the sources of its BUILD_DEPENDS)"));
    };
    let Some(inputs) = &cell.inputs else {
        return Err(Error::failed("the rebuild was planned without inputs").at(record_path));
    };
    let differ = differing_inputs(&record.inputs, inputs);
    if !differ.is_empty() {
        return Ok(Verdict::InputsDiffer(differ));
    }
    // The cell and what it depends on, nothing else.
    let sub = plan.with_dependencies(&[cell.index]);
    let opts = Options {
        force: true,
        cache: None,
        ..Options::default()
    };
    let report = pipeline::execute(&sub, &opts, stop, progress)?;
    let Some(rebuilt) = report.cells.iter().find(|c| c.index == cell.index) else {
        return Ok(Verdict::NotBuilt("the rebuild did not run the cell".into()));
    };
    if !rebuilt.status.has_modules() {
        let why = rebuilt
            .reason
            .clone()
            .unwrap_or_else(|| rebuilt.status.word().into());
        return Ok(Verdict::NotBuilt(why));
    }
    let beside = record_path.parent().unwrap_or(Path::new("."));
    let mut diffs = Vec::new();
    for o in &record.outputs {
        let new = rebuilt
            .artifacts
            .iter()
            .find(|a| a.file.file_name().is_some_and(|n| *n == *o.file));
        if new.is_some_and(|a| a.sha256 == o.sha256) {
            continue;
        }
        let mut diff = FileDiff {
            file: o.file.clone(),
            recorded: o.sha256.clone(),
            rebuilt: new.map(|a| a.sha256.clone()),
            sections: Vec::new(),
            reason: None,
        };
        // The recorded file, read once: hashed to know it is the one recorded, then compared.
        let old = std::fs::read(beside.join(&o.file))
            .ok()
            .filter(|bytes| crate::digest::sha256(bytes) == o.sha256);
        if let (Some(a), Some(new)) = (old, new)
            && let Ok(b) = std::fs::read(&new.file)
        {
            (diff.sections, diff.reason) = compare_elf(&a, &b);
        }
        diffs.push(diff);
    }
    Ok(match diffs.is_empty() {
        true => Verdict::Same,
        false => Verdict::Differs(diffs),
    })
}

/// The inputs (by name) whose values differ; locations (where the source and the tree
/// are) are not inputs.
pub fn differing_inputs(recorded: &Inputs, here: &Inputs) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmp = |name: &str, same: bool| {
        if !same {
            out.push(name.to_string());
        }
    };
    cmp("source", recorded.source.sha256 == here.source.sha256);
    cmp("manifest", recorded.manifest_sha256 == here.manifest_sha256);
    cmp(
        "kernel tree",
        recorded.kernel.identity == here.kernel.identity,
    );
    cmp("toolchain", recorded.toolchain == here.toolchain);
    cmp("compiler", recorded.compiler == here.compiler);
    cmp("make line", recorded.make == here.make);
    cmp("make variables", recorded.vars == here.vars);
    cmp("environment", recorded.environment == here.environment);
    cmp("namespace", recorded.namespace == here.namespace);
    cmp("dependencies", recorded.dependencies == here.dependencies);
    out
}

/// The sections of two ELF files whose bytes differ, and the strings that differ in them.
fn compare_elf(a: &[u8], b: &[u8]) -> (Vec<String>, Option<String>) {
    let (Ok(ea), Ok(eb)) = (goblin::elf::Elf::parse(a), goblin::elf::Elf::parse(b)) else {
        return (Vec::new(), Some("one of the files is not ELF".into()));
    };
    let bytes = |elf: &goblin::elf::Elf, data: &'_ [u8], name: &str| -> Option<Vec<u8>> {
        let sh = elf
            .section_headers
            .iter()
            .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(name))?;
        if sh.sh_type == goblin::elf::section_header::SHT_NOBITS {
            return Some(Vec::new());
        }
        data.get(sh.file_range()?).map(<[u8]>::to_vec)
    };
    let names = |elf: &goblin::elf::Elf| -> Vec<String> {
        elf.section_headers
            .iter()
            .filter_map(|sh| elf.shdr_strtab.get_at(sh.sh_name))
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut all = names(&ea);
    for n in names(&eb) {
        if !all.contains(&n) {
            all.push(n);
        }
    }
    let mut sections = Vec::new();
    let mut changed: Vec<(String, String)> = Vec::new();
    for name in all {
        let (x, y) = (bytes(&ea, a, &name), bytes(&eb, b, &name));
        if x == y {
            continue;
        }
        if let (Some(x), Some(y)) = (&x, &y) {
            let (sx, sy) = (strings(x), strings(y));
            // Sets for the lookups: .debug_str holds tens of thousands of strings.
            let (in_x, in_y): (
                std::collections::HashSet<&String>,
                std::collections::HashSet<&String>,
            ) = (sx.iter().collect(), sy.iter().collect());
            let only_x: Vec<&String> = sx.iter().filter(|s| !in_y.contains(s)).collect();
            let only_y: Vec<&String> = sy.iter().filter(|s| !in_x.contains(s)).collect();
            for (p, q) in only_x.iter().zip(&only_y) {
                changed.push(((*p).clone(), (*q).clone()));
            }
        }
        sections.push(name);
    }
    let reason = changed.first().map(|(p, q)| {
        let what = match looks_like_time(p) || looks_like_time(q) {
            true => "it embeds a date or time",
            false => "a string differs",
        };
        format!("{what}: {p:?} was built as {q:?}")
    });
    (sections, reason)
}

/// Printable runs of 4 or more bytes, as `strings` finds them.
fn strings(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| !(b.is_ascii_graphic() || *b == b' '))
        .filter(|s| s.len() >= 4)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// `14:03:59`, `Dec  3 2026`, `2026-12-03`, or a run of 10 digits (a Unix time).
fn looks_like_time(s: &str) -> bool {
    let b = s.as_bytes();
    let clock = b.windows(8).any(|w| {
        w[0].is_ascii_digit()
            && w[1].is_ascii_digit()
            && w[2] == b':'
            && w[3].is_ascii_digit()
            && w[4].is_ascii_digit()
            && w[5] == b':'
            && w[6].is_ascii_digit()
            && w[7].is_ascii_digit()
    });
    let iso = b.windows(10).any(|w| {
        w[..4].iter().all(u8::is_ascii_digit)
            && w[4] == b'-'
            && w[5..7].iter().all(u8::is_ascii_digit)
            && w[7] == b'-'
            && w[8..].iter().all(u8::is_ascii_digit)
    });
    let epoch = b.windows(10).any(|w| w.iter().all(u8::is_ascii_digit));
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let date = MONTHS.iter().any(|m| s.contains(m))
        && b.windows(4).any(|w| w.iter().all(u8::is_ascii_digit));
    clock || iso || epoch || date
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_dates_are_recognised() {
        for s in [
            "built 14:03:59",
            "Dec  3 2026",
            "2026-12-03",
            "stamp 1764770000",
        ] {
            assert!(looks_like_time(s), "{s}");
        }
        for s in ["hello", "version 1.2.3", "vermagic=6.1.0-50-arm64"] {
            assert!(!looks_like_time(s), "{s}");
        }
    }

    #[test]
    fn strings_are_printable_runs() {
        assert_eq!(
            strings(b"\0abc\0hello world\x01xyzw"),
            vec!["hello world".to_string(), "xyzw".to_string()]
        );
    }
}

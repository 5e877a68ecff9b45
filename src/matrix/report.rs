//! The build report: one record per cell (what the JSON report holds), the summary table
//! and the failure details printed at the end, and the exit code they imply.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::exit;
use crate::matrix::cell::{CellStatus, Outcome, Stage};
use crate::matrix::plan::Plan;
use crate::matrix::scheduler::CellResult;

/// `1 cell`, `2 cells`: a count with its noun (nouns whose plural takes an s).
pub fn count(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        _ => format!("{n} {noun}s"),
    }
}

/// One cell in the machine-readable report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellReport {
    /// Position in the whole plan (the same on every shard).
    pub index: usize,
    pub module: String,
    pub version: String,
    pub target: String,
    pub kernel: String,
    pub status: CellStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    pub duration_secs: f64,
    pub command: String,
    pub log: PathBuf,
    pub out_dir: PathBuf,
    /// A failed cell's build tree, kept for a look at what failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_dir: Option<PathBuf>,
    #[serde(default)]
    pub artifacts: Vec<crate::matrix::cell::Artifact>,
    /// What went wrong without failing the cell (e.g. a PRE_BUILD that exited non-zero).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// With `kmx build --smoke`: what the booted kernel said of this cell's modules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoke: Option<CellSmoke>,
    /// A built cell's inputs and outputs, as in its `provenance.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<crate::matrix::provenance::Provenance>,
}

/// What the kernel booted under QEMU said of one cell's modules (`kmx build --smoke`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellSmoke {
    /// How the boot went, for the whole (target, kernel).
    pub status: crate::smoke::Status,
    pub message: Option<String>,
    /// What to do when the kernel could not be booted (`kmx kernels fetch --with-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    pub console_log: Option<PathBuf>,
    /// This cell's modules only.
    pub modules: Vec<crate::smoke::ModuleReport>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    pub built: usize,
    /// Unchanged since a stored build: its output directory reused untouched.
    #[serde(default)]
    pub fresh: usize,
    /// Unchanged since a stored build: copied from the build cache.
    #[serde(default)]
    pub restored: usize,
    pub skipped: usize,
    pub failed: usize,
    pub interrupted: usize,
    /// Not started after a failure under `--fail-fast`.
    #[serde(default)]
    pub cancelled: usize,
}

/// The format of a build report (`report.json`, `kmx build --json`), with its version.
pub const SCHEMA: &str = "kmx.build-report/1";

fn schema() -> String {
    SCHEMA.to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA`]; reports written before it existed have none, and are read as this one.
    #[serde(default = "schema")]
    pub schema: String,
    pub cells: Vec<CellReport>,
    pub totals: Totals,
    pub wall_secs: f64,
    /// Cells in the whole plan; with `shard`, this report holds only its share.
    pub plan_cells: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
}

impl CellReport {
    /// `module version target kernel`, as the summary names a cell.
    pub fn label(&self) -> String {
        format!(
            "{} {} {} {}",
            self.module, self.version, self.target, self.kernel
        )
    }
}

impl Report {
    pub fn new(plan: &Plan, results: &[CellResult], wall_secs: f64) -> Report {
        let mut totals = Totals::default();
        let cells = plan
            .cells
            .iter()
            .zip(results)
            .map(|(c, r)| {
                let mut rep = CellReport {
                    index: c.index,
                    module: c.spec.name.clone(),
                    version: c.spec.version.clone(),
                    target: c.target.target.name.clone(),
                    kernel: c.tree.release.clone(),
                    status: r.outcome.status(),
                    reason: None,
                    stage: None,
                    exit_code: None,
                    errors: Vec::new(),
                    duration_secs: (r.duration.as_secs_f64() * 1000.0).round() / 1000.0,
                    command: r.command.clone(),
                    log: c.log.clone(),
                    out_dir: c.out_dir.clone(),
                    build_dir: None,
                    artifacts: Vec::new(),
                    warnings: Vec::new(),
                    smoke: None,
                    provenance: None,
                };
                match &r.outcome {
                    Outcome::Built {
                        artifacts,
                        fresh,
                        restored,
                        warnings,
                    } => {
                        if *restored {
                            totals.restored += 1;
                        } else if *fresh {
                            totals.fresh += 1;
                        } else {
                            totals.built += 1;
                        }
                        rep.artifacts = artifacts.clone();
                        rep.warnings = warnings.clone();
                        rep.provenance = crate::matrix::cell::provenance(c, artifacts);
                    }
                    Outcome::Skipped { reason } => {
                        totals.skipped += 1;
                        rep.reason = Some(reason.clone());
                    }
                    Outcome::Failed {
                        stage,
                        message,
                        errors,
                        exit_code,
                        build_dir,
                    } => {
                        totals.failed += 1;
                        rep.build_dir = build_dir.clone();
                        rep.stage = Some(*stage);
                        rep.reason = Some(message.clone());
                        rep.errors = errors.clone();
                        rep.exit_code = *exit_code;
                    }
                    Outcome::DependencyFailed { dependency } => {
                        totals.failed += 1;
                        rep.reason = Some(format!("dependency {dependency} did not build"));
                    }
                    Outcome::Interrupted => {
                        totals.interrupted += 1;
                    }
                    Outcome::Cancelled => {
                        totals.cancelled += 1;
                        rep.reason =
                            Some("not started: an earlier cell failed (--fail-fast)".into());
                    }
                }
                rep
            })
            .collect();
        Report {
            schema: schema(),
            cells,
            totals,
            wall_secs: (wall_secs * 1000.0).round() / 1000.0,
            plan_cells: plan.total,
            shard: plan.shard.map(|s| s.to_string()),
        }
    }

    pub fn exit_code(&self) -> i32 {
        if self.totals.interrupted > 0 {
            exit::INTERRUPTED
        } else if self.totals.failed > 0 {
            exit::FAILED
        } else {
            exit::OK
        }
    }

    /// The summary table and failure details, as printed at the end of a build.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let w = |f: fn(&CellReport) -> &str, title: &str| {
            self.cells
                .iter()
                .map(|c| f(c).len())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        };
        let (wm, wv, wt, wk) = (
            w(|c| &c.module, "MODULE"),
            w(|c| &c.version, "VERSION"),
            w(|c| &c.target, "TARGET"),
            w(|c| &c.kernel, "KERNEL"),
        );
        out.push_str(&format!(
            "{:<wm$}  {:<wv$}  {:<wt$}  {:<wk$}  {:<11}  TIME\n",
            "MODULE", "VERSION", "TARGET", "KERNEL", "STATUS"
        ));
        for c in &self.cells {
            let time = if matches!(c.status, CellStatus::Built | CellStatus::Failed) {
                format!("{:.1}s", c.duration_secs)
            } else {
                "-".into()
            };
            out.push_str(&format!(
                "{:<wm$}  {:<wv$}  {:<wt$}  {:<wk$}  {:<11}  {time}\n",
                c.module,
                c.version,
                c.target,
                c.kernel,
                c.status.word()
            ));
        }
        for c in self
            .cells
            .iter()
            .filter(|c| c.status == CellStatus::Skipped)
        {
            out.push_str(&format!(
                "\nskipped {}: {}",
                c.label(),
                c.reason.as_deref().unwrap_or("")
            ));
        }
        for c in &self.cells {
            for w in &c.warnings {
                out.push_str(&format!("\nwarning {}: {w}", c.label()));
            }
        }
        // Cells failing with the same first error (one source bug, every target): its
        // lines once, under the first of them, and the count after.
        let mut same: Vec<(&str, String, usize)> = Vec::new();
        for c in self.cells.iter().filter(|c| c.status.is_failed()) {
            out.push_str(&format!(
                "\nfailed {}: {}",
                c.label(),
                c.reason.as_deref().unwrap_or("")
            ));
            let first = c.errors.first().map(String::as_str);
            match first.and_then(|f| same.iter_mut().find(|(e, ..)| *e == f)) {
                Some((_, label, n)) => {
                    *n += 1;
                    out.push_str(&format!("\n    the same first error as {label}"));
                }
                None => {
                    if let Some(f) = first {
                        same.push((f, c.label(), 1));
                    }
                    for e in &c.errors {
                        out.push_str(&format!("\n    {e}"));
                    }
                }
            }
            out.push_str(&format!("\n    log: {}", c.log.display()));
            if let Some(dir) = &c.build_dir {
                out.push_str(&format!("\n    build directory kept: {}", dir.display()));
            }
        }
        for (_, label, n) in same.iter().filter(|(_, _, n)| *n > 1) {
            out.push_str(&format!(
                "\n{n} cells failed with the same first error, shown under {label}"
            ));
        }
        for c in &self.cells {
            let Some(smoke) = &c.smoke else { continue };
            let label = c.label();
            if smoke.status != crate::smoke::Status::Booted || smoke.modules.is_empty() {
                out.push_str(&format!(
                    "\nsmoke {label}: {}: {}",
                    smoke.status.word(),
                    smoke.message.as_deref().unwrap_or("")
                ));
                if let Some(hint) = &smoke.hint {
                    out.push_str(&format!("\n    hint: {hint}"));
                }
            }
            for m in &smoke.modules {
                let msg = m
                    .message
                    .as_deref()
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "\nsmoke {label}: {} {}{msg}",
                    m.name,
                    m.outcome.word()
                ));
            }
        }
        let notes = |c: &CellReport| {
            c.status == CellStatus::Skipped
                || c.status.is_failed()
                || c.smoke.is_some()
                || !c.warnings.is_empty()
        };
        if self.cells.iter().any(notes) {
            out.push('\n');
        }
        let t = &self.totals;
        // With --smoke, "0 failed" alone would read as all good while no kernel booted.
        let smoke = self.smoke_tally();
        out.push_str(&format!(
            "\n{} built, {}{} skipped, {} failed{}{} in {:.1}s\n",
            t.built,
            [(t.restored, "restored"), (t.fresh, "fresh")]
                .iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, what)| format!("{n} {what}, "))
                .collect::<String>(),
            t.skipped,
            t.failed,
            if smoke.is_some() { " to build" } else { "" },
            [(t.cancelled, "cancelled"), (t.interrupted, "interrupted")]
                .iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, what)| format!(", {n} {what}"))
                .collect::<String>(),
            self.wall_secs
        ));
        if let Some(tally) = smoke {
            out.push_str(&tally);
        }
        out
    }

    /// With `--smoke`: the modules loaded, refused, crashed and not loaded because their
    /// kernel could not be booted, so a summary never reads as all good when it was not.
    fn smoke_tally(&self) -> Option<String> {
        use crate::smoke::{Outcome, Status};
        let smoked: Vec<&CellSmoke> = self.cells.iter().filter_map(|c| c.smoke.as_ref()).collect();
        if smoked.is_empty() {
            return None;
        }
        let modules = |o: Outcome| {
            smoked
                .iter()
                .flat_map(|s| &s.modules)
                .filter(|m| m.outcome == o)
                .count()
        };
        // A cell whose kernel was not booted may list no module at all: count its modules.
        let unbooted: usize = self
            .cells
            .iter()
            .filter_map(|c| c.smoke.as_ref().map(|s| (c, s)))
            .filter(|(_, s)| {
                !matches!(s.status, Status::Booted | Status::NotConfigured) && s.modules.is_empty()
            })
            .map(|(c, _)| c.artifacts.len())
            .sum();
        let not_configured = smoked
            .iter()
            .filter(|s| s.status == Status::NotConfigured)
            .count();
        let mut line = format!(
            "smoke: {} loaded, {} refused, {} crashed, {} not loaded (kernel not booted)",
            modules(Outcome::Loaded),
            modules(Outcome::Refused),
            modules(Outcome::Crashed),
            modules(Outcome::NotRun) + unbooted,
        );
        if not_configured > 0 {
            line.push_str(&format!(
                ", {} without a [boot] table",
                count(not_configured, "cell")
            ));
        }
        Some(line + "\n")
    }
}

impl Report {
    /// Write the report as `<out>/report.json`, atomically.
    pub fn save(&self, out: &std::path::Path) -> crate::Result<()> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| crate::Error::env(format!("cannot serialize the report: {e}")))?;
        crate::state::write_atomic(&out.join("report.json"), format!("{json}\n").as_bytes())
    }

    /// Read a report written by `kmx build`.
    pub fn load(path: &std::path::Path) -> crate::Result<Report> {
        let bytes = std::fs::read(path).map_err(|e| crate::Error::io("read", path, e))?;
        let report: Report = serde_json::from_slice(&bytes).map_err(|e| {
            crate::Error::config(path, format!("not a kmx build report: {e}"))
                .hint("pass the report.json files that `kmx build --shard I/N` wrote")
        })?;
        if report.schema != SCHEMA {
            return Err(crate::Error::config(
                path,
                format!(
                    "a build report of format {}; this kmx reads {SCHEMA}",
                    report.schema
                ),
            )
            .hint("merge reports written by the same version of kmx"));
        }
        Ok(report)
    }

    /// One report from the reports of all shards of a plan: cells in plan order, totals
    /// recounted, wall time the longest shard's. Every cell of the plan must appear exactly
    /// once.
    pub fn merge(parts: &[(std::path::PathBuf, Report)]) -> crate::Result<Report> {
        let Some((_, first)) = parts.first() else {
            return Err(crate::Error::usage("no report to merge"));
        };
        let total = first.plan_cells;
        let mut seen: Vec<Option<&std::path::Path>> = vec![None; total];
        let mut cells = Vec::new();
        for (path, r) in parts {
            if r.plan_cells != total {
                return Err(crate::Error::usage(format!(
                    "{} is from a plan of {}, the first report's has {total}",
                    path.display(),
                    count(r.plan_cells, "cell")
                ))
                .hint("merge the reports of one build only"));
            }
            for c in &r.cells {
                match seen.get_mut(c.index) {
                    Some(slot @ None) => *slot = Some(path),
                    Some(Some(other)) => {
                        return Err(crate::Error::usage(format!(
                            "cell {} ({}) is in both {} and {}",
                            c.index,
                            c.label(),
                            other.display(),
                            path.display()
                        )));
                    }
                    None => {
                        return Err(crate::Error::usage(format!(
                            "{}: cell index {} is outside the plan of {}",
                            path.display(),
                            c.index,
                            count(total, "cell")
                        )));
                    }
                }
                cells.push(c.clone());
            }
        }
        let missing: Vec<String> = seen
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_none())
            .map(|(i, _)| i.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(crate::Error::usage(format!(
                "the reports do not cover cells {} of the plan",
                missing.join(", ")
            ))
            .hint("pass the report of every shard"));
        }
        cells.sort_by_key(|c| c.index);
        let mut totals = Totals::default();
        for c in &cells {
            match c.status {
                CellStatus::Built => totals.built += 1,
                CellStatus::Fresh => totals.fresh += 1,
                CellStatus::Restored => totals.restored += 1,
                CellStatus::Skipped => totals.skipped += 1,
                CellStatus::Interrupted => totals.interrupted += 1,
                CellStatus::Cancelled => totals.cancelled += 1,
                CellStatus::Failed | CellStatus::DependencyFailed => totals.failed += 1,
            }
        }
        let wall_secs = parts.iter().map(|(_, r)| r.wall_secs).fold(0.0, f64::max);
        Ok(Report {
            schema: schema(),
            cells,
            totals,
            wall_secs,
            plan_cells: total,
            shard: None,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_cell_is_not_one_cells() {
        assert_eq!(super::count(1, "cell"), "1 cell");
        assert_eq!(super::count(0, "cell"), "0 cells");
        assert_eq!(super::count(4, "file"), "4 files");
    }
}

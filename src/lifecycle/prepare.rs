//! Making registered modules ready to install: plan the registered sources for the
//! targets, build (in one parallel run, through [`crate::matrix::pipeline::execute`]) the
//! cells that are missing or stale, record them in the store, and hand back each cell ready
//! to install, skipped by a rule, or failed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::manifest::{CellVars, Given, ModuleSpec};
use crate::config::{Profiles, load_spec};
use crate::error::{Error, Kind, Result};
use crate::install::Hook;
use crate::kernel::registry::{Registry, trees_of};
use crate::kernel::tree::KernelTree;
use crate::matrix::pipeline::{
    self, Action, Artifact, Cell, CellReport, CellStatus, Options, Plan, Progress, TargetSetup,
};
use crate::state::Home;
use crate::state::store::{
    BuiltFile, BuiltRecord, CellKey, FailedRecord, Origin, Store, content_hash, now,
};

/// Evaluate a source's manifest without a kernel (for its name, version and hooks), with
/// the name and version the caller gives, if any (DKMS's `-m NAME -v VERSION`, see
/// [`Given`]).
pub fn evaluate_generic(
    src: &Path,
    mode: crate::sandbox::Mode,
    given: &Given,
) -> Result<ModuleSpec> {
    let tmp = tempfile::tempdir()
        .map_err(|e| Error::env(format!("cannot create a temporary directory: {e}")))?;
    let vars = CellVars {
        kernelver: String::new(),
        kernel_source_dir: PathBuf::new(),
        arch: String::new(),
        source_dir: src.to_path_buf(),
        source_tree: tmp.path().to_path_buf(),
        dkms_tree: tmp.path().join("dkms"),
        module_hint: None,
        identity: None,
        given: given.clone(),
        // In the sandbox, like every reading of a dkms.conf, where it can be made.
        sandbox: crate::sandbox::available()
            .is_ok()
            .then(|| Arc::new(Vec::new())),
        mode,
    };
    load_spec(src, &vars)
}

/// A built cell ready to install, with what installing it needs.
pub struct Ready {
    pub record: BuiltRecord,
    pub cell_dir: PathBuf,
    pub pre_install: Option<Hook>,
    pub post_install: Option<Hook>,
    pub sign_file: Option<PathBuf>,
}

pub enum Prep {
    Ready(Box<Ready>),
    Skipped(String),
}

pub fn sign_file_of(tree: &KernelTree) -> Option<PathBuf> {
    Some(tree.kdir.join("scripts/sign-file")).filter(|p| p.is_file())
}

/// A kernel tree of `target` with `release` on this machine (fetched, profiled, or an
/// installed kernel's headers), if any (no toolchain needed).
pub fn find_tree(
    profiles: &Profiles,
    home: &Home,
    target: &str,
    release: &str,
) -> Option<KernelTree> {
    let mut registry = Registry::load(home).ok()?;
    registry.add_installed(profiles, Path::new("/"));
    let t = profiles.target(target).ok()?;
    trees_of(t, &registry)
        .into_iter()
        .filter_map(|r| KernelTree::inspect(&r.kdir).ok())
        .find(|tree| tree.release == release)
}

fn record_of(cell: &Cell, artifacts: &[Artifact], hash: &str) -> BuiltRecord {
    let files = cell
        .spec
        .modules
        .iter()
        .map(|m| {
            let file = format!("{}.ko", m.built_name);
            let sha256 = artifacts
                .iter()
                .find(|a| {
                    a.file
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy() == file)
                })
                .map(|a| a.sha256.clone())
                .unwrap_or_default();
            BuiltFile {
                file,
                sha256,
                dest_name: m.dest_name.clone(),
                dest_location: m.dest_location.clone(),
            }
        })
        .collect();
    BuiltRecord {
        module: cell.spec.name.clone(),
        version: cell.spec.version.clone(),
        release: cell.tree.release.clone(),
        target: cell.target.target.name.clone(),
        vermagic: cell.tree.vermagic.clone(),
        kdir: cell.tree.kdir.clone(),
        source_hash: Some(hash.to_string()),
        files,
        compress: cell.tree.compress,
        sig_enabled: cell.tree.module_sig.enabled,
        sig_force: cell.tree.module_sig.force,
        sig_hash: cell.tree.module_sig.hash.clone(),
        autoinstall: cell.spec.autoinstall,
        origin: Origin::Build,
        built_at: now(),
    }
}

/// Record a cell a run built (or reused) from a registered source whose copy has
/// `source_hash`, as `install`, `tarball` and `status` find it.
pub fn record_built(
    store: &Store,
    cell: &Cell,
    artifacts: &[Artifact],
    source_hash: &str,
) -> Result<()> {
    store.save_built(&record_of(cell, artifacts, source_hash))?;
    store.clear_failed(&cell_key(cell))
}

pub fn cell_key(c: &Cell) -> CellKey {
    CellKey {
        module: c.spec.name.clone(),
        version: c.spec.version.clone(),
        release: c.tree.release.clone(),
        target: c.target.target.name.clone(),
    }
}

/// The key under which a whole source's failure (before any cell exists) is reported.
fn source_key(module: &str, version: &str) -> CellKey {
    CellKey {
        module: module.to_string(),
        version: version.to_string(),
        release: "-".into(),
        target: "-".into(),
    }
}

/// The error a cell the run did not build ends with, and, unless it was interrupted (a
/// stopped build is no failure to keep), the one line `kmx status` keeps of it: what failed
/// and the first error (the log has the rest).
fn failure(r: &CellReport) -> (Error, Option<String>) {
    if r.status == CellStatus::Interrupted {
        let e = Error::new(Kind::Interrupted, "interrupted: the build was stopped");
        return (e, None);
    }
    let mut e = Error::failed(format!(
        "build {}: {}",
        r.status.word(),
        r.reason.clone().unwrap_or_default()
    ));
    for line in &r.errors {
        e = e.caused_by(line);
    }
    let what = r
        .reason
        .clone()
        .unwrap_or_else(|| r.status.word().to_string());
    let reason = [what]
        .into_iter()
        .chain(r.errors.first().cloned())
        .collect::<Vec<_>>()
        .join("; ");
    (e, Some(reason))
}

/// Whether a built record is usable for the source with `hash`: same source, files there.
fn fresh(store: &Store, rec: &BuiltRecord, hash: &str) -> bool {
    let dir = store.cell_dir(&rec.module, &rec.version, &rec.release, &rec.target);
    rec.source_hash.as_deref() == Some(hash)
        && rec.files.iter().all(|f| dir.join(&f.file).is_file())
}

/// Plan the registered sources `sources` ((module, version) pairs) for `targets`, pick the
/// cells `want` accepts, build those that are missing or stale (in one parallel run), and
/// return each picked cell ready to install, skipped by a rule, or failed.
/// The hash of a cell's source contents, as planning computed it (the fingerprint's input,
/// the same [`content_hash`] a build record keeps).
pub fn source_hash(c: &Cell) -> &str {
    c.inputs.as_ref().map_or("", |i| i.source.sha256.as_str())
}

pub fn prepare(
    store: &Store,
    sources: &[(String, String)],
    targets: &[Arc<TargetSetup>],
    want: &dyn Fn(&Cell) -> bool,
    exec: &Options,
    progress: &mut dyn Progress,
) -> Vec<(CellKey, Result<Prep>)> {
    let mut out = Vec::new();
    let mut dirs = Vec::new();
    for (m, v) in sources {
        let dir = store.source_copy(m, v);
        // A damaged copy is named here, with what to do, before any planning.
        match content_hash(&dir) {
            Ok(_) => dirs.push((m.clone(), v.clone(), dir)),
            Err(e) => out.push((
                source_key(m, v),
                Err(e.hint(format!(
                    "the registered copy is damaged: `kmx add` the source of {m} {v} again"
                ))),
            )),
        }
    }
    // One plan for all (so BUILD_DEPENDS resolve); if that fails, one per source so one
    // broken manifest does not stop the others. Each registered copy is built with the
    // name and version it was registered under, as DKMS builds `-m NAME -v VERSION`.
    let all: Vec<(PathBuf, Given)> = dirs
        .iter()
        .map(|(m, v, d)| (d.clone(), Given::both(m, v)))
        .collect();
    let plans: Vec<Plan> =
        match pipeline::plan_given(&all, targets, &store.built(), Default::default()) {
            Ok(p) => vec![p],
            Err(_) => {
                let mut plans = Vec::new();
                for ((m, v, _), one) in dirs.iter().zip(&all) {
                    match pipeline::plan_given(
                        std::slice::from_ref(one),
                        targets,
                        &store.built(),
                        Default::default(),
                    ) {
                        Ok(p) => plans.push(p),
                        Err(e) => out.push((source_key(m, v), Err(e))),
                    }
                }
                plans
            }
        };
    for plan in plans {
        let mut needed = Vec::new();
        let mut picked = Vec::new();
        for c in &plan.cells {
            if !want(c) {
                continue;
            }
            let key = cell_key(c);
            if let Action::Skip(reason) = &c.action {
                out.push((key, Ok(Prep::Skipped(reason.clone()))));
                continue;
            }
            let ok = matches!(store.load_built(&key), Ok(Some(rec)) if fresh(store, &rec, source_hash(c)));
            if !ok {
                needed.push(c.index);
            }
            picked.push(c.index);
        }
        let mut failures: HashMap<usize, Error> = HashMap::new();
        if !needed.is_empty() {
            let sub = plan.with_dependencies(&needed);
            let built = crate::process::stop_flag()
                .and_then(|stop| pipeline::execute(&sub, exec, &stop, progress));
            match built {
                Ok(report) => {
                    for (c, r) in sub.cells.iter().zip(&report.cells) {
                        // Subset cells keep their index in the whole plan.
                        let orig = c.index;
                        // A cell reused unchanged ("fresh") is as good as one built now.
                        if r.status.has_modules() {
                            if let Err(e) = record_built(store, c, &r.artifacts, source_hash(c)) {
                                failures.insert(orig, e);
                            }
                            continue;
                        }
                        let (mut e, reason) = failure(r);
                        // Recorded for `kmx status`: a hook's build has no one watching.
                        if let Some(reason) = reason {
                            let failed = FailedRecord {
                                module: c.spec.name.clone(),
                                version: c.spec.version.clone(),
                                release: c.tree.release.clone(),
                                target: c.target.target.name.clone(),
                                reason,
                                log: r.log.clone(),
                                failed_at: now(),
                            };
                            if let Err(err) = store.save_failed(&failed) {
                                e = e.caused_by(format!(
                                    "and the failure could not be recorded: {}",
                                    crate::error::render_inline(&err)
                                ));
                            }
                        }
                        failures.insert(orig, e.hint(format!("see the log: {}", r.log.display())));
                    }
                }
                // The run could not start (no jobserver, no threads, ...): every cell it
                // held fails with that error, keeping its kind (and exit code).
                Err(e) => {
                    for &i in &needed {
                        failures.insert(i, e.clone());
                    }
                }
            }
        }
        for i in picked {
            let c = &plan.cells[i];
            let key = cell_key(c);
            if let Some(e) = failures.remove(&i) {
                out.push((key, Err(e)));
                continue;
            }
            let hook = |line: &Option<String>| {
                line.as_ref().map(|l| Hook {
                    line: l.clone(),
                    dir: c.source.clone(),
                })
            };
            let res = match store.load_built(&key) {
                Ok(Some(record)) => Ok(Prep::Ready(Box::new(Ready {
                    cell_dir: store.cell_dir(&key.module, &key.version, &key.release, &key.target),
                    record,
                    pre_install: hook(&c.spec.pre_install),
                    post_install: hook(&c.spec.post_install),
                    sign_file: sign_file_of(&c.tree),
                }))),
                Ok(None) => Err(Error::failed(format!("{key}: the build left no record"))),
                Err(e) => Err(e),
            };
            out.push((key, res));
        }
    }
    out
}

/// A cell known only as a built record (imported from a tarball).
pub fn prepare_binary(
    profiles: &Profiles,
    home: &Home,
    store: &Store,
    key: &CellKey,
) -> Result<Prep> {
    let record = store.load_built(key)?.ok_or_else(|| {
        Error::usage(format!("{key} is neither registered nor built")).hint(
            "register its source with `kmx add DIR` or import it with `kmx load-tarball FILE`",
        )
    })?;
    let sign_file = if record.sig_enabled {
        find_tree(profiles, home, &key.target, &key.release).and_then(|t| sign_file_of(&t))
    } else {
        None
    };
    Ok(Prep::Ready(Box::new(Ready {
        cell_dir: store.cell_dir(&key.module, &key.version, &key.release, &key.target),
        record,
        pre_install: None,
        post_install: None,
        sign_file,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(status: CellStatus, reason: Option<&str>, errors: &[&str]) -> CellReport {
        CellReport {
            index: 0,
            module: "hello".into(),
            version: "1.0".into(),
            target: "arm64".into(),
            kernel: "6.1.0-50-arm64".into(),
            status,
            reason: reason.map(String::from),
            stage: None,
            exit_code: None,
            errors: errors.iter().map(|e| e.to_string()).collect(),
            duration_secs: 1.0,
            command: "make".into(),
            log: "/out/logs/hello.log".into(),
            out_dir: "/out/hello".into(),
            build_dir: None,
            artifacts: Vec::new(),
            warnings: Vec::new(),
            smoke: None,
            provenance: None,
        }
    }

    #[test]
    fn a_failed_build_is_an_error_with_its_compiler_errors_and_one_line_for_status() {
        let r = report(
            CellStatus::Failed,
            Some("make failed: exit status 2"),
            &["hello.c:3:1: error: expected ';'", "hello.c:9:1: error: x"],
        );
        let (e, reason) = failure(&r);
        assert_eq!(e.code(), crate::error::exit::FAILED);
        assert_eq!(e.message, "build FAILED: make failed: exit status 2");
        assert_eq!(e.causes, r.errors);
        assert_eq!(
            reason.as_deref(),
            Some("make failed: exit status 2; hello.c:3:1: error: expected ';'")
        );
        // A cell whose dependency failed says so; with no reason, the status word stands.
        let r = report(CellStatus::DependencyFailed, None, &[]);
        let (e, reason) = failure(&r);
        assert_eq!(e.message, "build dep-failed: ");
        assert_eq!(reason.as_deref(), Some("dep-failed"));
    }

    #[test]
    fn a_stopped_build_is_interrupted_and_not_recorded_as_failed() {
        let (e, reason) = failure(&report(CellStatus::Interrupted, None, &[]));
        assert_eq!(e.kind, Kind::Interrupted);
        assert_eq!(e.message, "interrupted: the build was stopped");
        assert_eq!(reason, None);
    }

    #[test]
    fn a_built_record_is_fresh_for_the_same_source_with_all_its_files() {
        let d = tempfile::tempdir().unwrap();
        let store = Store {
            dir: d.path().to_path_buf(),
        };
        let mut rec =
            crate::lifecycle::built_fixture("hello", "1.0", "6.1.0-50-arm64", "arm64", true);
        rec.source_hash = Some("abc".into());
        rec.files.push(BuiltFile {
            file: "hello.ko".into(),
            sha256: String::new(),
            dest_name: "hello".into(),
            dest_location: "/updates/dkms".into(),
        });
        let dir = store.cell_dir("hello", "1.0", "6.1.0-50-arm64", "arm64");
        std::fs::create_dir_all(&dir).unwrap();
        // The module is not there yet.
        assert!(!fresh(&store, &rec, "abc"));
        std::fs::write(dir.join("hello.ko"), b"\x7fELF").unwrap();
        assert!(fresh(&store, &rec, "abc"));
        // The source changed since the build, or its hash was never known.
        assert!(!fresh(&store, &rec, "abd"));
        rec.source_hash = None;
        assert!(!fresh(&store, &rec, "abc"));
        assert!(!fresh(&store, &rec, ""));
    }
}

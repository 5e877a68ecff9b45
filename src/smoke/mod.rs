//! Boot-and-load proof: boot each target's real distribution kernel under QEMU (software
//! emulation) with a tiny initramfs, `insmod` the modules in it and let the kernel itself
//! say whether each one loads. Static checks say a module should load; only the kernel can
//! say it does, in the words users fear ("version magic '...' should be '...'",
//! "disagrees about version of symbol X").
//!
//! Overview:
//! - A [`Job`] is one target's kernel (a registered tree with its boot files: image, module
//!   tree, busybox, fetched by `kmx kernels fetch --with-image`) and the `.ko` files to load
//!   in it. [`run`] boots every job on its own thread (a boot is one single-threaded QEMU;
//!   four in parallel take about as long as the slowest one) and returns one
//!   [`TargetReport`] per job, never an early error: every problem becomes part of a report.
//! - [`guest`] puts busybox, an `/init` script and the modules (with the in-tree modules
//!   they depend on, resolved through the kernel's `modules.dep`, dependencies first) into a
//!   newc initramfs written by [`cpio`]; nothing external is needed at run time but QEMU.
//! - [`qemu`] turns the target profile's `[boot]` table into a command line; the boot runs
//!   through [`crate::process::run_supervised`]: own process group, console to a log file,
//!   killed on timeout or Ctrl-C.
//! - [`console`] parses the log back: `/init` frames each module's insmod status and the
//!   kernel log printed meanwhile with `KMX-` markers.
//!
//! Verdicts: a module is `loaded`, `refused` (with the kernel's message), `crashed` (oops
//! in its init, or the guest hung while loading it) or `not-run`. A target whose kernel
//! did not reach `/init` is `boot-failed` (the kernel started and died) or `harness-failed`
//! (QEMU or the kernel never got going: wrong image, missing emulator, timeout); a target
//! without a `[boot]` table is `not-configured`, which is not a failure.
//!
//! This module never prints; commands do.

pub mod console;
pub mod cpio;
pub mod guest;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::profile::Boot;
use crate::error::Error;
use crate::kernel::registry::BootFiles;
use crate::process::{self, Ended};

/// One target's kernel and the modules to load in it.
#[derive(Debug, Clone)]
pub struct Job {
    pub target: String,
    /// The target profile's `[boot]` table; `None`: smoke is not configured for it.
    pub boot: Option<Boot>,
    /// The target profile file, for messages.
    pub profile: PathBuf,
    /// The kernel release of the tree the modules were built against.
    pub release: String,
    /// The tree's boot files; `None` when they were never fetched.
    pub files: Option<BootFiles>,
    /// The `.ko` files to load, in the order given.
    pub modules: Vec<PathBuf>,
    /// Turn on `module.sig_enforce` (`/sys/module/module/parameters/sig_enforce`, which
    /// can be switched on but never off) before loading `modules[i]` and those after it:
    /// one boot judges modules both as a default kernel and as one booted with
    /// `module.sig_enforce=1`.
    pub enforce_from: Option<usize>,
}

impl Job {
    /// The job for modules built against a registered tree of `target` (what a build cell
    /// knows): boot settings from the profile, boot files from the registry.
    pub fn new(
        target: &crate::config::Target,
        tree: &crate::kernel::registry::RegisteredTree,
        modules: Vec<PathBuf>,
    ) -> Job {
        Job {
            target: target.name.clone(),
            boot: target.boot.clone(),
            profile: target.file.clone(),
            release: tree.release.clone(),
            files: tree.boot.clone(),
            modules,
            enforce_from: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Time limit of one boot, from QEMU's start to its exit.
    pub timeout: Duration,
    /// Where initramfs images and console logs are written (`$KMX_HOME/smoke`).
    pub work_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// The kernel ran `/init`: see each module's outcome.
    Booted,
    /// The target profile has no `[boot]` table (not a failure).
    NotConfigured,
    /// The kernel started but did not reach `/init` (panic, hang).
    BootFailed,
    /// The harness could not boot the kernel at all (missing files or emulator, wrong
    /// image, no output before the timeout).
    HarnessFailed,
    /// Stopped by Ctrl-C or SIGTERM.
    Interrupted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Loaded,
    /// The kernel refused it (insmod failed without a crash).
    Refused,
    /// Its init crashed (oops) or the guest hung or died while loading it.
    Crashed,
    /// Never loaded: the guest did not get that far.
    NotRun,
}

impl Status {
    /// The status as the JSON report names it.
    pub fn word(self) -> &'static str {
        match self {
            Status::Booted => "booted",
            Status::NotConfigured => "not-configured",
            Status::BootFailed => "boot-failed",
            Status::HarnessFailed => "harness-failed",
            Status::Interrupted => "interrupted",
        }
    }
}

impl Outcome {
    /// The outcome as the JSON report names it.
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Loaded => "loaded",
            Outcome::Refused => "refused",
            Outcome::Crashed => "crashed",
            Outcome::NotRun => "not-run",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleReport {
    pub name: String,
    pub path: PathBuf,
    /// An in-tree module loaded because a given module depends on it.
    pub dependency: bool,
    pub outcome: Outcome,
    /// Why it was refused or crashed, in the kernel's words where it said any.
    pub message: Option<String>,
    /// insmod's exit status (137 or 139 when an oops killed it).
    pub insmod_status: Option<i32>,
    /// What insmod printed.
    pub insmod_output: Vec<String>,
    /// The kernel log lines printed while it loaded (timestamps removed).
    pub kernel_log: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub release: String,
    pub status: Status,
    /// Why the target did not boot (or is not configured).
    pub message: Option<String>,
    pub hint: Option<String>,
    /// Wall time of the boot, QEMU start to exit.
    pub seconds: f64,
    /// The guest's console log, kept after the run.
    pub console_log: Option<PathBuf>,
    /// Set when this report is of a second boot: how the first one failed.
    pub first_boot: Option<FirstBoot>,
    pub modules: Vec<ModuleReport>,
}

/// A first boot that hung before `/init`, when the report is of the second.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirstBoot {
    pub message: String,
    pub console_log: Option<PathBuf>,
}

impl TargetReport {
    fn new(job: &Job, status: Status, message: impl Into<String>) -> TargetReport {
        TargetReport {
            target: job.target.clone(),
            release: job.release.clone(),
            status,
            message: Some(message.into()),
            hint: None,
            seconds: 0.0,
            console_log: None,
            first_boot: None,
            modules: Vec::new(),
        }
    }
    fn from_error(job: &Job, err: Error) -> TargetReport {
        let mut r = TargetReport::new(job, Status::HarnessFailed, err.to_string());
        r.hint = err.hint.clone();
        if !err.causes.is_empty() {
            r.message = Some(crate::error::render_inline(&err));
            r.hint = None;
        }
        r.not_run(job)
    }
    /// A kernel that was never booted: the job's modules, each `not-run` (the reason is
    /// the target's message, not repeated per module), so no count reads as "0 not run".
    fn not_run(mut self, job: &Job) -> TargetReport {
        self.modules = job
            .modules
            .iter()
            .map(|ko| {
                let given = guest::Given::read(ko).unwrap_or_else(|_| guest::Given::unread(ko));
                ModuleReport {
                    name: given.name,
                    path: ko.clone(),
                    dependency: false,
                    outcome: Outcome::NotRun,
                    message: None,
                    insmod_status: None,
                    insmod_output: Vec::new(),
                    kernel_log: Vec::new(),
                }
            })
            .collect();
        self
    }
    /// Every module loaded (a not-configured target counts as success).
    pub fn all_loaded(&self) -> bool {
        match self.status {
            Status::NotConfigured => true,
            Status::Booted => self.modules.iter().all(|m| m.outcome == Outcome::Loaded),
            _ => false,
        }
    }
}

/// 130 if interrupted; 1 if a module was refused or crashed (a real verdict wins); 4 if a
/// kernel could not be booted; else 0.
pub fn exit_code(reports: &[TargetReport]) -> i32 {
    if reports.iter().any(|r| r.status == Status::Interrupted) {
        return crate::error::exit::INTERRUPTED;
    }
    let refused = reports.iter().any(|r| {
        r.modules
            .iter()
            .any(|m| matches!(m.outcome, Outcome::Refused | Outcome::Crashed))
    });
    if refused {
        return crate::error::exit::FAILED;
    }
    if reports.iter().all(TargetReport::all_loaded) {
        crate::error::exit::OK
    } else {
        crate::error::exit::HARNESS
    }
}

/// Boot every job (in parallel, one thread each) and report what each kernel said.
pub fn run(jobs: &[Job], opts: &Options, stop: &AtomicBool) -> Vec<TargetReport> {
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|job| s.spawn(move || run_one(job, opts, stop)))
            .collect();
        handles
            .into_iter()
            .zip(jobs)
            .map(|(h, job)| {
                h.join().unwrap_or_else(|_| {
                    TargetReport::new(job, Status::HarnessFailed, "the smoke worker panicked")
                        .not_run(job)
                })
            })
            .collect()
    })
}

fn run_one(job: &Job, opts: &Options, stop: &AtomicBool) -> TargetReport {
    let Some(boot) = &job.boot else {
        let mut r = TargetReport::new(
            job,
            Status::NotConfigured,
            format!(
                "smoke: not configured ({} has no [boot] table)",
                job.profile.display()
            ),
        );
        r.hint =
            Some("add a [boot] table (qemu, machine, cpu, console) to the target profile".into());
        return r;
    };
    let Some(files) = &job.files else {
        let mut r = TargetReport::new(
            job,
            Status::HarnessFailed,
            format!("no kernel image for {}", job.release),
        );
        r.hint = Some(format!(
            "run `kmx kernels fetch --with-image --target {}`",
            job.target
        ));
        return r.not_run(job);
    };
    match prepare_and_boot(job, boot, files, opts, stop) {
        Ok(r) => r,
        Err(e) => TargetReport::from_error(job, e),
    }
}

fn prepare_and_boot(
    job: &Job,
    boot: &Boot,
    files: &BootFiles,
    opts: &Options,
    stop: &AtomicBool,
) -> crate::Result<TargetReport> {
    let mut given = Vec::new();
    for ko in &job.modules {
        given.push(guest::Given::read(ko)?);
    }
    let tree = guest::read_modules_dep(&files.modules_dir)?;
    let order = guest::load_order(&given, &tree, job.enforce_from);
    std::fs::create_dir_all(&opts.work_dir)
        .map_err(|e| Error::io("create directory", &opts.work_dir, e))?;
    let dir = tempfile::Builder::new()
        .prefix(&format!(".{}-", job.target))
        .tempdir_in(&opts.work_dir)
        .map_err(|e| Error::io("create a directory in", &opts.work_dir, e))?;
    let initramfs = dir.path().join("initramfs.cpio");
    guest::write_initramfs(&initramfs, &files.busybox, &order)?;
    let kept = |suffix: &str| {
        opts.work_dir.join(format!(
            "{}-{}{suffix}.console.log",
            job.target, job.release
        ))
    };
    let boot_it = || {
        boot_once(
            job,
            boot,
            files,
            opts,
            stop,
            &order,
            &dir,
            &initramfs,
            &kept(""),
        )
    };
    let mut report = boot_it()?;
    if report.status == Status::BootFailed {
        // A kernel that started and then hung or died before `/init` has not met the
        // modules yet (they load from `/init`). Emulated boards do this now and then on a
        // loaded host: QEMU's raspi0 hung about once in 40 boots here, and an x86 kernel
        // may panic when its timer check loses to the host. Boot once more, and say so; a
        // kernel that fails so every time is reported as before, one boot later.
        let first = FirstBoot {
            message: report.message.clone().unwrap_or_default(),
            console_log: report.console_log.as_ref().and_then(|log| {
                let to = kept(".first-boot");
                std::fs::rename(log, &to).ok().map(|()| to)
            }),
        };
        report = boot_it()?;
        report.first_boot = Some(first);
    }
    Ok(report)
}

/// One boot of the prepared initramfs, judged; its console log kept at `keep`.
#[allow(clippy::too_many_arguments)]
fn boot_once(
    job: &Job,
    boot: &Boot,
    files: &BootFiles,
    opts: &Options,
    stop: &AtomicBool,
    order: &[guest::Load],
    dir: &tempfile::TempDir,
    initramfs: &Path,
    keep: &Path,
) -> crate::Result<TargetReport> {
    let log_path = dir.path().join("console.log");
    let log = std::fs::File::create(&log_path).map_err(|e| Error::io("create", &log_path, e))?;
    let mut cmd = qemu::command(boot, files, initramfs)?;
    let start = Instant::now();
    // Some boards cannot power off (raspi3b): the guest's last line ends the run.
    let done = || {
        std::fs::read(&log_path).is_ok_and(|t| {
            t.windows(console::DONE.len() + 1).any(|w| {
                w.starts_with(console::DONE.as_bytes()) && matches!(w[w.len() - 1], b'\n' | b'\r')
            })
        })
    };
    let ended =
        process::run_supervised_until(&mut cmd, &log, opts.timeout, stop, &done).map_err(|e| {
            let hint = format!(
                "install QEMU: apt-get install {}",
                qemu::package_of(&boot.qemu)
            );
            e.hint(hint)
        })?;
    let seconds = start.elapsed().as_secs_f64();
    drop(log);
    let text = std::fs::read(&log_path).map_err(|e| Error::io("read", &log_path, e))?;
    let text = String::from_utf8_lossy(&text);
    // The log is renamed within one directory tree; should even that fail, the report
    // names no log rather than one about to be removed with the run's directory.
    let console_log = std::fs::rename(&log_path, keep)
        .ok()
        .map(|()| keep.to_path_buf());
    let mut report = judge(job, boot, order, &text, &ended, opts.timeout);
    report.seconds = seconds;
    report.console_log = console_log;
    Ok(report)
}

/// Turn a finished boot's console log into a report.
fn judge(
    job: &Job,
    boot: &Boot,
    order: &[guest::Load],
    log: &str,
    ended: &Ended,
    timeout: Duration,
) -> TargetReport {
    let console = console::parse(log, order.len());
    let mut report = TargetReport {
        target: job.target.clone(),
        release: job.release.clone(),
        status: Status::Booted,
        message: None,
        hint: None,
        seconds: 0.0,
        console_log: None,
        first_boot: None,
        modules: Vec::new(),
    };
    if matches!(ended, Ended::Interrupted) {
        report.status = Status::Interrupted;
        report.message = Some("interrupted".into());
    } else if console.booted.is_none() {
        let last_other = console.other.last().cloned();
        if console.kernel_started {
            report.status = Status::BootFailed;
            let why = console
                .boot_kernel
                .iter()
                .find(|l| console::is_crash_line(l))
                .cloned();
            report.message = Some(match (why, ended) {
                (Some(why), _) => format!("the kernel did not reach /init: {why}"),
                (None, Ended::TimedOut(t)) => {
                    format!("the kernel did not reach /init within {} s", t.as_secs())
                }
                (None, _) => "the kernel stopped before running /init".into(),
            });
        } else {
            report.status = Status::HarnessFailed;
            report.message = Some(match ended {
                Ended::TimedOut(t) => format!(
                    "no output from the kernel within {} s: is the image built for `{}` on machine `{}`?",
                    t.as_secs(),
                    boot.qemu,
                    boot.machine
                ),
                Ended::Exited(status) => format!(
                    "`{}` ended ({}) before the kernel started{}",
                    boot.qemu,
                    process::describe_status(*status),
                    last_other.map(|l| format!(": {l}")).unwrap_or_default()
                ),
                Ended::Interrupted => "interrupted".into(),
            });
            report.hint = Some(format!(
                "check the target profile's [boot] table ({}) and the kernel image",
                job.profile.display()
            ));
        }
    }
    for (i, load) in order.iter().enumerate() {
        let log = console.modules.get(i).cloned().unwrap_or_default();
        let crash = log
            .kernel
            .iter()
            .find(|l| console::is_crash_line(l))
            .cloned();
        let (outcome, message) = if !log.begun {
            let why = match report.status {
                Status::Booted => "not reached: the guest stopped before loading it".to_string(),
                _ => format!("not run: {}", report.message.clone().unwrap_or_default()),
            };
            (Outcome::NotRun, Some(why))
        } else {
            match log.status {
                None => (
                    Outcome::Crashed,
                    Some(crash.unwrap_or_else(|| {
                        format!(
                            "no result within {} s: the kernel hung or died while loading it",
                            timeout.as_secs()
                        )
                    })),
                ),
                Some(0) => match crash {
                    Some(c) => (Outcome::Crashed, Some(c)),
                    None => (Outcome::Loaded, None),
                },
                Some(rc) => match crash {
                    Some(c) => (Outcome::Crashed, Some(c)),
                    None => (Outcome::Refused, Some(refusal(&load.name, &log, rc))),
                },
            }
        };
        report.modules.push(ModuleReport {
            name: load.name.clone(),
            path: load.path.clone(),
            dependency: load.dependency,
            outcome,
            message,
            insmod_status: log.status,
            insmod_output: log.insmod,
            kernel_log: log.kernel,
        });
    }
    report
}

/// The kernel's reason for refusing `name`: its own lines about the module (not the taint
/// notices), else what insmod said.
fn refusal(name: &str, log: &console::ModuleLog, rc: i32) -> String {
    let prefix = format!("{name}: ");
    let is_notice =
        |l: &str| l.contains("taints kernel") || l.contains("module verification failed");
    let about: Vec<&str> = log
        .kernel
        .iter()
        .map(String::as_str)
        .filter(|l| !is_notice(l))
        .collect();
    if let Some(l) = about.iter().find(|l| l.starts_with(&prefix)) {
        return l.to_string();
    }
    if let Some(l) = about.first() {
        return l.to_string();
    }
    log.insmod
        .first()
        .cloned()
        .unwrap_or_else(|| format!("insmod exit status {rc}"))
}

/// The `.ko` files in `path`: the file itself, or every `.ko` under a directory (sorted).
pub fn find_modules(path: &Path) -> crate::Result<Vec<PathBuf>> {
    std::fs::metadata(path).map_err(|e| {
        Error::io("read", path, e).hint("pass .ko files or a build output directory")
    })?;
    let mut found = crate::verify::module_files(path)?;
    if path.is_dir() {
        found.retain(|p| p.extension().is_some_and(|x| x == "ko"));
    }
    Ok(found)
}

/// The kernel release a module was built for (the first word of its vermagic), and its
/// name. Errors name the file.
pub fn module_release(ko: &Path) -> crate::Result<(String, String)> {
    let (vermagic, name) = module_vermagic(ko)?;
    let release = vermagic
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    Ok((release, name))
}

/// A module's whole vermagic and its name. A file kmx cannot read as a module is still
/// booted (the kernel is the judge): its vermagic is then found in its raw bytes and its
/// name is its file name. Errors name the file.
pub fn module_vermagic(ko: &Path) -> crate::Result<(String, String)> {
    let no_vermagic = || {
        Error::failed("the module has no vermagic in .modinfo")
            .at(ko)
            .hint("build it with kbuild against a prepared kernel tree")
    };
    match crate::verify::Module::read(ko) {
        Ok(module) => {
            let given = guest::Given::new(ko, &module);
            let vermagic = module.vermagic().ok_or_else(no_vermagic)?.to_string();
            Ok((vermagic, given.name))
        }
        Err(e) => {
            let err = e.into_error(ko);
            let bytes = std::fs::read(ko).map_err(|e| Error::io("read", ko, e))?;
            let key = b"vermagic=";
            let at = bytes.windows(key.len()).position(|w| w == key).ok_or(err)? + key.len();
            let end = bytes[at..]
                .iter()
                .position(|&b| b == 0)
                .map_or(bytes.len(), |n| at + n);
            let vermagic = String::from_utf8_lossy(&bytes[at..end]).into_owned();
            Ok((vermagic, guest::Given::unread(ko).name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(status: Status, outcomes: &[Outcome]) -> TargetReport {
        TargetReport {
            target: "t".into(),
            release: "r".into(),
            status,
            message: None,
            hint: None,
            seconds: 0.0,
            console_log: None,
            first_boot: None,
            modules: outcomes
                .iter()
                .map(|o| ModuleReport {
                    name: "m".into(),
                    path: std::path::PathBuf::from("m.ko"),
                    dependency: false,
                    outcome: *o,
                    message: None,
                    insmod_status: None,
                    insmod_output: vec![],
                    kernel_log: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn exit_code_rules() {
        use Outcome::*;
        let loaded = report(Status::Booted, &[Loaded]);
        let refused = report(Status::Booted, &[Loaded, Refused]);
        let crashed = report(Status::Booted, &[Crashed]);
        let harness = report(Status::HarnessFailed, &[NotRun]);
        let unconfigured = report(Status::NotConfigured, &[]);
        let interrupted = report(Status::Interrupted, &[NotRun]);
        assert_eq!(
            exit_code(&[loaded.clone(), unconfigured.clone()]),
            crate::error::exit::OK
        );
        assert_eq!(
            exit_code(&[loaded.clone(), refused.clone()]),
            crate::error::exit::FAILED
        );
        assert_eq!(exit_code(&[crashed]), crate::error::exit::FAILED);
        // A real verdict (refused) wins over a target that could not be booted.
        assert_eq!(
            exit_code(&[harness.clone(), refused]),
            crate::error::exit::FAILED
        );
        assert_eq!(
            exit_code(&[loaded, harness.clone()]),
            crate::error::exit::HARNESS
        );
        assert_eq!(
            exit_code(&[harness, interrupted]),
            crate::error::exit::INTERRUPTED
        );
    }

    #[test]
    fn words_are_the_json_names() {
        for s in [
            Status::Booted,
            Status::NotConfigured,
            Status::BootFailed,
            Status::HarnessFailed,
            Status::Interrupted,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.word());
        }
        for o in [
            Outcome::Loaded,
            Outcome::Refused,
            Outcome::Crashed,
            Outcome::NotRun,
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.word());
        }
    }
    use std::os::unix::process::ExitStatusExt;

    fn job() -> Job {
        Job {
            target: "arm64".into(),
            boot: None,
            profile: PathBuf::from("targets/arm64.toml"),
            release: "6.1.0-50-arm64".into(),
            files: None,
            modules: vec![],
            enforce_from: None,
        }
    }

    fn boot() -> Boot {
        Boot {
            qemu: "qemu-system-aarch64".into(),
            machine: "virt".into(),
            cpu: "cortex-a57".into(),
            console: "ttyAMA0".into(),
            memory: 512,
            smp: 1,
            dtb: None,
            append: String::new(),
            qemu_args: vec![],
        }
    }

    fn order() -> Vec<guest::Load> {
        vec![guest::Load {
            name: "hello".into(),
            path: PathBuf::from("/b/hello.ko"),
            dependency: false,
            enforce_signatures: false,
        }]
    }

    const LIMIT: Duration = Duration::from_secs(60);

    #[test]
    fn no_kernel_output_is_a_harness_failure_naming_qemus_complaint() {
        let ended = Ended::Exited(std::process::ExitStatus::from_raw(1 << 8));
        let log = "qemu-system-x86_64: Error loading uncompressed kernel without PVH ELF Note\n";
        let r = judge(&job(), &boot(), &order(), log, &ended, LIMIT);
        assert_eq!(r.status, Status::HarnessFailed);
        assert_eq!(
            r.message.as_deref(),
            Some(
                "`qemu-system-aarch64` ended (exit status 1) before the kernel started: qemu-system-x86_64: Error loading uncompressed kernel without PVH ELF Note"
            )
        );
        assert_eq!(r.modules[0].outcome, Outcome::NotRun);
        let r = judge(
            &job(),
            &boot(),
            &order(),
            "",
            &Ended::TimedOut(LIMIT),
            LIMIT,
        );
        assert_eq!(r.status, Status::HarnessFailed);
        assert!(
            r.message
                .unwrap()
                .starts_with("no output from the kernel within 60 s")
        );
    }

    #[test]
    fn panic_before_init_is_a_boot_failure() {
        let log = "[    1.5] Kernel panic - not syncing: VFS: Unable to mount root fs\n";
        let ended = Ended::Exited(std::process::ExitStatus::from_raw(0));
        let r = judge(&job(), &boot(), &order(), log, &ended, LIMIT);
        assert_eq!(r.status, Status::BootFailed);
        assert_eq!(
            r.message.as_deref(),
            Some(
                "the kernel did not reach /init: Kernel panic - not syncing: VFS: Unable to mount root fs"
            )
        );
    }

    #[test]
    fn a_module_without_result_crashed_and_refusals_quote_the_kernel() {
        let log = "KMX-BOOTED 6.1.0-50-arm64\nKMX-BEGIN 0\n";
        let r = judge(
            &job(),
            &boot(),
            &order(),
            log,
            &Ended::TimedOut(LIMIT),
            LIMIT,
        );
        assert_eq!(r.status, Status::Booted);
        assert_eq!(r.modules[0].outcome, Outcome::Crashed);
        assert_eq!(
            r.modules[0].message.as_deref(),
            Some("no result within 60 s: the kernel hung or died while loading it")
        );
        let log = "KMX-BOOTED 6.1.0-50-arm64\nKMX-BEGIN 0\nKMX-INSMOD 0 insmod: can't insert '/m/000.ko': invalid module format\nKMX-RESULT 0 1\nKMX-DMESG 0\n[ 2.1] hello: loading out-of-tree module taints kernel.\n[ 2.2] hello: disagrees about version of symbol module_layout\nKMX-END 0\nKMX-DONE\n";
        let ended = Ended::Exited(std::process::ExitStatus::from_raw(0));
        let r = judge(&job(), &boot(), &order(), log, &ended, LIMIT);
        assert_eq!(r.modules[0].outcome, Outcome::Refused);
        assert_eq!(
            r.modules[0].message.as_deref(),
            Some("hello: disagrees about version of symbol module_layout")
        );
        assert!(!r.all_loaded());
    }
}

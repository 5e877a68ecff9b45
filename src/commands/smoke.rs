//! `kmx smoke`: resolve which target's kernel each `.ko` is for, boot them, print verdicts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::commands::{Context, print_json};
use crate::error::{Error, Result};
use crate::kernel::registry::{RegisteredTree, Registry};
use crate::kernel::select::{self, NoSuchTree, Purpose};
use crate::kernel::tree::KernelTree;
use crate::kernel::vermagic::Vermagic;
use crate::smoke::{self, Job, Outcome, Status, TargetReport};

/// Lines of a module's kernel log shown in text output; the rest is in the console log.
const SHOWN_LINES: usize = 6;

pub fn smoke(
    ctx: &Context,
    paths: &[PathBuf],
    enforced: &[PathBuf],
    (targets, kernel): (&[String], Option<&str>),
    timeout: u64,
    json: bool,
) -> Result<i32> {
    // (module, loaded after turning on module.sig_enforce)
    let mut kos = Vec::new();
    for (p, enforce) in paths
        .iter()
        .map(|p| (p, false))
        .chain(enforced.iter().map(|p| (p, true)))
    {
        let found = smoke::find_modules(p)?;
        if found.is_empty() {
            return Err(Error::usage(format!("no .ko files under {}", p.display()))
                .hint("build the modules first, or pass .ko files"));
        }
        kos.extend(found.into_iter().map(|f| (f, enforce)));
    }
    let registry = Registry::load(&ctx.home)?;
    let explicit = !targets.is_empty();
    let candidates: Vec<&crate::config::Target> = if explicit {
        ctx.profiles.select(targets)?
    } else {
        ctx.profiles.targets.values().collect()
    };
    // (target, tree) -> modules, in the order given.
    type Group = (RegisteredTree, Vec<PathBuf>, Vec<PathBuf>);
    let mut groups: BTreeMap<(String, PathBuf), Group> = BTreeMap::new();
    let names: Vec<&str> = candidates.iter().map(|t| t.name.as_str()).collect();
    // `--kernel`: that release for every module, whatever it was built for; of the first
    // target (in the order given) that has it.
    let forced = match kernel {
        Some(k) => {
            let found = select::registered(&registry, &names, k, Purpose::Boot)?;
            candidates
                .iter()
                .find_map(|t| found.iter().find(|r| r.target == t.name))
                .map(|r| (*r).clone())
        }
        None => None,
    };
    for (ko, enforce) in kos {
        let (vermagic, _) = smoke::module_vermagic(&ko)?;
        let vermagic = Vermagic::parse(&vermagic).unwrap_or(Vermagic {
            release: vermagic,
            flags: String::new(),
        });
        // The module's own release, of the first target (in the order given) that has it.
        let own = select::registered(&registry, &names, &vermagic.release, Purpose::BootModule);
        let matching = own.as_ref().ok().and_then(|found| {
            candidates
                .iter()
                .find_map(|t| found.iter().find(|r| r.target == t.name))
                .map(|r| (*r).clone())
        });
        // Another release with the same flags: the kernel accepts that from a module with
        // modversions, so boot it on the one kernel whose vermagic has those flags.
        let same_flags = || -> Option<RegisteredTree> {
            let fitting: Vec<&RegisteredTree> = candidates
                .iter()
                .flat_map(|t| registry.for_target(&t.name))
                .filter(|r| {
                    KernelTree::inspect(&r.kdir).is_ok_and(|k| k.vermagic.flags == vermagic.flags)
                })
                .collect();
            match fitting.as_slice() {
                [one] => Some((*one).clone()),
                _ => None,
            }
        };
        let tree = match forced.clone().or(matching).or_else(same_flags) {
            Some(tree) => tree,
            None if explicit && candidates.len() == 1 => {
                let t = candidates[0];
                let mut trees: Vec<&RegisteredTree> = registry.for_target(&t.name).collect();
                trees.sort_by_key(|r| r.boot.is_none());
                trees.first().map(|r| (*r).clone()).ok_or_else(|| {
                    Error::usage(format!("target `{}` has no fetched kernel tree", t.name)).hint(
                        format!("run `kmx kernels fetch --with-image --target {}`", t.name),
                    )
                })?
            }
            None => {
                // No tree of the module's release (a tree of it would have matched).
                return Err(Error::from(own.err().unwrap_or_else(|| NoSuchTree {
                    releases: vec![vermagic.release.clone()],
                    target: None,
                    have: Vec::new(),
                    elsewhere: Vec::new(),
                    purpose: Purpose::BootModule,
                }))
                .at(&ko));
            }
        };
        let group = groups
            .entry((tree.target.clone(), tree.kdir.clone()))
            .or_insert_with(|| (tree.clone(), Vec::new(), Vec::new()));
        if enforce {
            group.2.push(ko);
        } else {
            group.1.push(ko);
        }
    }
    let mut jobs = Vec::new();
    for ((target, _), (tree, mut modules, enforced)) in groups {
        let enforce_from = (!enforced.is_empty()).then_some(modules.len());
        modules.extend(enforced);
        let mut job = Job::new(ctx.profiles.target(&target)?, &tree, modules);
        job.enforce_from = enforce_from;
        jobs.push(job);
    }
    let stop = crate::process::stop_flag()?;
    let opts = smoke::Options {
        timeout: Duration::from_secs(timeout.max(1)),
        work_dir: ctx.home.root.join("smoke"),
    };
    if !json {
        let names: Vec<&str> = jobs.iter().map(|j| j.target.as_str()).collect();
        eprintln!(
            "Booting {} kernel(s) under QEMU: {}",
            jobs.len(),
            names.join(", ")
        );
    }
    let reports = smoke::run(&jobs, &opts, &stop);
    if json {
        print_json("smoke-report", &serde_json::json!({ "boots": reports }))?;
    } else {
        print!("{}", render_text(&reports));
    }
    Ok(crate::smoke::exit_code(&reports))
}

/// The text report: per target, its boot and each module's verdict with the kernel's lines
/// (each once: a refusal is the module's message, and Debian's kernels log it twice for one
/// insmod); then the totals, counting the modules of kernels that never booted as not run,
/// and each hint once.
fn render_text(reports: &[TargetReport]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // `writeln!` into a String cannot fail.
    macro_rules! say {
        ($($arg:tt)*) => {{
            let _ = writeln!(out, $($arg)*);
        }};
    }
    let (mut loaded, mut refused, mut crashed, mut not_run) = (0, 0, 0, 0);
    // Each hint once, however many targets it applies to.
    let mut hinted: Vec<&str> = Vec::new();
    for r in reports {
        match r.status {
            Status::Booted => say!(
                "{:<8} {:<22} booted in {:.1} s",
                r.target,
                r.release,
                r.seconds
            ),
            Status::NotConfigured => {
                say!(
                    "{:<8} {:<22} {}",
                    r.target,
                    r.release,
                    r.message.as_deref().unwrap_or("")
                );
            }
            _ => {
                let what = match r.status {
                    Status::BootFailed => "BOOT FAILED",
                    Status::Interrupted => "INTERRUPTED",
                    _ => "HARNESS FAILED",
                };
                say!(
                    "{:<8} {:<22} {what}: {}",
                    r.target,
                    r.release,
                    r.message.as_deref().unwrap_or("")
                );
            }
        }
        if let Some(first) = &r.first_boot {
            let log = first
                .console_log
                .as_ref()
                .map(|p| format!(" (console log: {})", p.display()))
                .unwrap_or_default();
            say!(
                "  note: booted a second time: on the first boot, {}{log}",
                first.message
            );
        }
        if let Some(hint) = r.hint.as_deref().filter(|h| !hinted.contains(h)) {
            say!("  hint: {hint}");
            hinted.push(hint);
        }
        for m in &r.modules {
            let (word, count) = match m.outcome {
                Outcome::Loaded => ("loaded", &mut loaded),
                Outcome::Refused => ("REFUSED", &mut refused),
                Outcome::Crashed => ("CRASHED", &mut crashed),
                Outcome::NotRun => ("not run", &mut not_run),
            };
            *count += 1;
            let dep = if m.dependency {
                " (in-tree dependency)"
            } else {
                ""
            };
            // A kernel that did not boot said why once, on its own line.
            let message = m.message.as_ref().filter(|_| r.status == Status::Booted);
            match message {
                Some(msg) => say!("  {word:<8} {}{dep}: {msg}", m.name),
                None => say!("  {word:<8} {}{dep}", m.name),
            }
            if !m.dependency {
                // The kernel's lines, each once, without the one shown as the message.
                let mut lines: Vec<&String> = Vec::new();
                for l in &m.kernel_log {
                    if message != Some(l) && !lines.contains(&l) {
                        lines.push(l);
                    }
                }
                for l in lines.iter().take(SHOWN_LINES) {
                    say!("           | {l}");
                }
                if lines.len() > SHOWN_LINES {
                    say!(
                        "           | ({} more lines in {})",
                        lines.len() - SHOWN_LINES,
                        r.console_log
                            .as_deref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    // Kernels that did not boot, by why: their modules are the "not run" above.
    let mut unbooted: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reports {
        let why = match r.status {
            Status::Booted | Status::NotConfigured => continue,
            Status::BootFailed => "boot failed",
            Status::Interrupted => "interrupted",
            Status::HarnessFailed => "harness failed",
        };
        *unbooted.entry(why).or_default() += 1;
    }
    let total: usize = unbooted.values().sum();
    let unbooted = match total {
        0 => String::new(),
        n => format!(
            "; {n} kernel{} not booted ({})",
            if n == 1 { "" } else { "s" },
            unbooted
                .iter()
                .map(|(why, n)| format!("{n} {why}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    say!("{loaded} loaded, {refused} refused, {crashed} crashed, {not_run} not run{unbooted}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smoke::ModuleReport;

    fn target(name: &str, status: Status, message: Option<&str>) -> TargetReport {
        TargetReport {
            target: name.into(),
            release: format!("6.1.0-57-{name}"),
            status,
            message: message.map(str::to_string),
            hint: None,
            seconds: 8.04,
            console_log: None,
            first_boot: None,
            modules: Vec::new(),
        }
    }

    fn module(outcome: Outcome, message: Option<&str>, log: &[&str]) -> ModuleReport {
        ModuleReport {
            name: "hello".into(),
            path: "hello.ko".into(),
            dependency: false,
            outcome,
            message: message.map(str::to_string),
            insmod_status: None,
            insmod_output: Vec::new(),
            kernel_log: log.iter().map(|l| l.to_string()).collect(),
        }
    }

    #[test]
    fn a_refusal_is_printed_once() {
        // What Debian 12's amd64 kernel logged for one insmod of a module built for another
        // ABI (kmx smoke of e6bc50d printed the line three times).
        let refusal = "hello: disagrees about version of symbol module_layout";
        let mut r = target("amd64", Status::Booted, None);
        r.modules
            .push(module(Outcome::Refused, Some(refusal), &[refusal, refusal]));
        assert_eq!(
            render_text(&[r]),
            format!(
                "amd64    6.1.0-57-amd64         booted in 8.0 s\n  \
                 REFUSED  hello: {refusal}\n\
                 0 loaded, 1 refused, 0 crashed, 0 not run\n"
            )
        );
    }

    #[test]
    fn kernels_that_did_not_boot_count_their_modules_and_say_what_to_do_once() {
        let hint = "run `kmx kernels fetch --with-image`";
        let mut reports = Vec::new();
        for t in ["arm64", "armhf"] {
            let why = format!("no kernel image for 6.1.0-57-{t}");
            let mut r = target(t, Status::HarnessFailed, Some(&why));
            r.hint = Some(hint.into());
            r.modules.push(module(Outcome::NotRun, Some(&why), &[]));
            reports.push(r);
        }
        let mut booted = target("amd64", Status::Booted, None);
        booted.modules.push(module(
            Outcome::Loaded,
            None,
            &["hello: loading out-of-tree module taints kernel."],
        ));
        reports.push(booted);
        assert_eq!(
            render_text(&reports),
            "arm64    6.1.0-57-arm64         HARNESS FAILED: no kernel image for 6.1.0-57-arm64\n  \
             hint: run `kmx kernels fetch --with-image`\n  \
             not run  hello\n\
             armhf    6.1.0-57-armhf         HARNESS FAILED: no kernel image for 6.1.0-57-armhf\n  \
             not run  hello\n\
             amd64    6.1.0-57-amd64         booted in 8.0 s\n  \
             loaded   hello\n           \
             | hello: loading out-of-tree module taints kernel.\n\
             1 loaded, 0 refused, 0 crashed, 2 not run; 2 kernels not booted (2 harness failed)\n"
        );
    }

    #[test]
    fn a_second_boot_says_how_the_first_one_failed() {
        let mut r = target("rpi", Status::Booted, None);
        r.first_boot = Some(crate::smoke::FirstBoot {
            message: "the kernel did not reach /init within 120 s".into(),
            console_log: Some("/h/smoke/rpi-6.1.0-57-rpi.first-boot.console.log".into()),
        });
        r.modules.push(module(Outcome::Loaded, None, &[]));
        assert_eq!(
            render_text(&[r]),
            "rpi      6.1.0-57-rpi           booted in 8.0 s\n  \
             note: booted a second time: on the first boot, the kernel did not reach /init \
             within 120 s (console log: /h/smoke/rpi-6.1.0-57-rpi.first-boot.console.log)\n  \
             loaded   hello\n\
             1 loaded, 0 refused, 0 crashed, 0 not run\n"
        );
    }
}

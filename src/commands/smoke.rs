//! `kmx smoke`: resolve which target's kernel each `.ko` is for, boot them, print verdicts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::commands::{Context, print_json};
use crate::error::{Error, Result};
use crate::kernel::registry::{RegisteredTree, Registry};
use crate::kernel::tree::KernelTree;
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
    for (ko, enforce) in kos {
        let (vermagic, _) = smoke::module_vermagic(&ko)?;
        let (release, flags) = vermagic.split_once(' ').unwrap_or((&vermagic, ""));
        let matching = candidates.iter().find_map(|t| {
            registry
                .for_target(&t.name)
                .find(|r| r.release == release)
                .cloned()
        });
        // Another release with the same flags: the kernel accepts that from a module with
        // modversions, so boot it on the one kernel whose vermagic has those flags.
        let same_flags = || -> Option<RegisteredTree> {
            let fitting: Vec<&RegisteredTree> = candidates
                .iter()
                .flat_map(|t| registry.for_target(&t.name))
                .filter(|r| {
                    KernelTree::inspect(&r.kdir).is_ok_and(|k| {
                        let v = k.vermagic.to_string();
                        v.split_once(' ').map(|(_, f)| f) == Some(flags)
                    })
                })
                .collect();
            match fitting.as_slice() {
                [one] => Some((*one).clone()),
                _ => None,
            }
        };
        // `--kernel`: that release, whatever the module was built for.
        let forced = match kernel {
            Some(k) => Some(
                candidates
                    .iter()
                    .find_map(|t| registry.for_target(&t.name).find(|r| r.release == k))
                    .cloned()
                    .ok_or_else(|| {
                        Error::usage(format!(
                            "no kernel tree of the targets given has release `{k}`"
                        ))
                        .hint("`kmx kernels list` shows the known releases")
                    })?,
            ),
            None => None,
        };
        let tree = match forced.or(matching).or_else(same_flags) {
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
                let known: Vec<String> = registry
                    .trees
                    .iter()
                    .map(|r| format!("{} ({})", r.release, r.target))
                    .collect();
                return Err(Error::usage(format!(
                    "no known kernel tree has release `{release}`, which the module was built for"
                ))
                .at(&ko)
                .hint(if known.is_empty() {
                    "fetch kernels with `kmx kernels fetch --with-image`".to_string()
                } else {
                    format!(
                        "pass --target to boot it anyway; known releases: {}",
                        known.join(", ")
                    )
                }));
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
        print_text(&reports);
    }
    Ok(crate::smoke::exit_code(&reports))
}

fn print_text(reports: &[TargetReport]) {
    let (mut loaded, mut refused, mut crashed, mut not_run) = (0, 0, 0, 0);
    for r in reports {
        match r.status {
            Status::Booted => println!(
                "{:<8} {:<22} booted in {:.1} s",
                r.target, r.release, r.seconds
            ),
            Status::NotConfigured => {
                println!(
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
                println!(
                    "{:<8} {:<22} {what}: {}",
                    r.target,
                    r.release,
                    r.message.as_deref().unwrap_or("")
                );
            }
        }
        if let Some(hint) = &r.hint {
            println!("  hint: {hint}");
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
            match &m.message {
                Some(msg) => println!("  {word:<8} {}{dep}: {msg}", m.name),
                None => println!("  {word:<8} {}{dep}", m.name),
            }
            if !m.dependency {
                for l in m.kernel_log.iter().take(SHOWN_LINES) {
                    println!("           | {l}");
                }
                if m.kernel_log.len() > SHOWN_LINES {
                    println!(
                        "           | ({} more lines in {})",
                        m.kernel_log.len() - SHOWN_LINES,
                        r.console_log
                            .as_deref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    println!("{loaded} loaded, {refused} refused, {crashed} crashed, {not_run} not run");
}

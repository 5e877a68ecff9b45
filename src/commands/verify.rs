//! `kmx verify`: will these modules load on that kernel, and if not, exactly why. This
//! resolves the arguments into a [`Request`], runs the engine ([`crate::verify::engine`]) and
//! prints its report: failures first, then warnings, totals.

use std::collections::BTreeSet;
use std::time::Instant;

use serde::Serialize;

use crate::cli::VerifyArgs;
use crate::commands::{Context, print_json};
use crate::error::{Result, exit};
use crate::verify::checks::{self, Status};
use crate::verify::engine::{self, Env, KernelUsed, ModuleReport, Request, Totals};

#[derive(Serialize)]
struct JsonReport<'a> {
    kernels: &'a [KernelUsed],
    modules: &'a [ModuleReport],
    totals: &'a Totals,
}

/// `kmx verify`'s arguments, resolved.
fn request(args: &VerifyArgs) -> Request {
    Request {
        paths: args.paths.clone(),
        target: args.target.clone(),
        kernel: args.kernel.clone(),
        kdir: args.kdir.clone(),
        no_kernel: args.no_kernel,
        symvers: args.symvers.clone(),
        strict: args.strict,
        cert: args.cert.clone(),
        sig_enforce: args.sig_enforce,
        jobs: args.jobs,
    }
}

pub fn run(ctx: &Context, args: &VerifyArgs) -> Result<i32> {
    let started = Instant::now();
    let env = Env {
        profiles: &ctx.profiles,
        home: &ctx.home,
    };
    let report = engine::run(&env, &request(args))?;
    let engine::Report {
        modules: reports,
        kernels,
        no_trees,
        totals,
        notes,
    } = report;
    for n in &notes {
        eprintln!("{n}");
    }
    let summary = summary_line(&reports, &totals, no_trees, started);
    if args.json {
        print_json(
            "verify-report",
            &JsonReport {
                kernels: &kernels,
                modules: &reports,
                totals: &totals,
            },
        )?;
        eprintln!("{summary}");
    } else {
        print_text(&reports, args.verbose, no_trees);
        let unsigned = reports
            .iter()
            .filter(|r| {
                r.checks
                    .iter()
                    .any(|c| c.finding == Some(checks::Finding::Unsigned))
            })
            .count();
        if unsigned > 0 {
            println!(
                "hint: {} unsigned: {}",
                if unsigned == 1 {
                    "1 module is".to_string()
                } else {
                    format!("{unsigned} modules are")
                },
                checks::UNSIGNED_HINT
            );
        }
        println!("{summary}");
    }
    std::mem::forget(reports);
    Ok(if totals.failed > 0 {
        exit::FAILED
    } else {
        exit::OK
    })
}

/// Failures first, then warnings (then passes with `verbose`), one line per module with
/// the reason; without a kernel tree every module's facts are shown.
fn print_text(reports: &[ModuleReport], verbose: bool, no_kernel: bool) {
    for status in [Status::Fail, Status::Warn, Status::Pass] {
        if status == Status::Pass && !verbose && !no_kernel {
            continue;
        }
        for r in reports.iter().filter(|r| r.status == status) {
            // A failing or warning module: its failing or warning checks. Without a kernel:
            // every fact (what modinfo would show, plus the identity check).
            let reasons: Vec<String> = r
                .checks
                .iter()
                .filter(|c| c.status == status || no_kernel)
                .filter(|_| status != Status::Pass || no_kernel)
                .map(|c| format!("{}: {}", c.check, c.summary))
                .collect();
            let word = match status {
                Status::Fail => "FAIL",
                Status::Warn => "WARN",
                Status::Pass => "ok  ",
            };
            if reasons.is_empty() {
                println!("{word} {}", r.path.display());
            } else {
                println!("{word} {}: {}", r.path.display(), reasons.join("; "));
            }
            if verbose {
                for c in &r.checks {
                    println!(
                        "    {:<11} {:<4} {}",
                        c.check.to_string(),
                        c.status.to_string(),
                        c.summary
                    );
                    for e in &c.evidence {
                        println!("                     {e}");
                    }
                }
            }
        }
    }
}

fn summary_line(reports: &[ModuleReport], t: &Totals, no_trees: bool, started: Instant) -> String {
    let used: BTreeSet<&str> = reports.iter().filter_map(|r| r.kernel.as_deref()).collect();
    let against = if used.is_empty() {
        if no_trees {
            " without a kernel tree".to_string()
        } else {
            String::new()
        }
    } else {
        format!(
            " against {}",
            used.into_iter().collect::<Vec<_>>().join(", ")
        )
    };
    format!(
        "{} module{} checked{against}: {} passed, {} warned, {} failed in {:.2}s",
        t.modules,
        if t.modules == 1 { "" } else { "s" },
        t.passed,
        t.warned,
        t.failed,
        started.elapsed().as_secs_f64()
    )
}

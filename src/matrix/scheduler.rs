//! The scheduler: runs the plan's cells in parallel on rayon, in dependency order.
//!
//! Design (after cargo's job queue):
//! - The calling thread owns all state and is the only one that reports: workers send
//!   [`Event`]s over a channel and never print.
//! - Parallelism is bounded twice over: at most `jobs` cells are handed to the rayon pool
//!   at once, and every make any cell starts shares ONE GNU make jobserver holding `jobs`
//!   tokens. A cell acquires one
//!   token for its make's implicit slot; make takes further tokens for parallel compiles. So
//!   four cells on two cores use two slots in all, and one big cell alone can use both.
//! - The drain loop never returns early: every cell's result is recorded. A failure is
//!   reported at once; with `fail_fast` no new cell starts after it (the running ones
//!   finish). The stop flag (Ctrl-C, SIGTERM) kills every running child's process group and
//!   cancels what has not started.
//! - A cell whose dependency did not build is not attempted; it says which dependency.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::matrix::cell::{self, Outcome, RunEnv};
use crate::matrix::plan::{Action, Plan};

pub struct Options {
    pub jobs: usize,
    pub timeout: Duration,
    pub fail_fast: bool,
    pub launcher: Option<Vec<String>>,
    pub passthrough: Vec<(String, String)>,
    pub cache: Option<crate::state::cache::Cache>,
    pub force: bool,
}

/// What the scheduler tells its reporter.
pub enum Event<'a> {
    Started {
        cell: usize,
        running: &'a [usize],
    },
    Finished {
        cell: usize,
        result: &'a CellResult,
        running: &'a [usize],
    },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CellResult {
    pub outcome: Outcome,
    pub command: String,
    pub duration: Duration,
}

enum Msg {
    Started(usize),
    Done(usize, Outcome, String, Duration),
}

/// Run every cell of `plan`; returns one result per cell, in plan order.
pub fn execute(
    plan: &Plan,
    opts: &Options,
    stop: &AtomicBool,
    report: &mut dyn FnMut(&Event),
) -> Result<Vec<CellResult>> {
    let n = plan.cells.len();
    let mut results: Vec<Option<CellResult>> = vec![None; n];
    let jobs = opts.jobs.max(1);
    let jobserver = jobserver::Client::new(jobs)
        .map_err(|e| Error::env(format!("cannot create the make jobserver: {e}")))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .thread_name(|i| format!("kmx-cell-{i}"))
        .build()
        .map_err(|e| Error::env(format!("cannot start worker threads: {e}")))?;
    let env = RunEnv {
        jobserver: &jobserver,
        timeout: opts.timeout,
        stop,
        passthrough: opts.passthrough.clone(),
        launcher: opts.launcher.clone(),
        cache: opts.cache.as_ref(),
        force: opts.force,
        tree_symbols: plan
            .cells
            .iter()
            .map(|c| (c.tree.kdir.clone(), std::sync::OnceLock::new()))
            .collect(),
    };
    let (tx, rx) = mpsc::channel::<Msg>();
    let mut running: Vec<usize> = Vec::new();
    let mut started = vec![false; n];
    let mut failed_once = false;
    // Cells handed to the pool and not finished: at most `jobs`, so that a cell is only
    // committed to when it can start (and --fail-fast can still cancel the rest).
    let mut in_flight = 0usize;

    pool.in_place_scope(|scope| {
        loop {
            // Settle every cell that can be decided without running it, and start the ready ones.
            let mut progressed = true;
            while progressed {
                progressed = false;
                for i in 0..n {
                    if started[i] {
                        continue;
                    }
                    let c = &plan.cells[i];
                    let decided = if let Action::Skip(reason) = &c.action {
                        Some(Outcome::Skipped {
                            reason: reason.clone(),
                        })
                    } else if stop.load(Ordering::Relaxed) {
                        Some(Outcome::Interrupted)
                    } else if opts.fail_fast && failed_once {
                        Some(Outcome::Cancelled)
                    } else if let Some((d, dep)) = c.deps.iter().find_map(|&d| {
                        results[d]
                            .as_ref()
                            .filter(|r| !matches!(r.outcome, Outcome::Built { .. }))
                            .map(|r| (d, &r.outcome))
                    }) {
                        // A dependency excluded by a rule excludes its dependents too: a skip,
                        // not a failure.
                        Some(match dep {
                            Outcome::Skipped { reason } => Outcome::Skipped {
                                reason: format!(
                                    "its dependency {} is skipped: {reason}",
                                    plan.cells[d].label()
                                ),
                            },
                            _ => Outcome::DependencyFailed {
                                dependency: plan.cells[d].label(),
                            },
                        })
                    } else {
                        None
                    };
                    if let Some(outcome) = decided {
                        started[i] = true;
                        progressed = true;
                        failed_once |= counts_as_failure(&outcome);
                        let r = CellResult {
                            outcome,
                            command: String::new(),
                            duration: Duration::ZERO,
                        };
                        report(&Event::Finished {
                            cell: i,
                            result: &r,
                            running: &running,
                        });
                        results[i] = Some(r);
                        continue;
                    }
                    if in_flight < jobs && c.deps.iter().all(|&d| results[d].is_some()) {
                        in_flight += 1;
                        started[i] = true;
                        progressed = true;
                        let deps_symvers: Vec<PathBuf> = c
                            .deps
                            .iter()
                            .map(|&d| plan.cells[d].out_dir.join("Module.symvers"))
                            .collect();
                        let tx = tx.clone();
                        let env = &env;
                        scope.spawn(move |_| {
                            let _ = tx.send(Msg::Started(i));
                            let t = Instant::now();
                            // A panic must not leave the drain loop waiting for this cell.
                            let run =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    cell::run(c, env, &deps_symvers)
                                }));
                            let (outcome, command) = run.unwrap_or_else(|panic| {
                                let what = panic
                                    .downcast_ref::<&str>()
                                    .map(|s| s.to_string())
                                    .or_else(|| panic.downcast_ref::<String>().cloned())
                                    .unwrap_or_default();
                                let outcome = Outcome::Failed {
                                    stage: "internal".into(),
                                    message: format!("kmx bug: the cell's worker panicked: {what}"),
                                    errors: Vec::new(),
                                    exit_code: None,
                                };
                                (outcome, String::new())
                            });
                            let _ = tx.send(Msg::Done(i, outcome, command, t.elapsed()));
                        });
                    }
                }
            }
            if results.iter().all(Option::is_some) {
                break;
            }
            // Wait for a worker; the timeout lets a Ctrl-C cancel cells not yet started.
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Msg::Started(i)) => {
                    running.push(i);
                    report(&Event::Started {
                        cell: i,
                        running: &running,
                    });
                }
                Ok(Msg::Done(i, outcome, command, duration)) => {
                    in_flight -= 1;
                    running.retain(|&r| r != i);
                    failed_once |= counts_as_failure(&outcome);
                    let r = CellResult {
                        outcome,
                        command,
                        duration,
                    };
                    report(&Event::Finished {
                        cell: i,
                        result: &r,
                        running: &running,
                    });
                    results[i] = Some(r);
                }
                Err(_) => {}
            }
        }
    });
    Ok(results
        .into_iter()
        .map(|r| {
            r.unwrap_or(CellResult {
                outcome: Outcome::Interrupted,
                command: String::new(),
                duration: Duration::ZERO,
            })
        })
        .collect())
}

/// A failure that `--fail-fast` reacts to (not the cancellations and interruptions it causes).
fn counts_as_failure(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Failed { .. } | Outcome::DependencyFailed { .. }
    )
}

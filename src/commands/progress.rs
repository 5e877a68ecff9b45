//! How a build's progress looks on stderr, for every command that builds (`build`,
//! `install`, `autoinstall`). On a terminal that can redraw a line: a bar with the counts and
//! an estimate of the time left (from how long each cell took when it was last built,
//! [`crate::state::durations`]), the finished cells printed above it. Elsewhere (a pipe, a
//! file, CI, `TERM=dumb`): plain lines, one per finished cell. Either way one line per cell
//! and failures at once. Not a command: the commands share it.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::matrix::pipeline::{Action, Event, Outcome, Plan, Progress, count};

#[derive(Default)]
pub struct Printer {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    done: usize,
    /// At most this many cells run at once.
    jobs: usize,
    /// Per cell: how long it is expected to take (0 for a cell skipped by a rule); `None`
    /// when no cell of the plan has a known duration.
    expected: Option<Vec<f64>>,
    /// When each running cell started.
    started: HashMap<usize, Instant>,
    finished: Vec<bool>,
    /// The first error of each failed cell so far, with its label: a later cell failing
    /// with the same one says so instead of repeating it.
    first_errors: Vec<(String, String)>,
    /// `-q`: only failures (cargo's quiet).
    pub quiet: bool,
    /// `-v`: each cell's make command line as it starts.
    pub verbose: bool,
    /// `--message-format json`: one JSON object per finished cell on stdout.
    pub json_lines: bool,
}

/// One line of `--message-format json` on stdout, flushed at once (a reader follows the
/// build as it goes).
pub fn json_line(value: &serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}").and_then(|_| out.flush());
}

/// Whether stderr is a terminal that can redraw a bar (`TERM` set and not `dumb`).
fn bar_wanted() -> bool {
    let term = std::env::var("TERM").unwrap_or_default();
    std::io::stderr().is_terminal() && !term.is_empty() && term != "dumb"
}

/// The time left: the expected remaining seconds of every unfinished cell spread over `jobs`
/// cells at once, and never less than the longest of them.
fn eta_secs(remaining: &[f64], jobs: usize) -> f64 {
    let longest = remaining.iter().copied().fold(0.0, f64::max);
    let spread = remaining.iter().sum::<f64>() / jobs.max(1) as f64;
    spread.max(longest)
}

/// `1:05`, `12s`.
fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        _ => format!("{}:{:02}", s / 60, s % 60),
    }
}

impl Printer {
    fn line(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None => eprintln!("{text}"),
        }
    }

    /// `ETA 0:42` from the cells not finished yet, less what running ones have run.
    fn eta(&self) -> Option<String> {
        let expected = self.expected.as_ref()?;
        let remaining: Vec<f64> = expected
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.finished[*i])
            .map(|(i, secs)| match self.started.get(&i) {
                Some(t) => (secs - t.elapsed().as_secs_f64()).max(0.0),
                None => *secs,
            })
            .collect();
        Some(format!("ETA {}", clock(eta_secs(&remaining, self.jobs))))
    }
}

impl Progress for Printer {
    fn begin(&mut self, plan: &Plan, jobs: usize, inherited: bool, estimates: &[Option<f64>]) {
        let summary = plan.summary();
        // The count is of every cell, as the `[n/N]` lines that follow.
        if !self.quiet {
            eprintln!(
                "Building {} ({} skipped by rules) with {} into {}",
                count(summary.cells, "cell"),
                summary.skipped,
                if inherited {
                    format!("up to {jobs} cells on the calling make's jobserver")
                } else {
                    format!("{jobs} jobs")
                },
                plan.out.display()
            );
        }
        self.total = plan.cells.len();
        self.done = 0;
        self.jobs = jobs;
        self.started.clear();
        self.finished = vec![false; self.total];
        // Cells never built before are expected to take the mean of those that were.
        let known: Vec<f64> = estimates.iter().flatten().copied().collect();
        self.expected = (!known.is_empty()).then(|| {
            let mean = known.iter().sum::<f64>() / known.len() as f64;
            plan.cells
                .iter()
                .zip(estimates)
                .map(|(c, e)| match c.action {
                    Action::Skip(_) => 0.0,
                    Action::Build => e.unwrap_or(mean),
                })
                .collect()
        });
        self.bar = (bar_wanted() && !self.quiet).then(|| {
            let b = indicatif::ProgressBar::new(self.total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{pos}/{len}] [{bar:24}] {elapsed} {wide_msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
    }

    fn event(&mut self, plan: &Plan, ev: &Event) {
        let running = match ev {
            Event::Started { cell, running } => {
                self.started.insert(*cell, Instant::now());
                if self.verbose {
                    let c = &plan.cells[*cell];
                    self.line(&format!(
                        "     Running {}: `{}`",
                        c.label(),
                        crate::matrix::pipeline::make_line(c)
                    ));
                }
                running
            }
            Event::Finished {
                cell,
                result,
                running,
            } => {
                self.done += 1;
                if let Some(f) = self.finished.get_mut(*cell) {
                    *f = true;
                }
                self.started.remove(cell);
                let c = &plan.cells[*cell];
                if self.json_lines {
                    let mut v = serde_json::json!({
                        "reason": "cell-finished",
                        "module": c.spec.name,
                        "version": c.spec.version,
                        "target": c.target.target.name,
                        "kernel": c.tree.release,
                        "duration_secs": result.duration.as_secs_f64(),
                        "log": c.log,
                    });
                    if let (Some(fields), Ok(serde_json::Value::Object(outcome))) =
                        (v.as_object_mut(), serde_json::to_value(&result.outcome))
                    {
                        fields.extend(outcome);
                    }
                    json_line(&v);
                }
                let failed = matches!(result.outcome, Outcome::Failed { .. });
                let mut line = format!(
                    "[{}/{}] {:<11} {} ({:.1}s)",
                    self.done,
                    self.total,
                    result.outcome.status().word(),
                    c.label(),
                    result.duration.as_secs_f64()
                );
                match &result.outcome {
                    Outcome::Failed {
                        message, errors, ..
                    } => {
                        line.push_str(&format!("\n  {message}"));
                        let first = errors.first();
                        match first.and_then(|f| self.first_errors.iter().find(|(e, _)| e == f)) {
                            Some((_, label)) => {
                                line.push_str(&format!("\n    the same first error as {label}"))
                            }
                            None => {
                                if let Some(f) = first {
                                    self.first_errors.push((f.clone(), c.label()));
                                }
                                for e in errors.iter().take(3) {
                                    line.push_str(&format!("\n    {e}"));
                                }
                            }
                        }
                        line.push_str(&format!("\n  log: {}", c.log.display()));
                    }
                    Outcome::Skipped { reason } => line.push_str(&format!(": {reason}")),
                    _ => {}
                }
                if failed || !self.quiet {
                    self.line(&line);
                }
                running
            }
        };
        if let Some(b) = &self.bar {
            b.set_position(self.done as u64);
            let names: Vec<String> = running
                .iter()
                .map(|&i| {
                    format!(
                        "{}/{}",
                        plan.cells[i].target.target.name, plan.cells[i].spec.name
                    )
                })
                .collect();
            let eta = self.eta().map(|e| format!("{e} · ")).unwrap_or_default();
            b.set_message(format!("{eta}running: {}", names.join(", ")));
        }
    }

    fn end(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_spreads_the_work_over_the_jobs_but_waits_for_the_longest_cell() {
        assert_eq!(eta_secs(&[4.0, 4.0, 4.0, 4.0], 2), 8.0);
        assert_eq!(eta_secs(&[30.0, 1.0, 1.0], 4), 30.0);
        assert_eq!(eta_secs(&[], 2), 0.0);
        assert_eq!(eta_secs(&[3.0], 0), 3.0);
        assert_eq!(clock(7.4), "7s");
        assert_eq!(clock(65.0), "1:05");
    }
}

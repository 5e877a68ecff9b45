//! How a build's progress looks on stderr, for every command that builds (`build`,
//! `install`, `autoinstall`): a bar on a terminal, plain lines otherwise; failures print at
//! once. Not a command: the commands share it.

use std::io::IsTerminal;
use std::time::Duration;

use crate::matrix::cell::Outcome;
use crate::matrix::pipeline::Progress;
use crate::matrix::plan::Plan;
use crate::matrix::scheduler::Event;

#[derive(Default)]
pub struct Printer {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    done: usize,
}

impl Printer {
    fn line(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None => eprintln!("{text}"),
        }
    }
}

impl Progress for Printer {
    fn begin(&mut self, plan: &Plan, jobs: usize, inherited: bool) {
        let summary = plan.summary();
        eprintln!(
            "Building {} cells ({} skipped by rules) with {} into {}",
            summary.to_build,
            summary.skipped,
            if inherited {
                format!("up to {jobs} cells on the calling make's jobserver")
            } else {
                format!("{jobs} jobs")
            },
            plan.out.display()
        );
        self.total = plan.cells.len();
        self.done = 0;
        self.bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(self.total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{pos}/{len}] {elapsed} {wide_msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
    }

    fn event(&mut self, plan: &Plan, ev: &Event) {
        let running = match ev {
            Event::Started { running, .. } => running,
            Event::Finished {
                cell,
                result,
                running,
            } => {
                self.done += 1;
                let c = &plan.cells[*cell];
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
                        for e in errors.iter().take(3) {
                            line.push_str(&format!("\n    {e}"));
                        }
                        line.push_str(&format!("\n  log: {}", c.log.display()));
                    }
                    Outcome::Skipped { reason } => line.push_str(&format!(": {reason}")),
                    _ => {}
                }
                self.line(&line);
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
            b.set_message(format!("running: {}", names.join(", ")));
        }
    }

    fn end(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

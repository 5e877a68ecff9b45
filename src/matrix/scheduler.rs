//! The scheduler: runs a graph of cells in parallel on rayon, in dependency order.
//!
//! Design (after cargo's job queue):
//! - The calling thread owns all state and is the only one that reports: workers send
//!   messages over a channel and never print.
//! - It knows cells only as a [`Dag`] (dependencies, a skip rule, a label) and runs them
//!   through a runner function, so it is tested and measured alone, with a fake runner
//!   (see the tests below and `benches/scheduler.rs`).
//! - Linear in cells: each cell keeps a count of unfinished dependencies and a list of its
//!   dependents; a finished cell updates only its dependents, and ready cells wait in a
//!   queue. Nothing rescans the plan.
//! - Parallelism: at most `jobs` cells are handed to the rayon pool at once (the make
//!   jobserver the runner uses bounds the compiles inside them).
//! - The drain loop never returns early: every cell's result is recorded. A failure is
//!   reported at once; with `fail_fast` no new cell starts after it (the running ones
//!   finish). The stop flag (Ctrl-C, SIGTERM, SIGHUP) cancels what has not started; the
//!   runner kills what is running.
//! - A cell whose dependency did not build is not attempted; it says which dependency. A
//!   dependency excluded by a rule excludes its dependents: a skip, not a failure.
//! - A panicking runner fails its cell; it never leaves the loop waiting.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::matrix::cell::{Outcome, Stage};

/// What the scheduler needs to know of the cells: their dependencies, whether a rule
/// excludes them, and a name for messages.
pub trait Dag: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Indexes of the cells `i` needs built first.
    fn deps(&self, i: usize) -> &[usize];
    /// Why a rule excludes cell `i`, if one does.
    fn skip(&self, i: usize) -> Option<&str>;
    fn label(&self, i: usize) -> String;
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

impl CellResult {
    /// A cell decided without running it.
    fn decided(outcome: Outcome) -> CellResult {
        CellResult {
            outcome,
            command: String::new(),
            duration: Duration::ZERO,
        }
    }
}

/// Runs one cell: its outcome and the command line it ran.
pub type Runner<'a> = dyn Fn(usize) -> (Outcome, String) + Sync + 'a;

enum Msg {
    Started(usize),
    Done(usize, CellResult),
}

/// The bookkeeping of one run, owned by the calling thread.
struct Book<'d, 'r> {
    dag: &'d dyn Dag,
    report: &'r mut dyn FnMut(&Event),
    results: Vec<Option<CellResult>>,
    /// Unfinished dependencies of each cell.
    waiting: Vec<usize>,
    dependents: Vec<Vec<usize>>,
    /// Cells decided or handed to a worker.
    taken: Vec<bool>,
    ready: VecDeque<usize>,
    running: Vec<usize>,
    finished: usize,
    failed_once: bool,
    /// Every cell not taken was cancelled (once: later calls have nothing to do).
    cancelled: bool,
}

impl Book<'_, '_> {
    /// Record a finished cell and settle its dependents: a built cell may make them ready,
    /// any other outcome decides them (and theirs) without running.
    fn finish(&mut self, cell: usize, result: CellResult) {
        let mut work = vec![(cell, result)];
        while let Some((i, r)) = work.pop() {
            self.failed_once |= counts_as_failure(&r.outcome);
            (self.report)(&Event::Finished {
                cell: i,
                result: &r,
                running: &self.running,
            });
            for k in 0..self.dependents[i].len() {
                let j = self.dependents[i][k];
                if self.taken[j] {
                    continue;
                }
                let outcome = match &r.outcome {
                    Outcome::Built { .. } => {
                        self.waiting[j] -= 1;
                        if self.waiting[j] == 0 {
                            self.ready.push_back(j);
                        }
                        continue;
                    }
                    Outcome::Skipped { reason } => Outcome::Skipped {
                        reason: format!(
                            "its dependency {} is skipped: {reason}",
                            self.dag.label(i)
                        ),
                    },
                    _ => Outcome::DependencyFailed {
                        dependency: self.dag.label(i),
                    },
                };
                self.taken[j] = true;
                work.push((j, CellResult::decided(outcome)));
            }
            self.results[i] = Some(r);
            self.finished += 1;
        }
    }

    /// Decide every cell not yet taken with `outcome` (a stop, or `--fail-fast`).
    fn cancel_rest(&mut self, outcome: Outcome) {
        if self.cancelled {
            return;
        }
        self.cancelled = true;
        let rest: Vec<usize> = (0..self.taken.len()).filter(|&i| !self.taken[i]).collect();
        for &i in &rest {
            self.taken[i] = true;
        }
        for i in rest {
            self.finish(i, CellResult::decided(outcome.clone()));
        }
        self.ready.clear();
    }
}

/// Run every cell of `dag` with `run`, at most `jobs` at once; returns one result per cell,
/// in cell order.
pub fn execute(
    dag: &dyn Dag,
    jobs: usize,
    fail_fast: bool,
    stop: &AtomicBool,
    run: &Runner,
    report: &mut dyn FnMut(&Event),
) -> Result<Vec<CellResult>> {
    let n = dag.len();
    let jobs = jobs.max(1);
    // One thread per cell that can run at once: never more than there are cells.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs.min(n).max(1))
        .thread_name(|i| format!("kmx-cell-{i}"))
        .build()
        .map_err(|e| Error::env(format!("cannot start worker threads: {e}")))?;
    let mut book = Book {
        dag,
        report,
        results: (0..n).map(|_| None).collect(),
        waiting: (0..n).map(|i| dag.deps(i).len()).collect(),
        dependents: vec![Vec::new(); n],
        taken: vec![false; n],
        ready: VecDeque::new(),
        running: Vec::new(),
        finished: 0,
        failed_once: false,
        cancelled: false,
    };
    for i in 0..n {
        for &d in dag.deps(i) {
            book.dependents[d].push(i);
        }
    }
    // Cells a rule excludes are decided first, whatever their dependencies.
    for i in 0..n {
        if let Some(reason) = dag.skip(i) {
            book.taken[i] = true;
            let reason = reason.to_string();
            book.finish(i, CellResult::decided(Outcome::Skipped { reason }));
        }
    }
    for i in 0..n {
        if !book.taken[i] && book.waiting[i] == 0 {
            book.ready.push_back(i);
        }
    }
    let (tx, rx) = mpsc::channel::<Msg>();
    // Cells handed to the pool and not finished: at most `jobs`, so that a cell is only
    // committed to when it can start (and --fail-fast can still cancel the rest).
    let mut in_flight = 0usize;
    pool.in_place_scope(|scope| {
        loop {
            if stop.load(Ordering::Relaxed) {
                book.cancel_rest(Outcome::Interrupted);
            } else if fail_fast && book.failed_once {
                book.cancel_rest(Outcome::Cancelled);
            }
            while in_flight < jobs {
                let Some(i) = book.ready.pop_front() else {
                    break;
                };
                if book.taken[i] {
                    continue;
                }
                book.taken[i] = true;
                in_flight += 1;
                let tx = tx.clone();
                scope.spawn(move |_| {
                    let _ = tx.send(Msg::Started(i));
                    let t = Instant::now();
                    // A panic must not leave the drain loop waiting for this cell.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(i)));
                    let (outcome, command) = ran.unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        let outcome = Outcome::Failed {
                            stage: Stage::Internal,
                            message: format!("kmx bug: the cell's worker panicked: {what}"),
                            errors: Vec::new(),
                            exit_code: None,
                            build_dir: None,
                        };
                        (outcome, String::new())
                    });
                    let r = CellResult {
                        outcome,
                        command,
                        duration: t.elapsed(),
                    };
                    let _ = tx.send(Msg::Done(i, r));
                });
            }
            if book.finished == n {
                break;
            }
            // Wait for a worker; the timeout lets a Ctrl-C cancel cells not yet started.
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Msg::Started(i)) => {
                    book.running.push(i);
                    (book.report)(&Event::Started {
                        cell: i,
                        running: &book.running,
                    });
                }
                Ok(Msg::Done(i, r)) => {
                    in_flight -= 1;
                    book.running.retain(|&x| x != i);
                    book.finish(i, r);
                }
                Err(_) => {}
            }
        }
    });
    Ok(book
        .results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| CellResult::decided(Outcome::Interrupted)))
        .collect())
}

/// A failure that `--fail-fast` reacts to (not the cancellations and interruptions it causes).
fn counts_as_failure(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Failed { .. } | Outcome::DependencyFailed { .. }
    )
}

/// A graph of cells for tests and benchmarks: dependencies and skip rules only.
#[derive(Debug, Clone, Default)]
pub struct SimpleDag {
    pub deps: Vec<Vec<usize>>,
    pub skips: Vec<Option<String>>,
}

impl SimpleDag {
    /// Add a cell; returns its index.
    pub fn push(&mut self, deps: Vec<usize>, skip: Option<&str>) -> usize {
        self.deps.push(deps);
        self.skips.push(skip.map(String::from));
        self.deps.len() - 1
    }
}

impl Dag for SimpleDag {
    fn len(&self) -> usize {
        self.deps.len()
    }
    fn deps(&self, i: usize) -> &[usize] {
        &self.deps[i]
    }
    fn skip(&self, i: usize) -> Option<&str> {
        self.skips[i].as_deref()
    }
    fn label(&self, i: usize) -> String {
        format!("cell{i}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    fn built() -> (Outcome, String) {
        let outcome = Outcome::Built {
            artifacts: Vec::new(),
            fresh: false,
            restored: false,
            warnings: Vec::new(),
        };
        (outcome, "make".into())
    }

    fn failed() -> (Outcome, String) {
        let outcome = Outcome::Failed {
            stage: Stage::Make,
            message: "make failed".into(),
            errors: Vec::new(),
            exit_code: Some(2),
            build_dir: None,
        };
        (outcome, "make".into())
    }

    fn words(results: &[CellResult]) -> Vec<&'static str> {
        results.iter().map(|r| r.outcome.status().word()).collect()
    }

    fn quiet(_: &Event) {}

    #[test]
    fn dependencies_build_first_and_every_cell_is_reported_once() {
        // 0 <- 1 <- 2, 3 alone
        let mut dag = SimpleDag::default();
        let a = dag.push(vec![], None);
        let b = dag.push(vec![a], None);
        dag.push(vec![b], None);
        dag.push(vec![], None);
        let order = Mutex::new(Vec::new());
        let run = |i: usize| {
            order.lock().unwrap().push(i);
            built()
        };
        let mut finished = Vec::new();
        let results = execute(&dag, 2, false, &AtomicBool::new(false), &run, &mut |e| {
            if let Event::Finished { cell, .. } = e {
                finished.push(*cell)
            }
        })
        .unwrap();
        assert_eq!(words(&results), ["built"; 4]);
        let order = order.into_inner().unwrap();
        let pos = |c| order.iter().position(|&x| x == c).unwrap();
        assert!(pos(0) < pos(1) && pos(1) < pos(2), "{order:?}");
        finished.sort();
        assert_eq!(finished, [0, 1, 2, 3]);
    }

    #[test]
    fn a_failure_fails_its_dependents_transitively_and_others_go_on() {
        let mut dag = SimpleDag::default();
        let a = dag.push(vec![], None);
        let b = dag.push(vec![a], None);
        dag.push(vec![b], None);
        dag.push(vec![], None);
        let run = |i: usize| if i == 0 { failed() } else { built() };
        let r = execute(&dag, 2, false, &AtomicBool::new(false), &run, &mut quiet).unwrap();
        assert_eq!(words(&r), ["FAILED", "dep-failed", "dep-failed", "built"]);
        match &r[2].outcome {
            Outcome::DependencyFailed { dependency } => assert_eq!(dependency, "cell1"),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn a_skipped_dependency_skips_its_dependents_with_the_reason() {
        let mut dag = SimpleDag::default();
        let a = dag.push(vec![], Some("BUILD_EXCLUSIVE_ARCH"));
        dag.push(vec![a], None);
        let ran = AtomicUsize::new(0);
        let run = |_| {
            ran.fetch_add(1, Ordering::Relaxed);
            built()
        };
        let r = execute(&dag, 2, false, &AtomicBool::new(false), &run, &mut quiet).unwrap();
        assert_eq!(words(&r), ["skipped", "skipped"]);
        match &r[1].outcome {
            Outcome::Skipped { reason } => {
                assert_eq!(
                    reason,
                    "its dependency cell0 is skipped: BUILD_EXCLUSIVE_ARCH"
                )
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(ran.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn fail_fast_cancels_what_has_not_started() {
        let mut dag = SimpleDag::default();
        for _ in 0..6 {
            dag.push(vec![], None);
        }
        let run = |i: usize| if i == 0 { failed() } else { built() };
        let r = execute(&dag, 1, true, &AtomicBool::new(false), &run, &mut quiet).unwrap();
        assert_eq!(words(&r)[0], "FAILED");
        assert!(
            words(&r)[1..].iter().all(|w| *w == "cancelled"),
            "{:?}",
            words(&r)
        );
    }

    #[test]
    fn a_stop_interrupts_every_cell_not_started() {
        let mut dag = SimpleDag::default();
        for _ in 0..5 {
            dag.push(vec![], None);
        }
        let stop = AtomicBool::new(false);
        let run = |i: usize| {
            if i == 1 {
                stop.store(true, Ordering::Relaxed);
            }
            built()
        };
        let r = execute(&dag, 1, false, &stop, &run, &mut quiet).unwrap();
        assert_eq!(
            words(&r),
            [
                "built",
                "built",
                "interrupted",
                "interrupted",
                "interrupted"
            ]
        );
    }

    #[test]
    fn a_panicking_runner_fails_its_cell_and_the_run_ends() {
        let mut dag = SimpleDag::default();
        dag.push(vec![], None);
        dag.push(vec![], None);
        let run = |i: usize| {
            if i == 0 {
                panic!("boom");
            }
            built()
        };
        let r = execute(&dag, 2, false, &AtomicBool::new(false), &run, &mut quiet).unwrap();
        assert_eq!(words(&r), ["FAILED", "built"]);
        match &r[0].outcome {
            Outcome::Failed { message, .. } => assert!(message.contains("boom"), "{message}"),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn never_more_than_jobs_cells_in_flight() {
        let mut dag = SimpleDag::default();
        for _ in 0..24 {
            dag.push(vec![], None);
        }
        let now = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        // No sleep to make cells overlap: each cell waits (bounded) until three have been
        // in flight at once, which only a scheduler that runs three cells in parallel
        // reaches; from then on cells pass straight through.
        let three = (Mutex::new(0usize), std::sync::Condvar::new());
        let never_three = AtomicBool::new(false);
        let run = |_| {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(n, Ordering::SeqCst);
            let (most, changed) = &three;
            let mut most = most.lock().unwrap();
            *most = (*most).max(n);
            changed.notify_all();
            let (most, waited) = changed
                .wait_timeout_while(most, Duration::from_secs(300), |m| *m < 3)
                .unwrap();
            if waited.timed_out() {
                never_three.store(true, Ordering::SeqCst);
            }
            drop(most);
            now.fetch_sub(1, Ordering::SeqCst);
            built()
        };
        let mut most_running = 0;
        execute(&dag, 3, false, &AtomicBool::new(false), &run, &mut |e| {
            if let Event::Started { running, .. } = e {
                most_running = most_running.max(running.len());
            }
        })
        .unwrap();
        assert!(
            !never_three.load(Ordering::SeqCst),
            "three cells were never in flight at once"
        );
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        assert!(most_running <= 3);
    }

    #[test]
    fn a_diamond_waits_for_both_sides() {
        //   0
        //  1 2
        //   3
        let mut dag = SimpleDag::default();
        let a = dag.push(vec![], None);
        let b = dag.push(vec![a], None);
        let c = dag.push(vec![a], None);
        dag.push(vec![b, c], None);
        let done = Mutex::new(Vec::new());
        let run = |i: usize| {
            if i == 3 {
                let d = done.lock().unwrap();
                assert!(d.contains(&1) && d.contains(&2), "{d:?}");
            }
            done.lock().unwrap().push(i);
            built()
        };
        let r = execute(&dag, 4, false, &AtomicBool::new(false), &run, &mut quiet).unwrap();
        assert_eq!(words(&r), ["built"; 4]);
    }
}

//! The scheduler alone: plan-sized graphs of cells run with a runner that does no work, so
//! what is measured is the scheduler's own time and memory per cell.
//!
//!     cargo bench --bench scheduler            (50,000 cells; KMX_BENCH_CELLS=N for another size)
//!
//! The graph has the shape of a distribution-wide rebuild: packages of 10 cells (targets x
//! kernels), every package's cells depend on the same cells of the package before it
//! (BUILD_DEPENDS chains of 5), and one cell in 20 is excluded by a rule. It prints the
//! wall time per cell and the peak heap memory the run added, per cell, for the size asked and a tenth of it, so
//! that a reader sees whether both stay flat (linear in cells).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use kmx::matrix::cell::Outcome;
use kmx::matrix::scheduler::{self, SimpleDag};

fn graph(cells: usize) -> SimpleDag {
    let mut dag = SimpleDag::default();
    for i in 0..cells {
        let package = i / 10;
        let deps = if package % 5 == 0 {
            vec![]
        } else {
            vec![i - 10]
        };
        let skip = (i % 20 == 7).then_some("[exclusive] arch");
        dag.push(deps, skip);
    }
    dag
}

/// Counts the bytes allocated, now and at the peak: the memory the scheduler needs, free of
/// what the process held before (ru_maxrss keeps the peak of the process that exec'ed us).
struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let n = NOW.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(n, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn run(cells: usize) -> (f64, u64) {
    let dag = graph(cells);
    let before = NOW.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let run = |_| {
        let outcome = Outcome::Built {
            artifacts: Vec::new(),
            fresh: false,
            restored: false,
            warnings: Vec::new(),
        };
        (outcome, String::new())
    };
    let mut events = 0usize;
    let started = Instant::now();
    let results = scheduler::execute(&dag, 2, false, &AtomicBool::new(false), &run, &mut |_| {
        events += 1
    })
    .expect("scheduler runs");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(results.len(), cells);
    assert!(events >= cells);
    drop(results);
    (secs, (PEAK.load(Ordering::Relaxed) - before) as u64)
}

fn main() {
    let cells: usize = std::env::var("KMX_BENCH_CELLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    println!("  cells       wall   per cell   peak memory   per cell");
    // The small size first: its peak memory is then not hidden by the large one's.
    for n in [cells / 10, cells] {
        let (secs, bytes) = run(n);
        println!(
            "{n:>7}  {secs:>7.3} s  {:>6.2} µs  {:>8.1} MiB  {:>7} B",
            secs * 1e6 / n as f64,
            bytes as f64 / (1 << 20) as f64,
            bytes / n as u64
        );
    }
}

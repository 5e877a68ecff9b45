//! How to run a plan: the options of one run, the same for the scheduler and every cell.
//! Below the cell runner and the pipeline, which both read them.

use std::path::PathBuf;
use std::time::Duration;

use crate::state::cache::Cache;

/// How to run a plan: the knobs `kmx build` exposes, for the scheduler and every cell.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cells at once and make slots in all; `None`: the number of CPUs.
    pub jobs: Option<usize>,
    /// Time limit of each step of a cell.
    pub timeout: Duration,
    /// Start no cell after one fails.
    pub fail_fast: bool,
    /// Compiler launcher (`--launcher`), overriding the toolchain's.
    pub launcher: Option<Vec<String>>,
    /// The build cache to reuse and fill; `None` builds without it.
    pub cache: Option<Cache>,
    /// Rebuild cells even when they are fresh.
    pub force: bool,
    /// Build steps see the host writable and the network, as under DKMS
    /// (`--sandbox open`); otherwise they are confined ([`crate::sandbox::Policy::strict`]).
    pub open_sandbox: bool,
    /// Keep each built cell's build tree in `<out>/.work` (`--keep-build-dir`); otherwise
    /// only a failed cell's is kept.
    pub keep_build_dir: bool,
    /// Where the durations of earlier builds are kept, for the progress's estimate of the
    /// time left ([`crate::state::durations`]); `None`: no estimate.
    pub durations: Option<PathBuf>,
    /// kmx's default compiler cache, when the plan's toolchains got it
    /// ([`crate::config::ccache`]): its settings replace the caller's `CCACHE_*`.
    pub compiler_cache: Option<crate::config::ccache::CompilerCache>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            jobs: None,
            timeout: Duration::from_secs(1800),
            fail_fast: false,
            launcher: None,
            cache: None,
            force: false,
            open_sandbox: false,
            keep_build_dir: false,
            durations: None,
            compiler_cache: None,
        }
    }
}

impl Options {
    /// The number of cells (and own jobserver slots) a run uses.
    pub fn jobs(&self) -> usize {
        self.jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1)
    }
}

//! The command line: clap derive only, no I/O. `main` turns these raw flags into work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Build Linux kernel modules for many targets and kernels at once, and prove each one
/// loads on the kernel it was built for.
#[derive(Debug, Parser)]
#[command(name = "kmx", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Extra configuration directory holding targets/ and toolchains/ (overrides the
    /// shipped profiles and ~/.config/kmx).
    #[arg(long, global = true, env = "KMX_CONFIG_DIR", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// kmx's home: fetched kernel trees, build outputs, state
    /// [default: ~/.local/share/kmx].
    #[arg(long, global = true, env = "KMX_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Build module sources for every target and kernel tree, in parallel, and check every
    /// produced .ko (ELF identity, vermagic) before it counts as built.
    Build(BuildArgs),
    /// Fetch and list kernel build trees.
    #[command(subcommand)]
    Kernels(KernelsCmd),
    /// List target profiles with their toolchain and kernel trees.
    Targets {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check that targets are usable: toolchain found, kernel trees healthy. Exits 1 when a
    /// selected target is unusable.
    Doctor {
        /// Targets to check (repeatable or comma-separated) [default: i386, amd64, arm64, armhf].
        #[arg(long, short)]
        target: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KernelsCmd {
    /// Download Debian's prepared kernel build trees (linux-headers) for targets, with a
    /// private apt state: the system's dpkg configuration is never changed.
    Fetch {
        /// Targets to fetch for (repeatable or comma-separated) [default: i386, amd64, arm64, armhf].
        #[arg(long, short)]
        target: Vec<String>,
        /// Pin the Debian kernel ABI, e.g. 6.1.0-50 [default: the newest one available for
        /// every requested target].
        #[arg(long)]
        abi: Option<String>,
        /// Debian mirror to fetch from.
        #[arg(long, env = "KMX_DEBIAN_MIRROR", default_value = crate::kernel::fetch::DEFAULT_MIRROR)]
        mirror: String,
        /// Debian suite to fetch from.
        #[arg(long, default_value = crate::kernel::fetch::DEFAULT_SUITE)]
        suite: String,
        /// Update the package lists even if they are less than a day old.
        #[arg(long)]
        refresh: bool,
    },
    /// List every known kernel tree with its target, release and vermagic.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Module source directories, each with a dkms.conf or a kmx.toml.
    #[arg(required = true, value_name = "SOURCE")]
    pub sources: Vec<PathBuf>,
    /// Targets to build for (repeatable or comma-separated) [default: every usable one of
    /// i386, amd64, arm64, armhf].
    #[arg(long, short)]
    pub target: Vec<String>,
    /// Only build for these kernel releases (repeatable), e.g. 6.1.0-50-arm64.
    #[arg(long, short)]
    pub kernel: Vec<String>,
    /// Output directory: artifacts go to OUT/<module>/<version>/<kernel>/<target>/.
    #[arg(long, short, default_value = "kmx-out", value_name = "OUT")]
    pub out: PathBuf,
    /// Parallel jobs: the make jobserver's slots, shared by every cell [default: number of
    /// CPUs]. With a remote launcher (distcc) it may exceed the local cores.
    #[arg(long, short, env = "KMX_JOBS")]
    pub jobs: Option<usize>,
    /// Kill a build step (make, PRE_BUILD, ...) that runs longer than this many seconds.
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    pub timeout: u64,
    /// Start no new cell after the first failure (running cells finish).
    #[arg(long)]
    pub fail_fast: bool,
    /// Print the plan (cells, commands, directories) and build nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON on stdout (progress and summary still go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Compiler launcher put before the compiler, overriding the toolchains' (e.g. "ccache").
    #[arg(long, value_name = "WORDS")]
    pub launcher: Option<String>,
    /// Rebuild every cell, even those whose inputs did not change.
    #[arg(long)]
    pub force: bool,
    /// Neither use nor fill kmx's build cache (cells fresh in OUT are still reused unless
    /// --force).
    #[arg(long)]
    pub no_cache: bool,
    /// Bound on the build cache's size; least recently used cells go first.
    #[arg(
        long,
        env = "KMX_CACHE_SIZE",
        default_value = "2G",
        value_name = "SIZE"
    )]
    pub cache_size: String,
}

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
    /// Boot each target's real kernel under QEMU and load modules in it: the kernel's own
    /// verdict (loaded, refused with its message, crashed in init). Needs
    /// `kmx kernels fetch --with-image`. Exits 0 when every module loaded, 1 when one was
    /// refused or crashed, 4 when a kernel could not be booted (and none was refused).
    Smoke {
        /// .ko files, or directories searched recursively for them.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Targets to boot (repeatable or comma-separated): each module goes to the one whose
        /// kernel release matches its vermagic, or to the only one given [default: every
        /// known target].
        #[arg(long, short)]
        target: Vec<String>,
        /// Give up on a boot after this many seconds.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
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
        /// Also fetch each tree's kernel image, its module tree and a static busybox, which
        /// `kmx smoke` boots under QEMU (about 45-70 MB per target).
        #[arg(long)]
        with_image: bool,
    },
    /// List every known kernel tree with its target, release and vermagic.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

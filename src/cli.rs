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

/// How long `kmx smoke` and `kmx build --smoke` wait for a boot by default: an emulated
/// ARM kernel on a busy 2-core machine needs more than a minute.
pub const SMOKE_TIMEOUT_SECS: u64 = 120;

#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Extra configuration directory holding targets/ and toolchains/ (overrides the
    /// shipped profiles and ~/.config/kmx).
    #[arg(long, global = true, env = "KMX_CONFIG_DIR", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// kmx's home: fetched kernel trees, build outputs, state
    /// [default: ~/.local/share/kmx, or /var/lib/kmx as root].
    #[arg(long, global = true, env = "KMX_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// The lifecycle store: registered sources, built cells, install records
    /// [default: HOME/state].
    #[arg(long, global = true, env = "KMX_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Fail at once instead of waiting when another kmx holds the state store's lock.
    #[arg(long, global = true)]
    pub no_wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Build module sources for every target and kernel tree, in parallel, and check every
    /// produced .ko (ELF identity, vermagic) before it counts as built.
    Build(BuildArgs),
    /// Inspect or empty the build cache of finished cells.
    #[command(subcommand)]
    Cache(CacheCmd),
    /// Work with build reports (OUT/report.json).
    #[command(subcommand)]
    Report(ReportCmd),
    /// Check a built cell's provenance record (provenance.json): rebuild it from the same
    /// inputs and compare the bytes.
    #[command(subcommand)]
    Provenance(ProvenanceCmd),
    /// Check, without booting anything, that modules will load on a target's kernel, and if
    /// not, exactly why: ELF identity, vermagic (the kernel's own rule), every modversions
    /// CRC against the tree's Module.symvers, unresolved symbols, depends=, and the
    /// signature against the kernel's own certificates.
    /// Exits 0 only when no module fails.
    #[command(
        long_about = None,
        after_help = "Kernel tree: --kdir DIR, else --kernel RELEASE among the target's trees, else \
the tree whose release equals the module's vermagic release, else the target's only tree. \
Without any tree (or with --no-kernel) only the ELF identity is checked, and the \
vermagic, modversions and signature are shown.\n\n\
Symbols the kernel does not export resolve against the other modules given (e.g. a whole \
lib/modules/RELEASE directory); their CRCs are known from a build's Module.symvers \
(found next to the modules in the directories given, or passed with --symvers).\n\n\
Signatures are checked against the certificates built into the kernel (read from the image \
`kmx kernels fetch --with-image` brought, cached under KMX_HOME/cache/certs) and any --cert; \
where kmx has neither, a signed module warns that its signature was not checked.\n\n\
A pass means the kernel's loader accepts the module, a warning that it loads it with a \
caveat (tainted, forced, or only on some CPUs); whether the module's init succeeds only \
loading it can tell (`kmx smoke`).\n\n\
Exit codes: 0 no module fails, 1 a module fails, 2 bad command line or no modules found, \
3 the kernel tree is missing or unreadable."
    )]
    Verify(VerifyArgs),
    /// Fetch, list and remove kernel build trees.
    #[command(subcommand)]
    Kernels(KernelsCmd),
    /// List target profiles with their toolchain and kernel trees.
    Targets {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Register a module source (a directory with a dkms.conf or kmx.toml): it is copied
    /// into the state store under the name and version DKMS would give it (--module-name
    /// and --module-version, DKMS's -m and -v; else, for a directory NAME-VERSION, its
    /// version; else PACKAGE_NAME and PACKAGE_VERSION). Adding again refreshes the copy;
    /// builds of the old copy then show as stale.
    Add {
        /// The module source directory.
        source: PathBuf,
        /// How far its dkms.conf is confined while it is read (see `kmx build --sandbox`).
        #[arg(long, value_enum, default_value_t = SandboxMode::Strict, value_name = "MODE")]
        sandbox: SandboxMode,
        #[command(flatten)]
        given: GivenArgs,
        /// Also print what was registered as one JSON object on stdout
        /// (docs/schemas/kmx.add-1.json); the messages stay on stderr.
        #[arg(long)]
        json: bool,
    },
    /// Build a registered module for one target and kernel (with --root IMG and no --kernel:
    /// each of the image's kernels) if needed, then install its .ko
    /// files under ROOT/lib/modules/RELEASE (compressed and signed as that kernel wants)
    /// and run depmod.
    Install(InstallArgs),
    /// Remove an installed module from a root, restoring the kernel modules it displaced.
    Uninstall(UninstallArgs),
    /// Unregister a module version: uninstall it from every root, drop its builds and its
    /// source.
    Remove {
        /// The module, as MODULE or MODULE/VERSION.
        module: String,
        /// Every version of MODULE (needed when several are registered and none is named).
        #[arg(long)]
        all: bool,
        /// Do not run depmod after uninstalling.
        #[arg(long)]
        no_depmod: bool,
    },
    /// One line per module, version, target and kernel: added, built, installed (where),
    /// stale (source changed since the build), broken (files missing).
    Status {
        /// Only this module, as MODULE or MODULE/VERSION.
        #[arg(conflicts_with = "check")]
        module: Option<String>,
        /// Only this kernel release.
        #[arg(long, short, conflicts_with = "check")]
        kernel: Option<String>,
        /// Only this target.
        #[arg(long, short, value_parser = TargetName, hide_possible_values = true, conflicts_with = "check")]
        target: Option<String>,
        /// `table`, or `dkms`: DKMS's own lines (`hello/1.0, 6.1.0-50-arm64, aarch64:
        /// installed`), with the target's DKMS arch, for scripts written for `dkms status`.
        #[arg(long, value_enum, default_value_t = StatusFormat::Table, conflicts_with_all = ["check", "json"])]
        format: StatusFormat,
        /// Print JSON instead of a table.
        #[arg(long, conflicts_with = "check")]
        json: bool,
        /// Check the state store against the disk instead: every record's files are there
        /// with their recorded SHA-256, no temporary file of a killed kmx is left in the
        /// store or an image root. Exits 0 when consistent, 1 with one line per problem.
        #[arg(long)]
        check: bool,
    },
    /// Build and install every registered AUTOINSTALL module for a kernel release, for
    /// every target whose trees provide it (what the kernel hooks in /etc/kernel run).
    /// One module failing does not stop the others; exits 1 if any failed.
    Autoinstall(AutoinstallArgs),
    /// Undo builds of a registered module, like `dkms unbuild`: its installs of those builds
    /// are uninstalled first (from every root), then the built cells are dropped; the source
    /// stays registered. Without --kernel or --all: the running kernel's, as DKMS does.
    Unbuild {
        /// The module, as MODULE or MODULE/VERSION (default: its newest registered version).
        module: String,
        /// Only this kernel release [default: the running kernel's, `uname -r`].
        #[arg(long, short, conflicts_with = "all")]
        kernel: Option<String>,
        /// Only this target.
        #[arg(long, short, value_parser = TargetName, hide_possible_values = true)]
        target: Option<String>,
        /// Every kernel the module is built for.
        #[arg(long)]
        all: bool,
        /// Do not run depmod after uninstalling.
        #[arg(long)]
        no_depmod: bool,
    },
    /// Module signing keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Export built modules and their records as one tar archive, for binary-only
    /// distribution (like DKMS's mktarball).
    Tarball {
        /// Only this module, as MODULE or MODULE/VERSION [default: every built module].
        module: Option<String>,
        /// Only these targets (repeatable or comma-separated) [default: all].
        #[arg(long, short, value_parser = TargetName, hide_possible_values = true, value_delimiter = ',')]
        target: Vec<String>,
        /// The archive to write (gzip-compressed when it ends in .gz or .tgz).
        #[arg(long, short, value_name = "FILE")]
        output: PathBuf,
    },
    /// Write built modules as Debian binary packages, one per module, kernel release and
    /// target (`<module>-modules-<release>_<version>_<arch>.deb`): the modules at their
    /// DEST_MODULE_LOCATION, compressed and signed as `kmx install` does, depending on the
    /// kernel's linux-image package, with maintainer scripts that run depmod.
    Package(PackageArgs),
    /// Import an archive written by `kmx tarball` into the state store as built modules
    /// (like DKMS's ldtarball); `kmx install` then installs them without building.
    LoadTarball {
        /// The archive.
        file: PathBuf,
    },
    /// Check that targets are usable: toolchain found, kernel trees healthy. Exits 1 when a
    /// selected target is unusable.
    Doctor {
        /// Targets to check (repeatable or comma-separated) [default: i386, amd64, arm64, armhf,
        /// rpi].
        #[arg(long, short, value_parser = TargetName, hide_possible_values = true)]
        target: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Whose installed kernels (`lib/modules/<release>/build`) to check too: this
        /// machine's, or an image root's.
        #[arg(long, default_value = "/", value_name = "DIR")]
        root: PathBuf,
    },
    /// Print a shell completion script for kmx on stdout, e.g.
    /// `kmx completions bash > /etc/bash_completion.d/kmx`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write kmx's man pages (kmx.1, and kmx-build.1, kmx-kernels-fetch.1, ... for every
    /// subcommand) into a directory.
    Man {
        /// The directory to write them into (created if missing).
        #[arg(long, short, value_name = "DIR")]
        out: PathBuf,
    },
    /// DKMS's command line, answered by kmx: `kmx dkms ACTION` (add, build, install,
    /// uninstall, unbuild, remove, status, autoinstall) with `-m/-v/-k/-a/--all`, DKMS 3.0's exit codes and
    /// `dkms status` lines, for the kernels installed in the root. `/usr/sbin/dkms` of the
    /// kmx-dkms package runs it, so that `*-dkms` packages (dh_dkms) install through kmx.
    #[command(
        disable_version_flag = true,
        after_help = "Exit codes as DKMS 3.0's: 0 done, 1 kernel headers missing, 2 bad command line \
or no source directory, 3 not added / already added / already built, 5 already installed, \
6 no lib/modules/RELEASE to install into, 8 bad dkms.conf, 10 build failed, 11 autoinstall: a \
module failed, 77 BUILD_EXCLUSIVE rules the kernel out.\n\n\
Without -k, the running kernel (uname -r). The root is / or KMX_ROOT."
    )]
    Dkms(DkmsArgs),
    /// Which kernels each built module loads on: for .ko files, a build output or a
    /// registered module's builds, every kernel of the module's target that kmx knows, with
    /// its verdict (loads; loads with a warning, e.g. another release whose symbol CRCs all
    /// match; refused, and why: which symbol's CRC differs, which symbol is missing).
    #[command(
        after_help = "A module's target is the one --target names, else its build cell's \
(<release>/<target>/ in a build output or the state store), else the first whose trees include \
the release it was built for. The verdict follows the kernel's loader (kmx verify's checks \
without the signature, which is the machine's policy: `kmx verify --sig-enforce`); whether \
the module's init succeeds only loading it can tell (`kmx smoke`).\n\n\
Exit codes: 0 the matrix was made, 2 bad command line or no modules, 3 no kernel tree."
    )]
    Compat {
        /// .ko files, directories searched for them (a build output), or a registered
        /// MODULE[/VERSION] (its builds in the state store).
        #[arg(required = true, value_name = "PATH|MODULE")]
        inputs: Vec<String>,
        /// The target(s) whose kernels judge the modules (repeatable or comma-separated).
        #[arg(long, short)]
        target: Vec<String>,
        /// Print JSON (schema kmx.compat/1) instead of a table.
        #[arg(long)]
        json: bool,
        /// Every reason of a refusal, not only the kernel's first.
        #[arg(long, short)]
        verbose: bool,
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
        #[arg(long, short, value_parser = TargetName, hide_possible_values = true)]
        target: Vec<String>,
        /// Boot this kernel release (of the targets given) for every module, whatever
        /// release it was built for: the real kernel's verdict on a `kmx compat` cell.
        #[arg(long, short, value_name = "RELEASE")]
        kernel: Option<String>,
        /// Give up on a boot after this many seconds.
        #[arg(long, default_value_t = SMOKE_TIMEOUT_SECS, value_name = "SECS")]
        timeout: u64,
        /// Also load this .ko (repeatable) in the same boot, after the others and after
        /// turning on module.sig_enforce, as a kernel booted with module.sig_enforce=1 would
        /// judge it.
        #[arg(long, value_name = "PATH")]
        enforced: Vec<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `kmx package`.
#[derive(Debug, Args)]
pub struct PackageArgs {
    /// Only this module, as MODULE or MODULE/VERSION [default: every built module].
    pub module: Option<String>,
    /// The package format.
    #[arg(long, value_enum, default_value_t = PackageFormat::Deb)]
    pub format: PackageFormat,
    /// Only these targets (repeatable or comma-separated) [default: all].
    #[arg(long, short, value_parser = TargetName, hide_possible_values = true, value_delimiter = ',')]
    pub target: Vec<String>,
    /// Only these kernel releases (repeatable or comma-separated) [default: all].
    #[arg(long, short, value_delimiter = ',', value_name = "RELEASE")]
    pub kernel: Vec<String>,
    /// The directory to write the packages into (created if missing).
    #[arg(long, short, visible_alias = "out", value_name = "DIR")]
    pub output: PathBuf,
    /// The packages' Debian architecture [default: the target profile's `[debian] arch`].
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    /// The package the modules depend on; `{release}` is the kernel release (for kernels
    /// not packaged by Debian, e.g. a board vendor's).
    #[arg(long, default_value = "linux-image-{release}", value_name = "PACKAGE")]
    pub depends: String,
    /// The packages' Maintainer field.
    #[arg(
        long,
        default_value = "kmx <root@localhost>",
        value_name = "MAINTAINER"
    )]
    pub maintainer: String,
    #[command(flatten)]
    pub sign: SignArgs,
    /// Print the packages written as one JSON object on stdout
    /// (docs/schemas/kmx.package-1.json) instead of their paths.
    #[arg(long)]
    pub json: bool,
}

/// `kmx package --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PackageFormat {
    /// Debian binary packages (.deb), built with dpkg-deb.
    Deb,
}

#[derive(Debug, Subcommand)]
pub enum KernelsCmd {
    /// Download prepared kernel build trees (linux-headers packages) for targets from the
    /// apt archives their profiles name ([[kernels.source]]: bookworm, bookworm-security,
    /// bookworm-backports, and trixie and trixie-security for amd64, arm64, armhf and rpi), for
    /// each kernel series the newest ABI any of a target's sources has whose packages download
    /// (an ABI the archive does not serve is skipped, and said; older ABIs stay until
    /// pruned), with a private apt state: the system's dpkg configuration is never changed. A
    /// tree whose compiler this machine lacks (trixie's gcc-14) gets a toolchain root
    /// assembled from its distribution's packages in HOME/toolchains (about 70 MB of
    /// downloads per compiler), in which its modules are built.
    Fetch(FetchArgs),
    /// List every known kernel tree with its target, release, vermagic and source: the
    /// fetched ones, the ones profiles list, and the kernels installed on the machine (or in
    /// --root), which kmx builds for when asked for by release (`-k`, the kernel hooks).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Whose installed kernels (`lib/modules/<release>/build`) to list: this machine's,
        /// or an image root's.
        #[arg(long, default_value = "/", value_name = "DIR")]
        root: PathBuf,
    },
    /// Forget fetched trees of a kernel release and delete their files (a tree another
    /// target still uses stays).
    Remove {
        /// The kernel release, as `kmx kernels list` shows it (e.g. 6.1.0-50-arm64).
        release: String,
        /// Only this target's entry.
        #[arg(long, short, value_parser = TargetName, hide_possible_values = true)]
        target: Option<String>,
    },
    /// Remove every fetched tree older than the newest ABI of its kernel series (6.1,
    /// 6.12+deb12, ...), for each target.
    Prune {
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Targets to fetch for (repeatable or comma-separated) [default: i386, amd64, arm64,
    /// armhf, rpi].
    #[arg(long, short, value_parser = TargetName, hide_possible_values = true)]
    pub target: Vec<String>,
    /// Pin the kernel ABI, e.g. 6.1.0-50 or 6.12.95+deb12, taken from whichever of the
    /// target's sources carries it [default: the newest of each kernel series].
    #[arg(long)]
    pub abi: Option<String>,
    /// Debian mirror for sources without their own `url`.
    #[arg(long, env = "KMX_DEBIAN_MIRROR", value_name = "URL")]
    pub mirror: Option<String>,
    /// Fetch from this Debian suite only (e.g. bookworm-backports), instead of the
    /// targets' configured sources.
    #[arg(long)]
    pub suite: Option<String>,
    /// Update the package lists even if they are less than a day old.
    #[arg(long)]
    pub refresh: bool,
    /// Also fetch each tree's kernel image, its module tree (and device trees) and a
    /// static busybox, which `kmx smoke` boots under QEMU (about 45-70 MB per tree).
    #[arg(long)]
    pub with_image: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Make a module signing key pair, MOK style: RSA 2048, codeSigning extended key usage,
    /// self-signed X.509 certificate (DER, `mok.der`) and PEM private key (`mok.key`), with
    /// openssl. `kmx install` signs with it when the kernel checks signatures.
    Generate {
        /// Where to write mok.key and mok.der [default: HOME/keys].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The certificate's common name (what `modinfo -F signer` shows).
        #[arg(long, default_value = "kmx module signing key")]
        common_name: String,
        /// Replace an existing key pair.
        #[arg(long)]
        force: bool,
    },
}

/// The signing key for installs.
#[derive(Debug, Clone, Default, Args)]
pub struct SignArgs {
    /// PEM private key to sign modules with [default: HOME/keys/mok.key, when present].
    #[arg(
        long,
        env = "KMX_SIGN_KEY",
        value_name = "FILE",
        requires = "sign_cert"
    )]
    pub sign_key: Option<PathBuf>,
    /// X.509 certificate of --sign-key (DER or PEM) [default: HOME/keys/mok.der].
    #[arg(
        long,
        env = "KMX_SIGN_CERT",
        value_name = "FILE",
        requires = "sign_key"
    )]
    pub sign_cert: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The module, as MODULE or MODULE/VERSION (default: its newest registered version).
    pub module: String,
    /// The target the module is built for [default: the one whose trees provide --kernel's
    /// release; with several, the one among the default targets].
    #[arg(long, short, value_parser = TargetName, hide_possible_values = true, required_unless_present = "kernel")]
    pub target: Option<String>,
    /// The kernel release to install for, e.g. 6.1.0-50-arm64 [default, with --root IMG:
    /// every kernel IMG has in lib/modules that one of the target's trees provides; with
    /// the root /, it must be named].
    #[arg(long, short)]
    pub kernel: Option<String>,
    /// The root to install into: `/`, or an image root being assembled.
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub root: PathBuf,
    /// Install for --kernel even if the image has no lib/modules/<release> yet (kmx never
    /// creates it otherwise).
    #[arg(long, requires = "kernel")]
    pub create: bool,
    /// Do not run `depmod -b ROOT RELEASE` afterwards.
    #[arg(long)]
    pub no_depmod: bool,
    #[command(flatten)]
    pub sign: SignArgs,
    /// Parallel jobs for a build this needs [default: number of CPUs].
    #[arg(long, short, env = "KMX_JOBS", value_parser = parse_jobs)]
    pub jobs: Option<usize>,
    /// Also print what was installed (and skipped) as one JSON object on stdout
    /// (docs/schemas/kmx.install-1.json); the messages stay on stderr.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AutoinstallArgs {
    /// The kernel release that arrived, e.g. 6.1.0-51-arm64 [default: the running kernel's
    /// (`uname -r`), as `dkms autoinstall` does; with --root IMG: every kernel IMG has in
    /// lib/modules].
    #[arg(long, short)]
    pub kernel: Option<String>,
    /// The root to install into.
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub root: PathBuf,
    /// Do not run depmod afterwards.
    #[arg(long)]
    pub no_depmod: bool,
    #[command(flatten)]
    pub sign: SignArgs,
    /// Parallel jobs for the builds [default: number of CPUs].
    #[arg(long, short, env = "KMX_JOBS", value_parser = parse_jobs)]
    pub jobs: Option<usize>,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// The module, as MODULE or MODULE/VERSION (default: the one installed version).
    #[arg(required_unless_present = "all")]
    pub module: Option<String>,
    /// The target it was installed for [default: whichever it was installed for].
    #[arg(long, short, value_parser = TargetName, hide_possible_values = true)]
    pub target: Option<String>,
    /// Uninstall every module kmx installed for this kernel in ROOT (narrowed by MODULE and
    /// --target when given): what the kernel's prerm hook runs.
    #[arg(long)]
    pub all: bool,
    /// The kernel release it was installed for [default: the running kernel's (`uname -r`),
    /// as `dkms uninstall` does; with --root IMG: every kernel it is installed for there, as
    /// `kmx install --root IMG` installs for every kernel of the image].
    #[arg(long, short)]
    pub kernel: Option<String>,
    /// The root it was installed into.
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub root: PathBuf,
    /// Do not run depmod afterwards.
    #[arg(long)]
    pub no_depmod: bool,
}

/// `kmx dkms`: DKMS's own flags.
#[derive(Debug, Args)]
pub struct DkmsArgs {
    /// The action (add, build, install, uninstall, unbuild, remove, status, autoinstall),
    /// and MODULE/VERSION or a source directory, in any order.
    #[arg(value_name = "ACTION|MODULE/VERSION|DIR")]
    pub words: Vec<String>,
    /// The module (or MODULE/VERSION).
    #[arg(short = 'm', long = "module", value_name = "MODULE")]
    pub module: Option<String>,
    /// The module's version.
    #[arg(short = 'v', long = "module-version", value_name = "VERSION")]
    pub version: Option<String>,
    /// A kernel release (repeatable), or RELEASE/ARCH [default: the running kernel].
    #[arg(short = 'k', long = "kernelver", value_name = "KERNEL")]
    pub kernel: Vec<String>,
    /// The architecture of the -k of the same rank (DKMS's names: x86_64, aarch64, ...).
    #[arg(short = 'a', long = "arch", value_name = "ARCH")]
    pub arch: Vec<String>,
    /// Every kernel (remove, unbuild).
    #[arg(long)]
    pub all: bool,
    /// Build or install again even if it already is.
    #[arg(long)]
    pub force: bool,
    /// Do not run depmod.
    #[arg(long)]
    pub no_depmod: bool,
    /// Accepted for DKMS's scripts; kmx prints little anyway.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Parallel jobs for a build.
    #[arg(short = 'j', value_parser = parse_jobs)]
    pub jobs: Option<usize>,
    /// Where `add -m M -v V` finds the source, as M-V [default: ROOT/usr/src].
    #[arg(long, value_name = "DIR")]
    pub sourcetree: Option<PathBuf>,
    /// The root whose kernels are built for and installed into.
    #[arg(long, env = "KMX_ROOT", default_value = "/", value_name = "DIR")]
    pub root: PathBuf,
    /// Print `dkms-3.0.10`, the DKMS release this follows.
    #[arg(long = "version")]
    pub version_flag: bool,
}

/// The name and version a module is built with, as DKMS's `dkms add -m NAME -v VERSION`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GivenArgs {
    /// Build and register the module as NAME (DKMS's -m), whatever PACKAGE_NAME says.
    #[arg(long, value_name = "NAME")]
    pub module_name: Option<String>,
    /// Build and register the module as VERSION (DKMS's -v), whatever PACKAGE_VERSION says
    /// (Debian's packages may leave a placeholder such as #MODULES_VERSION# there).
    #[arg(long, value_name = "VERSION")]
    pub module_version: Option<String>,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub given: GivenArgs,
    /// Module source directories, each with a dkms.conf or a kmx.toml; or modules
    /// registered with `kmx add`, as NAME or NAME/VERSION (built into the state store for
    /// `install`, `tarball` and `status`, like `dkms build`).
    #[arg(required = true, value_name = "SOURCE")]
    pub sources: Vec<PathBuf>,
    /// Targets to build for (repeatable or comma-separated) [default: every usable one of
    /// i386, amd64, arm64, armhf, rpi].
    #[arg(long, short, value_parser = TargetName, hide_possible_values = true)]
    pub target: Vec<String>,
    /// Only build for these kernel releases (repeatable), e.g. 6.1.0-50-arm64.
    #[arg(long, short)]
    pub kernel: Vec<String>,
    /// Output directory: artifacts go to OUT/<module>/<version>/<kernel>/<target>/
    /// [default: kmx-out; registered modules: the state store].
    #[arg(long, short, visible_alias = "output", value_name = "OUT")]
    pub out: Option<PathBuf>,
    /// Parallel jobs: the make jobserver's slots, shared by every cell [default: number of
    /// CPUs]. With a remote launcher (distcc) it may exceed the local cores.
    #[arg(long, short, env = "KMX_JOBS", value_parser = parse_jobs)]
    pub jobs: Option<usize>,
    /// Kill a build step (make, PRE_BUILD, ...) that runs longer than this many seconds.
    #[arg(long, default_value_t = 1800, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Start no new cell after the first failure (running cells finish).
    #[arg(long)]
    pub fail_fast: bool,
    /// Print the plan (cells, commands, directories) and build nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON on stdout (progress and summary still go to stderr).
    #[arg(long, conflicts_with = "message_format")]
    pub json: bool,
    /// How each finished cell is reported: `human` (lines on stderr), or `json`, cargo's
    /// convention: one JSON object per line on stdout as each cell finishes (`"reason":
    /// "cell-finished"`), then `"reason": "build-finished"` with the totals.
    #[arg(long, value_enum, default_value_t = MessageFormat::Human, value_name = "FMT")]
    pub message_format: MessageFormat,
    /// No progress lines and no table, as cargo's -q: failures and the summary only.
    #[arg(long, short, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Also print each cell's make command line as it starts, as cargo's -v prints rustc's;
    /// with --dry-run, each cell's sandbox command (bwrap's words, without its seccomp filter).
    #[arg(long, short)]
    pub verbose: bool,
    /// Compiler launcher put before the compiler, overriding the toolchains' (e.g. "ccache").
    #[arg(long, value_name = "WORDS", value_parser = words)]
    pub launcher: Option<Words>,
    /// After building, boot each target's real kernel under QEMU and load the cell's
    /// modules (see `kmx smoke`); the report carries each module's verdict. Needs trees
    /// fetched with `kmx kernels fetch --with-image`.
    #[arg(long)]
    pub smoke: bool,
    /// With --smoke: give up on a boot after this many seconds.
    #[arg(long, default_value_t = SMOKE_TIMEOUT_SECS, value_name = "SECS")]
    pub smoke_timeout: u64,
    /// Rebuild every cell, even those whose inputs did not change.
    #[arg(long)]
    pub force: bool,
    /// How far dkms.conf and the build steps (PATCH, PRE_BUILD, make, POST_BUILD) are
    /// confined. strict: no capabilities, the host read-only, /tmp and /run private, no
    /// network (kept with distcc, icecc or sccache), no other process visible, secrets
    /// hidden, every process ended with its step. open: the host writable, its network and
    /// processes, as under DKMS. Either way DKMS's directories are the cell's own.
    #[arg(long, value_enum, default_value_t = SandboxMode::Strict, value_name = "MODE")]
    pub sandbox: SandboxMode,
    /// Keep each cell's build tree (OUT/.work/<cell>/build) after a successful build; a
    /// failed cell's is always kept, and named in the summary.
    #[arg(long)]
    pub keep_build_dir: bool,
    /// Neither use nor fill kmx's build cache (cells fresh in OUT are still reused unless
    /// --force).
    #[arg(long)]
    pub no_cache: bool,
    /// Compile without kmx's compiler cache (ccache in depend mode, used by default
    /// where it is installed, before the compilers of toolchains that name no launcher; a
    /// toolchain profile's `compiler_cache = false` turns it off for that toolchain).
    #[arg(long, env = "KMX_NO_COMPILER_CACHE", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_compiler_cache: bool,
    /// Build only share I of N of the matrix (e.g. 2/3), for fanning a build out over CI
    /// machines; every machine computes the same split. Combine the reports with
    /// `kmx report merge`.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// A previous report (report.json) whose build times balance the shards [default: the
    /// size of each module's source].
    #[arg(long, value_name = "REPORT", requires = "shard")]
    pub costs: Option<PathBuf>,
    /// Bound on the build cache's size; least recently used cells go first.
    #[arg(
        long,
        env = "KMX_CACHE_SIZE",
        default_value = "2G",
        value_name = "SIZE",
        value_parser = size
    )]
    pub cache_size: u64,
}

#[derive(Debug, Subcommand)]
pub enum CacheCmd {
    /// Entries and size of the build cache.
    Stats {
        /// Print JSON instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// Remove cache entries: all of them, or the least recently used until the cache fits
    /// --max-size.
    Clean {
        /// Keep the most recently used entries up to this size (e.g. 500M).
        #[arg(long, value_name = "SIZE", value_parser = size)]
        max_size: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReportCmd {
    /// Combine the reports of the shards of one build (`kmx build --shard I/N`) into one
    /// summary and one exit status. Fails if the shards do not cover the plan exactly once.
    Merge {
        /// The report.json of every shard.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        /// Print the merged report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProvenanceCmd {
    /// Rebuild each recorded cell from scratch (no cache) with this machine's source, kernel
    /// tree and compiler, after checking that they are the recorded inputs, and say whether
    /// every module has the recorded sha256. Where the recorded module is still beside the
    /// record, a difference is shown by ELF section and string (a date or a time is named).
    /// Exits 0 when every cell is reproduced, 1 when one differs or does not build, 2 when
    /// this machine's inputs are not the recorded ones.
    Check {
        /// provenance.json files (in OUT/<module>/<version>/<kernel>/<target>/).
        #[arg(required = true)]
        records: Vec<PathBuf>,
        /// The module's source (and those of its BUILD_DEPENDS) [default: the directory the
        /// record names].
        #[arg(long = "source", value_name = "DIR")]
        sources: Vec<PathBuf>,
        /// Where to rebuild [default: a temporary directory, removed afterwards].
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Module files (.ko, .ko.xz, .ko.zst, .ko.gz), or directories searched recursively for
    /// them (e.g. an extracted lib/modules/RELEASE; symlinked directories are not followed).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// The target the modules are for: its ELF identity and kernel trees [default: each
    /// module's own: the target its build record (provenance.json, beside the modules
    /// `kmx build` writes) names, else the one whose trees have the module's release and
    /// whose compiler makes its ELF identity].
    #[arg(long, short, value_parser = TargetName, hide_possible_values = true)]
    pub target: Option<String>,
    /// Check against the target's tree with this kernel release, e.g. 6.1.0-50-arm64.
    #[arg(long, short, value_name = "RELEASE", conflicts_with_all = ["kdir", "no_kernel"])]
    pub kernel: Option<String>,
    /// Check against the kernel build tree (KDIR) in this directory.
    #[arg(long, value_name = "DIR", conflicts_with = "no_kernel")]
    pub kdir: Option<PathBuf>,
    /// Use no kernel tree: check the ELF identity (with --target) and show vermagic,
    /// modversions and signature, for modules of any architecture.
    #[arg(long)]
    pub no_kernel: bool,
    /// Extra Module.symvers files (repeatable) with the CRCs of out-of-tree exports the
    /// modules use, like KBUILD_EXTRA_SYMBOLS.
    #[arg(long, value_name = "FILE")]
    pub symvers: Vec<PathBuf>,
    /// Fail a vermagic that differs only in the release (the kernel accepts that from a
    /// module with modversions; by default it is a warning).
    #[arg(long)]
    pub strict: bool,
    /// Also trust this certificate (PEM or DER, repeatable) for module signatures, besides
    /// the kernel's built-in ones read from its image: a key enrolled with mokutil, or the
    /// kernel's certs/signing_key.x509 when its image was not fetched.
    #[arg(long, value_name = "FILE")]
    pub cert: Vec<PathBuf>,
    /// Judge as a kernel booted with module.sig_enforce=1: a module that is unsigned or
    /// signed with a key the kernel does not trust fails instead of warning.
    #[arg(long)]
    pub sig_enforce: bool,
    /// Print one JSON document on stdout: per module its path, name, vermagic, identity and
    /// every check with status and evidence.
    #[arg(long)]
    pub json: bool,
    /// Also list passing modules, and every check's evidence.
    #[arg(long, short)]
    pub verbose: bool,
    /// Threads reading and checking modules, at most one per module and per CPU [default:
    /// number of CPUs].
    #[arg(long, short, env = "KMX_JOBS", value_parser = parse_jobs)]
    pub jobs: Option<usize>,
}

/// Parse the command line. A usage error (exit 2) is reported as if no environment
/// variable had filled a flag: clap counts a flag filled from the environment (`KMX_HOME`)
/// as given, and would show `kmx build --home <DIR> <SOURCE>...` as the usage.
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<T> = args.into_iter().collect();
    let first = match Cli::command().try_get_matches_from(args.iter().cloned()) {
        Ok(m) => return Cli::from_arg_matches(&m),
        Err(e) => e,
    };
    if !first.use_stderr() {
        return Err(first); // --help, --version
    }
    match without_env(Cli::command()).try_get_matches_from(args) {
        Err(again) if again.kind() == first.kind() => Err(again),
        _ => Err(first),
    }
}

/// `cmd` with no argument filled from the environment, in every subcommand.
fn without_env(cmd: clap::Command) -> clap::Command {
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    let mut cmd = cmd.mut_args(|a| a.env(None::<&str>));
    for n in names {
        cmd = cmd.mut_subcommand(n, without_env);
    }
    cmd
}

/// A size such as `500M`, `2G` or `1048576` (bytes).
fn size(s: &str) -> Result<u64, BadValue> {
    crate::state::cache::parse_size(s).ok_or(BadValue::NotASize)
}

/// A `--target` value: any name (profiles of `--config-dir` and ~/.config/kmx count too, and
/// `aarch64` stands for `arm64`; the command resolves it), with the shipped targets as the
/// possible values shell completions offer (instead of file names).
#[derive(Debug, Clone, Copy)]
pub struct TargetName;

impl clap::builder::TypedValueParser for TargetName {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        clap::builder::StringValueParser::new().parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            crate::config::load::shipped_targets().map(clap::builder::PossibleValue::new),
        ))
    }
}

/// `kmx build --message-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MessageFormat {
    Human,
    Json,
}

/// `kmx status --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    Table,
    Dkms,
}

/// `--sandbox`: how far build steps are confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxMode {
    Strict,
    Open,
}

impl From<SandboxMode> for crate::sandbox::Mode {
    fn from(m: SandboxMode) -> Self {
        match m {
            SandboxMode::Strict => crate::sandbox::Mode::Strict,
            SandboxMode::Open => crate::sandbox::Mode::Open,
        }
    }
}

/// The words of a command line given as one argument (`--launcher "ccache distcc"`).
#[derive(Debug, Clone)]
pub struct Words(pub Vec<String>);

fn words(s: &str) -> Result<Words, std::convert::Infallible> {
    Ok(Words(s.split_whitespace().map(str::to_string).collect()))
}

/// The most `--jobs` kmx accepts: more parallel compiles than any machine or compile farm
/// kmx builds for. Beyond it a typo (`-j 100000`) would ask for a make jobserver of that
/// many slots (a pipe holding one byte each: Linux refuses past 64 KiB).
pub const MAX_JOBS: usize = 1024;

/// Why a flag's value is refused: clap prints it after the flag and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadValue {
    #[error("must be at least 1")]
    NoJobs,
    #[error(
        "must be at most {MAX_JOBS}: kmx runs one thread per cell or module it works on at once, never more than the work needs"
    )]
    TooManyJobs,
    #[error("{0}")]
    NotANumber(#[from] std::num::ParseIntError),
    #[error("write a size such as 500M or 2G")]
    NotASize,
}

/// `--jobs`: a whole number from 1 (0 jobs would build nothing, forever) to [`MAX_JOBS`].
fn parse_jobs(s: &str) -> Result<usize, BadValue> {
    match s.parse::<usize>()? {
        0 => Err(BadValue::NoJobs),
        n if n > MAX_JOBS => Err(BadValue::TooManyJobs),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        for args in [
            ["kmx", "build", "src", "-j", "0"],
            ["kmx", "verify", "x.ko", "-j", "0"],
        ] {
            let err = Cli::try_parse_from(args).expect_err("-j 0 must be refused");
            assert!(err.to_string().contains("must be at least 1"), "{err}");
        }
        for args in [
            ["kmx", "build", "src", "-j", "100000"],
            ["kmx", "verify", "x.ko", "-j", "1025"],
        ] {
            let err = Cli::try_parse_from(args).expect_err("an absurd -j must be refused");
            assert!(err.to_string().contains("must be at most 1024"), "{err}");
        }
        assert!(Cli::try_parse_from(["kmx", "build", "src", "-j", "1024"]).is_ok());
        let cli = Cli::try_parse_from([
            "kmx",
            "build",
            "x",
            "--launcher",
            "ccache distcc",
            "--cache-size",
            "500M",
        ])
        .expect("parses");
        let Cmd::Build(args) = cli.command else {
            panic!("not build")
        };
        assert_eq!(
            args.launcher.map(|w| w.0),
            Some(vec!["ccache".to_string(), "distcc".to_string()])
        );
        assert_eq!(args.cache_size, 500 << 20);
        let err = Cli::try_parse_from(["kmx", "build", "x", "--cache-size", "lots"])
            .expect_err("a size that is not one must be refused");
        assert!(
            err.to_string().contains("write a size such as 500M or 2G"),
            "{err}"
        );
        assert_eq!(
            parse_jobs("x"),
            Err(BadValue::NotANumber("x".parse::<usize>().unwrap_err()))
        );
        assert_eq!(parse_jobs("1025"), Err(BadValue::TooManyJobs));
    }

    #[test]
    fn smoke_and_build_smoke_wait_as_long_for_a_boot() {
        let smoke = Cli::try_parse_from(["kmx", "smoke", "x.ko"]).expect("parses");
        let Cmd::Smoke { timeout, .. } = smoke.command else {
            panic!("not smoke")
        };
        let build = Cli::try_parse_from(["kmx", "build", "x", "--smoke"]).expect("parses");
        let Cmd::Build(args) = build.command else {
            panic!("not build")
        };
        assert_eq!(timeout, args.smoke_timeout);
        assert_eq!(timeout, SMOKE_TIMEOUT_SECS);
    }
}

//! `kmx targets` and `kmx doctor`: is each target usable, and if not, what to do.

use serde::Serialize;

use crate::commands::{Context, print_json};
use crate::config::Target;
use crate::config::probe::Compiler;
use crate::error::{Result, exit};
use crate::kernel::registry::{Registry, TreeHealth, tree_health, trees_of};

#[derive(Debug, Serialize)]
pub struct TargetHealth {
    pub target: String,
    pub description: String,
    pub kernel_arch: String,
    pub toolchain: String,
    pub identity: String,
    pub compiler: Option<Compiler>,
    /// Why the compiler is unusable, and the hint.
    pub compiler_error: Option<crate::error::Problem>,
    pub trees: Vec<TreeHealth>,
    pub usable: bool,
}

/// Assess one target: toolchain, trees. Never fails: problems become part of the report.
pub fn assess(ctx: &Context, target: &Target, registry: &Registry) -> TargetHealth {
    let mut trees = Vec::new();
    let mut tree_cc: Option<String> = None;
    let mut inspected = Vec::new();
    for r in trees_of(target, registry) {
        let (health, tree) = tree_health(r, target);
        if let Some(t) = &tree {
            tree_cc = tree_cc.or(t.compiler.clone());
        }
        trees.push(health);
        inspected.push(tree);
    }
    // A tree whose compiler this machine lacks (Debian 13's gcc-14 without its toolchain
    // root) is refused, naming the compiler its kernel was built with.
    if let Ok(tc) = ctx.profiles.toolchain_of(target) {
        for (health, tree) in trees.iter_mut().zip(&inspected) {
            if let Some(t) = tree.as_ref().filter(|_| health.error.is_none())
                && let Err(e) = t.probe_compiler(tc)
            {
                health.error = Some((&e).into());
            }
        }
    }
    let (toolchain, compiler) = match ctx.profiles.toolchain_of(target) {
        // In the toolchain root of the first tree that calls it, when it has one.
        Ok(tc) => (
            tc.name.clone(),
            match inspected
                .iter()
                .flatten()
                .find(|t| t.compiler == tree_cc && t.toolchains.is_some())
            {
                Some(t) => t.probe_compiler(tc),
                None => tc.probe(tree_cc.as_deref()),
            }
            .map(|c| (tc.identity.to_string(), c)),
        ),
        Err(e) => (target.toolchain.clone(), Err(e)),
    };
    let (identity, compiler, compiler_error) = match compiler {
        Ok((id, c)) => (id, Some(c), None),
        Err(e) => (String::new(), None, Some((&e).into())),
    };
    let usable = compiler.is_some() && trees.iter().any(|t| t.error.is_none());
    TargetHealth {
        target: target.name.clone(),
        description: target.description.clone(),
        kernel_arch: target.kernel_arch.clone(),
        toolchain,
        identity,
        compiler,
        compiler_error,
        trees,
        usable,
    }
}

pub fn targets(ctx: &Context, json: bool) -> Result<i32> {
    let mut registry = Registry::load(&ctx.home)?;
    registry.add_installed(&ctx.profiles, std::path::Path::new("/"));
    let all: Vec<TargetHealth> = ctx
        .profiles
        .targets
        .values()
        .map(|t| assess(ctx, t, &registry))
        .collect();
    if json {
        print_json("targets", &serde_json::json!({ "targets": all }))?;
        return Ok(exit::OK);
    }
    println!(
        "{:<10} {:<6} {:<22} {:<34} {:<6} TREES",
        "TARGET", "ARCH", "TOOLCHAIN", "COMPILER", "STATUS"
    );
    for h in &all {
        let compiler = match &h.compiler {
            Some(c) => format!("{} {}", c.name, c.version),
            None => "not found".to_string(),
        };
        let releases: Vec<&str> = h
            .trees
            .iter()
            .filter_map(|t| t.release.as_deref())
            .collect();
        // A target with a compiler and no tree at all is not broken: its trees were not
        // fetched (rpi3 and rpi4 use Debian's arm64 packages, fetched once for arm64).
        let target = ctx.profiles.target(&h.target)?;
        let unfetched = h.trees.is_empty() && h.compiler.is_some() && target.fetched_kernels;
        let status = match (h.usable, unfetched) {
            (true, _) => "ok",
            (false, true) => "-",
            (false, false) => "BROKEN",
        };
        let trees = if unfetched {
            let same = target.debian.as_ref().and_then(|d| {
                all.iter().find(|o| {
                    o.target != h.target
                        && !o.trees.is_empty()
                        && ctx.profiles.target(&o.target).is_ok_and(|t| {
                            t.debian
                                .as_ref()
                                .is_some_and(|od| od.arch == d.arch && od.flavour == d.flavour)
                        })
                })
            });
            format!(
                "not fetched: run `kmx kernels fetch --target {}`{}",
                h.target,
                same.map(|o| format!(" (the packages target {} fetched: no download)", o.target))
                    .unwrap_or_default()
            )
        } else if releases.is_empty() {
            "none".to_string()
        } else {
            releases.join(", ")
        };
        println!(
            "{:<10} {:<6} {:<22} {:<34} {:<6} {}",
            h.target, h.kernel_arch, h.toolchain, compiler, status, trees
        );
    }
    Ok(exit::OK)
}

/// A program kmx runs, the Debian package that has it, and what needs it.
struct HostTool {
    program: &'static str,
    package: &'static str,
    needed_by: &'static str,
    /// Every build needs it: missing, no target is usable.
    required: bool,
}

const fn tool(
    program: &'static str,
    package: &'static str,
    needed_by: &'static str,
    required: bool,
) -> HostTool {
    HostTool {
        program,
        package,
        needed_by,
        required,
    }
}

/// Every program kmx itself runs (compilers and QEMU come from the profiles).
const HOST_TOOLS: &[HostTool] = &[
    tool(
        "bash",
        "bash",
        "dkms.conf evaluation and every build step",
        true,
    ),
    tool("make", "make", "every build", true),
    tool(
        "bwrap",
        "bubblewrap",
        "the sandbox every dkms.conf and build step runs in",
        false,
    ),
    tool(
        "patch",
        "patch",
        "PATCH directives and kmx.toml patches",
        false,
    ),
    tool(
        "depmod",
        "kmod",
        "install, uninstall, kernels fetch --with-image",
        false,
    ),
    tool(
        "modinfo",
        "kmod",
        "checking installed modules by hand",
        false,
    ),
    tool(
        "xz",
        "xz-utils",
        "installing into kernels with xz modules",
        false,
    ),
    tool(
        "zstd",
        "zstd",
        "installing into kernels with zstd modules",
        false,
    ),
    tool(
        "gzip",
        "gzip",
        "installing into kernels with gzip modules",
        false,
    ),
    tool(
        "pahole",
        "pahole",
        "BTF in modules for trees with CONFIG_DEBUG_INFO_BTF_MODULES and a vmlinux (Debian's 6.12 amd64, arm64)",
        false,
    ),
    tool("openssl", "openssl", "kmx keys generate", false),
    tool("cpio", "cpio", "kmx smoke (the guest's initramfs)", false),
    tool("apt-get", "apt", "kmx kernels fetch", false),
    tool("dpkg-deb", "dpkg", "kmx kernels fetch", false),
];

/// The host tools that are missing, as (tool, where it was looked for).
fn missing_host_tools() -> Vec<&'static HostTool> {
    // sbin may be missing from a user's PATH; kmx looks there too.
    let path = format!(
        "{}:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    );
    HOST_TOOLS
        .iter()
        .filter(|t| which::which_in(t.program, Some(&path), "/").is_err())
        .collect()
}

/// The host's tools and namespace, as doctor prints them; false when builds cannot run.
fn print_host() -> bool {
    let missing = missing_host_tools();
    match crate::sandbox::available() {
        Ok(()) => println!(
            "host: sandbox ok (bubblewrap; each cell sees /lib/modules/<release>/build, /usr/src and /var/lib/dkms as its own)"
        ),
        Err(why) => println!(
            "host: no sandbox ({why}): dkms.conf and build steps run unconfined, and sources that hard-code /lib/modules/<release>/build, /usr/src or /var/lib/dkms paths will fail\n  hint: install bubblewrap (apt-get install bubblewrap); as another user than root, allow user namespaces (sysctl kernel.unprivileged_userns_clone=1)"
        ),
    }
    if missing.is_empty() {
        println!(
            "host: all {} tools kmx runs are installed",
            HOST_TOOLS.len()
        );
        return true;
    }
    for t in &missing {
        println!(
            "host: {} not found{}: needed by {}",
            t.program,
            if t.required { " (REQUIRED)" } else { "" },
            t.needed_by
        );
    }
    let mut packages: Vec<&str> = Vec::new();
    for t in &missing {
        if !packages.contains(&t.package) {
            packages.push(t.package);
        }
    }
    println!(
        "  hint: apt-get install --no-install-recommends {}",
        packages.join(" ")
    );
    !missing.iter().any(|t| t.required)
}

pub fn doctor(ctx: &Context, names: &[String], json: bool, root: &std::path::Path) -> Result<i32> {
    let mut registry = Registry::load(&ctx.home)?;
    registry.add_installed(&ctx.profiles, root);
    let selected = ctx.profiles.select(names)?;
    let all: Vec<TargetHealth> = selected.iter().map(|t| assess(ctx, t, &registry)).collect();
    let mut broken = all.iter().filter(|h| !h.usable).count();
    if json {
        print_json("doctor", &serde_json::json!({ "targets": all }))?;
    } else {
        if !print_host() {
            broken = all.len();
        }
        println!(
            "{}",
            crate::config::ccache::doctor_line(&ctx.profiles, &ctx.home.root)
        );
        for h in &all {
            println!(
                "{} ({}): {}",
                h.target,
                h.description,
                if h.usable { "ok" } else { "UNUSABLE" }
            );
            match (&h.compiler, &h.compiler_error) {
                (Some(c), _) => println!(
                    "  compiler  {} ({}), builds {}{}",
                    c.path.display(),
                    c.version,
                    h.identity,
                    c.root
                        .as_ref()
                        .map(|r| format!(", in the toolchain root {}", r.display()))
                        .unwrap_or_default()
                ),
                (None, Some(e)) => println!("  compiler  {e}"),
                _ => {}
            }
            if h.trees.is_empty() {
                let hint = ctx
                    .profiles
                    .targets
                    .get(&h.target)
                    .map(|t| t.no_tree_hint())
                    .unwrap_or_default();
                println!("  trees     none: {hint}");
            }
            for t in &h.trees {
                match &t.error {
                    None => println!(
                        "  tree      {} vermagic \"{}\" Module.symvers: {}\n            {}",
                        t.release.as_deref().unwrap_or(""),
                        t.vermagic.as_deref().unwrap_or(""),
                        if t.module_symvers { "yes" } else { "no" },
                        t.kdir.display()
                    ),
                    Some(e) => println!("  tree      {e}"),
                }
            }
        }
        println!("{} of {} targets usable", all.len() - broken, all.len());
    }
    Ok(if broken == 0 { exit::OK } else { exit::FAILED })
}

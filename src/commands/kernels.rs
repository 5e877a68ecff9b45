//! `kmx kernels fetch` and `kmx kernels list`.

use serde::Serialize;

use crate::cli::FetchArgs;
use crate::commands::{Context, print_json};
use crate::config::profile::{DEBIAN_MIRROR, KernelSource};
use crate::error::{Error, Result, exit};
use crate::kernel::fetch::{self, BootRequest, FetchRequest, Want};
use crate::kernel::registry::{
    BootFiles, RegisteredTree, Registry, TreeHealth, tree_health, trees_of,
};
use crate::kernel::select::{self, Purpose};
use crate::kernel::toolroot::{self, RootRequest};
use crate::kernel::tree::KernelTree;

pub fn fetch(ctx: &Context, args: &FetchArgs) -> Result<i32> {
    let mut wants = Vec::new();
    for t in ctx.profiles.select(&args.target)? {
        let sources: Vec<KernelSource> = match (&args.suite, &t.debian) {
            (Some(suite), Some(d)) => vec![KernelSource::debian(
                suite,
                args.mirror.as_deref(),
                d.clone(),
            )],
            (Some(_), None) => vec![],
            (None, _) => t
                .kernel_sources
                .iter()
                .map(|s| match &args.mirror {
                    Some(m) if s.url == DEBIAN_MIRROR => KernelSource {
                        url: m.clone(),
                        ..s.clone()
                    },
                    _ => s.clone(),
                })
                .collect(),
        };
        if sources.is_empty() {
            return Err(Error::usage(format!(
                "target `{}` names no kernel source, so kmx cannot fetch trees for it",
                t.name
            ))
            .hint(format!(
                "add `[debian] arch = \"...\"` and `flavour = \"...\"`, or a [[kernels.source]], to {}; or list its trees under [kernels] paths",
                t.file.display()
            )));
        }
        wants.extend(sources.into_iter().map(|source| Want {
            target: t.name.clone(),
            source,
        }));
    }
    let req = FetchRequest {
        wants,
        abi: args.abi.clone(),
        refresh: args.refresh,
        with_image: args.with_image,
    };
    let trees = fetch::fetch(&ctx.home, &req, &mut |line| eprintln!("{line}"))?;
    let mut registry = Registry::load(&ctx.home)?;
    let mut inspected = Vec::new();
    // The trees that need a toolchain root (their index in `trees`), and what they need.
    let (mut rooted, mut root_requests) = (Vec::new(), Vec::new());
    for t in &trees {
        let tree = KernelTree::inspect(&t.kdir)?;
        tree.check_host_tools()?;
        // A tree calling a compiler this machine lacks (Debian 13's gcc-14) gets a
        // toolchain root with it, from the tree's own distribution.
        let tc = ctx
            .profiles
            .toolchain_of(&ctx.profiles.targets[&t.target])?;
        if let Some(compiler) = toolroot::needed(tc, tree.compiler.as_deref()) {
            rooted.push(inspected.len());
            root_requests.push(RootRequest {
                source: &t.source,
                compiler,
                kbuild: toolroot::kbuild_of(&t.kdir),
                sysroot: &t.sysroot,
            });
        }
        inspected.push(tree);
    }
    toolroot::provide(
        &ctx.home,
        &root_requests,
        args.mirror.as_deref(),
        &mut |line| eprintln!("{line}"),
    )?;
    for i in rooted {
        inspected[i] = KernelTree::inspect(&trees[i].kdir)?;
    }
    let requests: Vec<BootRequest> = trees
        .iter()
        .zip(&inspected)
        .map(|(t, tree)| BootRequest {
            tree: t.clone(),
            release: tree.release.clone(),
            // The target boots with a device tree from the image package.
            dtbs: ctx.profiles.targets[&t.target]
                .boot
                .as_ref()
                .is_some_and(|b| b.dtb.is_some()),
        })
        .collect();
    let boots: Vec<Option<BootFiles>> = if args.with_image {
        fetch::fetch_boot(&ctx.home, args.mirror.as_deref(), &requests, &mut |line| {
            eprintln!("{line}")
        })?
        .into_iter()
        .map(Some)
        .collect()
    } else {
        // Keep what an earlier `--with-image` fetched, as long as it is still on disk.
        requests.iter().map(BootRequest::existing).collect()
    };
    for ((t, tree), boot) in trees.iter().zip(&inspected).zip(boots) {
        let image = if boot.is_some() { " +image" } else { "" };
        // A tree already there keeps the origin its download recorded (with the version).
        let origin = registry
            .for_target(&t.target)
            .find(|r| r.kdir == t.kdir && !t.new)
            .map_or_else(|| t.origin.clone(), |r| r.origin.clone());
        // A newer ABI of a series the target already has: the older tree stays (builds
        // keep covering it) until `kmx kernels prune`.
        let same_series: Vec<&str> = registry
            .for_target(&t.target)
            .filter_map(|r| r.abi.as_deref())
            .filter(|a| fetch::abi_series(a) == fetch::abi_series(&t.abi))
            .collect();
        let older: Vec<&str> = same_series
            .iter()
            .copied()
            .filter(|a| fetch::abi_key(a) < fetch::abi_key(&t.abi))
            .collect();
        if !older.is_empty()
            && older.len() == same_series.len()
            && !registry.for_target(&t.target).any(|r| r.kdir == t.kdir)
        {
            eprintln!(
                "{}: new kernel ABI {} from {}, newer than the registered {}: builds now include it; the older trees stay until `kmx kernels prune`",
                t.target,
                t.abi,
                t.source.label(),
                older.join(", ")
            );
        }
        registry.register(RegisteredTree {
            target: t.target.clone(),
            release: tree.release.clone(),
            kdir: t.kdir.clone(),
            origin,
            source: Some(t.source.label()),
            abi: Some(t.abi.clone()),
            boot,
            installed: false,
        });
        eprintln!(
            "{:<8} {}{image} {:<24} {:<26} vermagic \"{}\"",
            t.target,
            if t.new { "fetched" } else { "present" },
            tree.release,
            t.source.label(),
            tree.vermagic
        );
    }
    registry.save(&ctx.home)?;
    Ok(exit::OK)
}

/// `kmx kernels remove RELEASE [-t T]`.
pub fn remove(ctx: &Context, release: &str, target: Option<&str>) -> Result<i32> {
    let _lock = crate::kernel::apt::apt_lock(&ctx.home)?;
    let mut registry = Registry::load(&ctx.home)?;
    let targets: Vec<&str> = target.into_iter().collect();
    select::registered(&registry, &targets, release, Purpose::Remove)?;
    let gone =
        registry.unregister(|t| t.release == release && target.is_none_or(|x| t.target == x));
    forget(ctx, &mut registry, &gone)
}

/// `kmx kernels prune`: per target and kernel series, every ABI older than the newest.
pub fn prune(ctx: &Context, dry_run: bool) -> Result<i32> {
    let _lock = crate::kernel::apt::apt_lock(&ctx.home)?;
    let mut registry = Registry::load(&ctx.home)?;
    // Per target and kernel series, across sources: bookworm-security's 6.1.0-57
    // supersedes bookworm's 6.1.0-50.
    let series = |r: &RegisteredTree| r.abi.as_deref().map(fetch::abi_series);
    let newest = |t: &RegisteredTree| -> bool {
        let key = |r: &RegisteredTree| r.abi.as_deref().map(fetch::abi_key);
        registry
            .trees
            .iter()
            .filter(|o| o.target == t.target && o.source.is_some() && series(o) == series(t))
            .all(|o| key(o) <= key(t))
    };
    let old: Vec<RegisteredTree> = registry
        .trees
        .iter()
        .filter(|t| t.source.is_some() && !newest(t))
        .cloned()
        .collect();
    let gone = if dry_run {
        old
    } else {
        registry.unregister(|t| old.contains(t))
    };
    if gone.is_empty() {
        println!("Nothing to prune: every tree is the newest ABI of its kernel series");
        return Ok(exit::OK);
    }
    if dry_run {
        for t in &gone {
            println!("would remove {:<8} {} ({})", t.target, t.release, t.origin);
        }
        return Ok(exit::OK);
    }
    forget(ctx, &mut registry, &gone)
}

/// Save the registry without `gone`, then delete their files no remaining entry uses.
fn forget(ctx: &Context, registry: &mut Registry, gone: &[RegisteredTree]) -> Result<i32> {
    registry.save(&ctx.home)?;
    for t in gone {
        println!("removed {:<8} {} ({})", t.target, t.release, t.origin);
    }
    for path in fetch::delete_unused(&ctx.home, registry, gone)? {
        println!("deleted {}", path.display());
    }
    Ok(exit::OK)
}

#[derive(Serialize)]
struct TreeRow {
    target: String,
    /// `debian bookworm-backports`, or the profile file naming the tree under `paths`.
    source: String,
    #[serde(flatten)]
    health: TreeHealth,
}

pub fn list(ctx: &Context, json: bool, root: &std::path::Path) -> Result<i32> {
    let mut registry = Registry::load(&ctx.home)?;
    registry.add_installed(&ctx.profiles, root);
    let mut rows = Vec::new();
    for target in ctx.profiles.targets.values() {
        for r in trees_of(target, &registry) {
            let source = registry
                .for_target(&target.name)
                .find(|t| t.kdir == r.kdir)
                .and_then(|t| t.source.clone())
                .unwrap_or_else(|| r.origin.clone());
            let (health, _) = tree_health(r, target);
            rows.push(TreeRow {
                target: target.name.clone(),
                source,
                health,
            });
        }
    }
    if json {
        print_json("kernels", &serde_json::json!({ "trees": rows }))?;
        return Ok(exit::OK);
    }
    if rows.is_empty() {
        println!(
            "No kernel trees known. Fetch Debian's with `kmx kernels fetch`, or list trees under [kernels] paths in a target profile."
        );
        return Ok(exit::OK);
    }
    // Columns as wide as their widest cell (vermagic strings differ in length by flavour).
    let width = |f: &dyn Fn(&TreeRow) -> usize, title: &str| {
        rows.iter().map(f).chain([title.len()]).max().unwrap_or(0)
    };
    let wt = width(&|r| r.target.len(), "TARGET");
    let wk = width(
        &|r| r.health.release.as_deref().map_or(1, str::len),
        "KERNEL",
    );
    let ws = width(&|r| r.source.len(), "SOURCE");
    println!(
        "{:<wt$}  {:<wk$}  {:<ws$}  {:<7}  VERMAGIC",
        "TARGET", "KERNEL", "SOURCE", "SYMVERS"
    );
    for r in &rows {
        let h = &r.health;
        match &h.error {
            None => println!(
                "{:<wt$}  {:<wk$}  {:<ws$}  {:<7}  \"{}\"",
                r.target,
                h.release.as_deref().unwrap_or(""),
                r.source,
                if h.module_symvers { "yes" } else { "no" },
                h.vermagic.as_deref().unwrap_or(""),
            ),
            Some(e) => println!(
                "{:<wt$}  {:<wk$}  {:<ws$}  error: {e} ({})",
                r.target,
                h.release.as_deref().unwrap_or("?"),
                r.source,
                h.kdir.display()
            ),
        }
    }
    Ok(exit::OK)
}

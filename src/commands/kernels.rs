//! `kmx kernels fetch` and `kmx kernels list`.

use serde::Serialize;

use crate::commands::{Context, print_json};
use crate::config::profile::DebianKernel;
use crate::error::{Error, Result, exit};
use crate::kernel::fetch::{self, BootRequest, FetchRequest};
use crate::kernel::registry::{
    BootFiles, RegisteredTree, Registry, TreeHealth, tree_health, trees_of,
};
use crate::kernel::tree::KernelTree;

pub fn fetch(
    ctx: &Context,
    targets: &[String],
    abi: Option<String>,
    mirror: String,
    suite: String,
    refresh: bool,
    with_image: bool,
) -> Result<i32> {
    let mut wanted = Vec::new();
    for t in ctx.profiles.select(targets)? {
        let debian = t.debian.clone().ok_or_else(|| {
            Error::usage(format!(
                "target `{}` has no [debian] section, so kmx cannot fetch trees for it",
                t.name
            ))
            .hint(format!(
                "add `[debian] arch = \"...\"` and `flavour = \"...\"` to {}, or list its trees under [kernels] paths",
                t.file.display()
            ))
        })?;
        wanted.push((t.name.clone(), debian));
    }
    let debian_of: std::collections::HashMap<String, DebianKernel> =
        wanted.iter().cloned().collect();
    let req = FetchRequest {
        targets: wanted,
        abi,
        mirror,
        suite,
        refresh,
    };
    let trees = fetch::fetch(&ctx.home, &req, &mut |line| eprintln!("{line}"))?;
    let mut registry = Registry::load(&ctx.home)?;
    let mut inspected = Vec::new();
    for t in &trees {
        let tree = KernelTree::inspect(&t.kdir)?;
        tree.check_host_tools()?;
        inspected.push(tree);
    }
    let boots: Vec<Option<BootFiles>> = if with_image {
        let wanted: Vec<BootRequest> = trees
            .iter()
            .zip(&inspected)
            .filter_map(|(t, tree)| {
                Some(BootRequest {
                    tree: t.clone(),
                    debian: debian_of.get(&t.target)?.clone(),
                    release: tree.release.clone(),
                })
            })
            .collect();
        fetch::fetch_boot(&ctx.home, &req, &wanted, &mut |line| eprintln!("{line}"))?
            .into_iter()
            .map(Some)
            .collect()
    } else {
        // Keep what an earlier `--with-image` fetched, as long as it is still on disk.
        trees
            .iter()
            .zip(&inspected)
            .map(|(t, tree)| {
                let arch = &debian_of.get(&t.target)?.arch;
                fetch::existing_boot(&t.sysroot, &tree.release, arch)
            })
            .collect()
    };
    for ((t, tree), boot) in trees.iter().zip(&inspected).zip(boots) {
        let image = if boot.is_some() { " +image" } else { "" };
        registry.register(RegisteredTree {
            target: t.target.clone(),
            release: tree.release.clone(),
            kdir: t.kdir.clone(),
            origin: t.origin.clone(),
            boot,
        });
        eprintln!(
            "{:<8} {}{image} {:<22} vermagic \"{}\"",
            t.target,
            if t.new { "fetched" } else { "present" },
            tree.release,
            tree.vermagic
        );
    }
    registry.save(&ctx.home)?;
    Ok(exit::OK)
}

#[derive(Serialize)]
struct TreeRow {
    target: String,
    #[serde(flatten)]
    health: TreeHealth,
}

pub fn list(ctx: &Context, json: bool) -> Result<i32> {
    let registry = Registry::load(&ctx.home)?;
    let mut rows = Vec::new();
    for target in ctx.profiles.targets.values() {
        for r in trees_of(target, &registry) {
            let (health, _) = tree_health(r, target);
            rows.push(TreeRow {
                target: target.name.clone(),
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
    let magic = |h: &TreeHealth| format!("\"{}\"", h.vermagic.as_deref().unwrap_or(""));
    let width = |f: &dyn Fn(&TreeRow) -> usize, title: &str| {
        rows.iter().map(f).chain([title.len()]).max().unwrap_or(0)
    };
    let wt = width(&|r| r.target.len(), "TARGET");
    let wk = width(
        &|r| r.health.release.as_deref().map_or(1, str::len),
        "KERNEL",
    );
    let wv = width(&|r| magic(&r.health).len(), "VERMAGIC");
    println!(
        "{:<wt$}  {:<wk$}  {:<wv$}  {:<7}  KDIR",
        "TARGET", "KERNEL", "VERMAGIC", "SYMVERS"
    );
    for TreeRow { target, health: h } in &rows {
        match &h.error {
            None => println!(
                "{:<wt$}  {:<wk$}  {:<wv$}  {:<7}  {}",
                target,
                h.release.as_deref().unwrap_or(""),
                magic(h),
                if h.module_symvers { "yes" } else { "no" },
                h.kdir.display()
            ),
            Some(e) => println!("{target:<wt$}  {:<wk$}  error: {e}", "?"),
        }
    }
    Ok(exit::OK)
}

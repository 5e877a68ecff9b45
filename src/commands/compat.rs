//! `kmx compat`: the compatibility matrix of built modules over the kernels of their target
//! that kmx knows. Resolves what is given (`.ko` files, directories such as a build output,
//! or a registered `MODULE[/VERSION]`'s built cells), the target of each module, and the
//! target's trees; the verdicts are [`crate::verify::compat`]'s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::commands::{Context, print_json, split_module};
use crate::config::Target;
use crate::error::{Error, Result, exit};
use crate::kernel::registry::{Registry, trees_of, usable_tree};
use crate::kernel::symvers::Symvers;
use crate::kernel::tree::KernelTree;
use crate::verify::checks::{Kernel, Keys, KeysUnknown, Others, TreeSymbols};
use crate::verify::compat::{self, Judgement, Verdict};
use crate::verify::module::Module;

#[derive(Serialize)]
struct Row<'a> {
    module: String,
    path: &'a Path,
    target: &'a str,
    /// The release the module was built for (its vermagic's first word).
    built_for: Option<&'a str>,
    vermagic: Option<&'a str>,
    kernels: Vec<Cell>,
}

#[derive(Serialize)]
struct Cell {
    release: String,
    /// `debian bookworm-security`, or where a tree not fetched comes from.
    source: String,
    #[serde(flatten)]
    judgement: Judgement,
}

/// A tree of a target, inspected, with its exports.
struct KnownKernel {
    tree: KernelTree,
    source: String,
    symbols: Option<TreeSymbols>,
    /// The size of the kernel's `struct module`, when kmx has one of its own modules (the
    /// image fetched with `--with-image`) or one built for it among those given.
    struct_module: Option<u64>,
}

pub fn compat(
    ctx: &Context,
    inputs: &[String],
    targets: &[String],
    json: bool,
    verbose: bool,
) -> Result<i32> {
    let chosen: Vec<&Target> = ctx.profiles.select(targets)?;
    let explicit = !targets.is_empty();
    let mut files: Vec<PathBuf> = Vec::new();
    for input in inputs {
        files.extend(resolve_input(ctx, input)?);
    }
    let registry = Registry::load(&ctx.home)?;
    let mut modules = Vec::new();
    for f in &files {
        let m = Module::read(f).map_err(|e| e.into_error(f))?;
        modules.push(m);
    }
    // Exports of every module given, with the CRCs of the builds' Module.symvers.
    let mut others = Others::default();
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        let symvers = d.join("Module.symvers");
        if symvers.is_file() {
            others.add_symvers(&Symvers::load(&symvers)?);
        }
    }
    for (m, f) in modules.iter().zip(&files) {
        others.add_module(&module_name(m, f), &m.exported);
    }
    let candidates: Vec<&Target> = if explicit {
        chosen
    } else {
        ctx.profiles.targets.values().collect()
    };
    let mut kernels: BTreeMap<String, Vec<KnownKernel>> = BTreeMap::new();
    let mut rows = Vec::new();
    for (m, f) in modules.iter().zip(&files) {
        let built_for = m.vermagic().map(|v| v.split(' ').next().unwrap_or(v));
        let target = target_of(f, built_for, &candidates, &registry, explicit)?;
        if !kernels.contains_key(&target.name) {
            kernels.insert(target.name.clone(), known_kernels(target, &registry)?);
        }
        let identity = ctx.profiles.toolchain_of(target)?.identity;
        let own_size = this_module_size(f);
        let cells = kernels[&target.name]
            .iter()
            .map(|k| {
                // The kernel's struct module: from its own modules, else from a module
                // given that was built for it.
                let kernel_size = k.struct_module.or_else(|| {
                    modules
                        .iter()
                        .zip(&files)
                        .find(|(o, _)| {
                            o.vermagic().and_then(|v| v.split(' ').next())
                                == Some(k.tree.release.as_str())
                        })
                        .and_then(|(_, of)| this_module_size(of))
                });
                let this_module = own_size
                    .zip(kernel_size)
                    .map(|(module, kernel)| compat::ThisModule { module, kernel });
                let kernel = Kernel {
                    tree: &k.tree,
                    symbols: k.symbols.as_ref(),
                    // Not part of the verdict.
                    keys: Keys::Unknown(&KeysUnknown::NotAsked),
                };
                Cell {
                    release: k.tree.release.clone(),
                    source: k.source.clone(),
                    judgement: compat::judge(m, &identity, kernel, &others, this_module),
                }
            })
            .collect();
        rows.push(Row {
            module: module_name(m, f),
            path: f,
            target: &target.name,
            built_for,
            vermagic: m.vermagic(),
            kernels: cells,
        });
    }
    if json {
        print_json("compat", &serde_json::json!({ "modules": rows }))?;
    } else {
        print_table(&rows, verbose);
    }
    Ok(exit::OK)
}

/// `.ko` files and directories as given; else a registered module's built cells
/// (`MODULE` or `MODULE/VERSION`).
fn resolve_input(ctx: &Context, input: &str) -> Result<Vec<PathBuf>> {
    let path = Path::new(input);
    let found = if path.exists() {
        crate::verify::module_files(path)?
    } else {
        let (module, version) = split_module(input).map_err(|_| {
            Error::usage(format!(
                "{input}: no such file or directory, and not a registered MODULE[/VERSION]"
            ))
            .hint("pass .ko files, a build output directory, or a module `kmx status` lists")
        })?;
        let mut dir = ctx.store.built().join(&module);
        if let Some(v) = &version {
            dir = dir.join(v);
        }
        if !dir.is_dir() {
            return Err(Error::usage(format!(
                "{input}: no such file or directory, and kmx has no build of module {input}"
            ))
            .hint(format!("build it first: `kmx build {input}`")));
        }
        crate::verify::module_files(&dir)?
    };
    if found.is_empty() {
        return Err(Error::usage(format!("no .ko files under {input}"))
            .hint("build the modules first, or pass .ko files"));
    }
    Ok(found)
}

/// The target a module is judged for: the only one given; else the build cell's
/// (`<release>/<target>/` of a build output or the state store); else the first whose
/// trees include the release the module was built for.
fn target_of<'a>(
    file: &Path,
    built_for: Option<&str>,
    candidates: &[&'a Target],
    registry: &Registry,
    explicit: bool,
) -> Result<&'a Target> {
    if explicit && candidates.len() == 1 {
        return Ok(candidates[0]);
    }
    let cell = file
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str());
    if let Some(t) = candidates.iter().find(|t| Some(t.name.as_str()) == cell) {
        return Ok(t);
    }
    if let Some(release) = built_for
        && let Some(t) = candidates
            .iter()
            .find(|t| registry.for_target(&t.name).any(|r| r.release == release))
    {
        return Ok(t);
    }
    Err(Error::usage(format!(
        "{}: built for {}, which no kernel tree kmx knows{} has",
        file.display(),
        built_for.unwrap_or("an unknown release (no vermagic)"),
        if explicit {
            " for the targets given"
        } else {
            ""
        }
    ))
    .hint("name its target with --target (`kmx targets` lists them)"))
}

/// Every tree of `target` kmx knows, inspected, with the source each came from.
fn known_kernels(target: &Target, registry: &Registry) -> Result<Vec<KnownKernel>> {
    let mut out = Vec::new();
    for r in trees_of(target, registry) {
        let tree = match usable_tree(&r.kdir, target) {
            Ok(t) => t,
            Err(e) => {
                eprintln!(
                    "warning: {}: skipped: {}",
                    r.kdir.display(),
                    crate::error::render_inline(&e)
                );
                continue;
            }
        };
        let source = registry
            .for_target(&target.name)
            .find(|t| t.kdir == r.kdir)
            .and_then(|t| t.source.clone())
            .unwrap_or_else(|| r.origin.clone());
        let symbols = TreeSymbols::load(&tree)?;
        // One of the kernel's own modules (depmod's first), where its image was fetched.
        let struct_module = registry
            .for_target(&target.name)
            .find(|t| t.kdir == r.kdir)
            .and_then(|t| t.boot.as_ref())
            .and_then(|b| {
                let dep = std::fs::read_to_string(b.modules_dir.join("modules.dep")).ok()?;
                let first = dep.lines().next()?.split(':').next()?.to_string();
                this_module_size(&b.modules_dir.join(first))
            });
        out.push(KnownKernel {
            tree,
            source,
            symbols,
            struct_module,
        });
    }
    if out.is_empty() {
        return Err(Error::env(format!(
            "target {} has no kernel tree kmx can read",
            target.name
        ))
        .hint(format!(
            "fetch its trees: `kmx kernels fetch -t {}`",
            target.name
        )));
    }
    Ok(out)
}

fn module_name(m: &Module, f: &Path) -> String {
    m.name().map(str::to_string).unwrap_or_else(|| {
        let n = f.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        n.split(".ko").next().unwrap_or(n).to_string()
    })
}

fn print_table(rows: &[Row], verbose: bool) {
    let mut lines: Vec<[String; 5]> = vec![[
        "MODULE".into(),
        "TARGET".into(),
        "BUILT FOR".into(),
        "KERNEL".into(),
        "SOURCE".into(),
    ]];
    let mut verdicts = vec!["VERDICT".to_string()];
    let mut extra: Vec<Vec<String>> = vec![Vec::new()];
    for r in rows {
        for c in &r.kernels {
            lines.push([
                r.module.clone(),
                r.target.to_string(),
                r.built_for.unwrap_or("?").to_string(),
                c.release.clone(),
                c.source.clone(),
            ]);
            let j = &c.judgement;
            verdicts.push(match (j.verdict, j.reasons.first()) {
                (Verdict::Loads, _) | (_, None) => j.verdict.word().to_string(),
                (v, Some(first)) => format!("{}: {first}", v.word()),
            });
            extra.push(if verbose {
                j.reasons.iter().skip(1).cloned().collect()
            } else {
                Vec::new()
            });
        }
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    for ((l, v), more) in lines.iter().zip(&verdicts).zip(&extra) {
        let mut out = String::new();
        for (cell, w) in l.iter().zip(&widths) {
            out.push_str(&format!("{cell:<w$}  "));
        }
        println!("{out}{v}");
        let indent = widths.iter().map(|w| w + 2).sum::<usize>();
        for m in more {
            println!("{:indent$}{m}", "");
        }
    }
}

/// The size of a module file's `.gnu.linkonce.this_module` section (its `struct module`),
/// decompressing `.ko.xz` / `.ko.zst` / `.ko.gz`; `None` when unreadable.
fn this_module_size(path: &Path) -> Option<u64> {
    use crate::verify::decompress::{Compression, decompress};
    let raw = std::fs::read(path).ok()?;
    let bytes = match Compression::detect(&raw) {
        Some(format) => decompress(&raw, format, 256 << 20).ok()?,
        None => raw,
    };
    let elf = goblin::elf::Elf::parse(&bytes).ok()?;
    elf.section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(".gnu.linkonce.this_module"))
        .map(|s| s.sh_size)
}

//! The lifecycle commands, DKMS's words: `add`, `install`, `uninstall`, `remove`, `status`,
//! `autoinstall`, `keys generate`, `tarball`, `load-tarball`. They parse, take the store's
//! lock, get cells ready through [`crate::lifecycle::prepare`] (which builds what is missing
//! or stale), hand installing to [`crate::install`], and print.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::progress::Printer;
use super::{Context, print_json, split_module};
use crate::cli::{
    AutoinstallArgs, InstallArgs, PackageArgs, PackageFormat, SignArgs, UninstallArgs,
};
use crate::error::{Error, Kind, Result, exit};
use crate::install::{self, SignKey, image};
use crate::kernel::select::{self, Purpose};
use crate::lifecycle::prepare::{Prep, Ready, evaluate_generic, prepare, prepare_binary};
use crate::matrix::pipeline::{Cell, Options, setup_targets_in};
use crate::process;
use crate::state::cache::{Cache, DEFAULT_MAX_BYTES};
use crate::state::store::{
    BuiltRecord, CellKey, InstallRecord, SourceRecord, Store, content_hash, now, valid_component,
};

/// Read once per command: the test hook that pauses an install at a named step.
fn pause_at() -> Option<String> {
    std::env::var("KMX_TEST_PAUSE_AT")
        .ok()
        .filter(|s| !s.is_empty())
}

/// Whether Ctrl-C, SIGTERM or SIGHUP arrived (for commands that handle them).
fn interrupted() -> bool {
    process::stop_flag().is_ok_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
}

/// The version to act on: the named one, or the newest registered or built.
fn pick_version(store: &Store, module: &str, version: Option<String>) -> Result<String> {
    if let Some(v) = version {
        return Ok(v);
    }
    store.versions_of(module)?.pop().ok_or_else(|| {
        Error::usage(format!("module `{module}` is not registered"))
            .hint("register its source with `kmx add DIR`, or import a build with `kmx load-tarball FILE`")
    })
}

/// `kmx add DIR`: register a source under the name and version DKMS would give it: `given`
/// (DKMS's `-m NAME -v VERSION`) where set, else as [`crate::config::dkms`] decides.
pub fn add(
    ctx: &Context,
    store: &Store,
    source: &Path,
    mode: crate::sandbox::Mode,
    wait: bool,
    given: &crate::config::manifest::Given,
    json: bool,
) -> Result<i32> {
    let _ = ctx;
    let src = source
        .canonicalize()
        .map_err(|e| Error::io("open module source", source, e))?;
    let spec = evaluate_generic(&src, mode, given)?;
    for (what, v) in [
        ("PACKAGE_NAME", &spec.name),
        ("PACKAGE_VERSION", &spec.version),
    ] {
        if !valid_component(v) {
            return Err(Error::config(
                &src,
                format!("{what} {v:?} cannot name a directory of the state store"),
            )
            .hint("use a name without `/`, not starting with `.`"));
        }
    }
    let _lock = store.lock(wait)?;
    let dir = store.source_dir(&spec.name, &spec.version);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
    let previous = store.load_source(&spec.name, &spec.version)?;
    // Copies and old versions of an add that died: made only under the lock, which we hold.
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".src-new-") || name.starts_with(".src-old-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    // A refused first add (a FIFO in the source, a full disk) leaves no empty
    // `sources/<name>/<version>` for `status --check` to blame on a killed kmx: the
    // directories it made are removed if they are empty (`remove_dir` removes nothing else).
    let forget = || {
        if previous.is_none() {
            let _ = std::fs::remove_dir(&dir);
            let _ = dir.parent().map(std::fs::remove_dir);
        }
    };
    let new = dir.join(format!(".src-new-{}", std::process::id()));
    let copied = crate::matrix::pipeline::copy_tree(&src, &new).and_then(|_| content_hash(&new));
    let hash = match copied {
        Ok(hash) => hash,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&new);
            forget();
            return Err(e);
        }
    };
    let copy = store.source_copy(&spec.name, &spec.version);
    if previous.as_ref().is_some_and(|p| p.hash == hash) && copy.is_dir() {
        let _ = std::fs::remove_dir_all(&new);
        eprintln!(
            "{} {} is already registered with the same content",
            spec.name, spec.version
        );
        return print_added(json, &spec.name, &spec.version, &src, &copy, "unchanged");
    }
    let old = dir.join(format!(".src-old-{}", std::process::id()));
    if copy.exists() {
        std::fs::rename(&copy, &old).map_err(|e| Error::io("move aside", &copy, e))?;
    }
    if let Err(e) = std::fs::rename(&new, &copy) {
        // Put the registered copy back as it was.
        let _ = std::fs::rename(&old, &copy);
        let _ = std::fs::remove_dir_all(&new);
        forget();
        return Err(Error::io("move into place", &copy, e));
    }
    // The record first: a kill between the swap and the record leaves the least behind.
    store.save_source(&SourceRecord {
        module: spec.name.clone(),
        version: spec.version.clone(),
        origin: src.clone(),
        hash,
        added_at: now(),
    })?;
    let _ = std::fs::remove_dir_all(&old);
    if let Some(line) = &spec.post_add {
        warn_on_failure("POST_ADD", line, &copy);
    }
    let action = if previous.is_some() {
        eprintln!(
            "refreshed {} {} from {}: its builds are stale until rebuilt (kmx install does)",
            spec.name,
            spec.version,
            src.display()
        );
        "refreshed"
    } else {
        eprintln!(
            "added {} {} from {} (copied to {})",
            spec.name,
            spec.version,
            src.display(),
            copy.display()
        );
        "added"
    };
    print_added(json, &spec.name, &spec.version, &src, &copy, action)
}

/// `kmx add --json`'s object (docs/schemas/kmx.add-1.json).
fn print_added(
    json: bool,
    module: &str,
    version: &str,
    source: &Path,
    copy: &Path,
    action: &str,
) -> Result<i32> {
    if json {
        super::print_json(
            "add",
            &serde_json::json!({
                "module": module,
                "version": version,
                "source": source,
                "copy": copy,
                "action": action,
            }),
        )?;
    }
    Ok(exit::OK)
}

/// The key to sign with: the flags, else `HOME/keys/mok.{key,der}` when both exist.
fn sign_key(ctx: &Context, args: &SignArgs) -> Result<Option<SignKey>> {
    if let (Some(key), Some(cert)) = (&args.sign_key, &args.sign_cert) {
        for p in [key, cert] {
            if !p.is_file() {
                return Err(Error::usage("no such file")
                    .at(p)
                    .hint("pass an existing key and certificate, or run `kmx keys generate`"));
            }
        }
        return Ok(Some(SignKey {
            key: key.clone(),
            cert: cert.clone(),
        }));
    }
    let dir = ctx.home.root.join("keys");
    let (key, cert) = (dir.join("mok.key"), dir.join("mok.der"));
    Ok((key.is_file() && cert.is_file()).then_some(SignKey { key, cert }))
}

/// With no key configured, the key for the modules about to be installed into `root`
/// ([`install::mok::for_root`]), said on stderr with how to enroll it. A key that cannot be
/// made is a warning: the modules are installed unsigned, or refused where the kernel
/// forces signatures.
fn machine_sign(ctx: &Context, root: &Path, preps: &[(CellKey, Result<Prep>)]) -> Option<SignKey> {
    let wanted = preps
        .iter()
        .any(|(_, p)| matches!(p, Ok(Prep::Ready(r)) if r.record.sig_enabled));
    if !wanted {
        return None;
    }
    match install::mok::for_root(&ctx.home.root.join("keys"), root)? {
        Ok(k) => {
            eprintln!("{}", k.describe());
            Some(k.key().clone())
        }
        Err(e) => {
            eprintln!(
                "warning: no key to sign modules with: {}",
                crate::error::render_inline(&e)
            );
            None
        }
    }
}

fn do_install(
    store: &Store,
    root: &Path,
    ready: &Ready,
    depmod: bool,
    sign: &Option<SignKey>,
    pause: &Option<String>,
) -> Result<install::Installed> {
    let opts = install::Options {
        depmod,
        sign: sign.clone(),
        sign_file: ready.sign_file.clone(),
        pre_install: ready.pre_install.clone(),
        post_install: ready.post_install.clone(),
        pause_at: pause.clone(),
    };
    install::install(store, root, &ready.record, &ready.cell_dir, &opts)
}

fn describe_install(key: &CellKey, inst: &install::Installed) -> String {
    let mut s = format!("installed {key}:");
    for f in &inst.record.files {
        s.push_str(&format!(
            "\n  {}{}",
            inst.record.root.join(&f.path).display(),
            if f.signed { " (signed)" } else { "" }
        ));
    }
    for d in &inst.record.displaced {
        s.push_str(&format!(
            "\n  moved aside {} (restored on uninstall)",
            inst.record.root.join(&d.original).display()
        ));
    }
    for n in &inst.notes {
        s.push_str(&format!("\n  note: {n}"));
    }
    s
}

pub fn install_cmd(ctx: &Context, store: &Store, args: &InstallArgs, wait: bool) -> Result<i32> {
    let (module, version) = split_module(&args.module)?;
    let root = install::resolve_root(&args.root)?;
    let sign = sign_key(ctx, &args.sign)?;
    let pause = pause_at();
    let _lock = store.lock(wait)?;
    let version = pick_version(store, &module, version)?;
    let target = match (&args.target, &args.kernel) {
        (Some(t), _) => ctx.profiles.target(t)?.name.clone(),
        (None, Some(release)) => target_of_release(ctx, store, &root, release, &module, &version)?,
        (None, None) => {
            return Err(Error::usage(
                "name the target with --target or the kernel release with --kernel",
            ));
        }
    };
    let target = &target;
    let releases = releases_to_install(ctx, store, args, target, &root, &module, &version)?;
    // One plan for every release: dkms.conf is read and the cells are built (in parallel)
    // once, then each is installed.
    let preps: Vec<(CellKey, Result<Prep>)> = if store.load_source(&module, &version)?.is_some() {
        let mut notes = Vec::new();
        let targets = setup_targets_in(
            &ctx.profiles,
            &ctx.home,
            std::slice::from_ref(target),
            &releases,
            &root,
            &mut notes,
        )?;
        for n in &notes {
            eprintln!("{n}");
        }
        let exec = Options {
            jobs: args.jobs,
            // The same build cache as `kmx build`: a cell built there is not built again.
            cache: Some(Cache::new(ctx.home.cell_cache(), DEFAULT_MAX_BYTES)),
            ..Options::default()
        };
        let want = |c: &Cell| c.target.target.name == *target && releases.contains(&c.tree.release);
        let mut preps = prepare(
            store,
            &[(module.clone(), version.clone())],
            &targets,
            &want,
            &exec,
            &mut Printer::default(),
        );
        // A failure (or an interruption) of planning or of a build comes first: it may have
        // left no cell for a release.
        if let Some(i) = preps.iter().position(|(_, r)| r.is_err())
            && let (_, Err(e)) = preps.swap_remove(i)
        {
            return Err(e);
        }
        // Each release asked for has a tree (`setup_targets_in` holds one of them).
        let trees: Vec<_> = targets.iter().flat_map(|t| t.trees.iter()).collect();
        for r in &releases {
            select::of_release(
                target,
                trees.clone(),
                std::slice::from_ref(r),
                Purpose::Install,
            )?;
        }
        preps
    } else {
        releases
            .iter()
            .map(|release| {
                let key = CellKey {
                    module: module.clone(),
                    version: version.clone(),
                    release: release.clone(),
                    target: target.clone(),
                };
                let prep = prepare_binary(&ctx.profiles, &ctx.home, store, &key);
                (key, prep)
            })
            .collect()
    };
    let sign = sign.or_else(|| machine_sign(ctx, &root, &preps));
    let (mut installed, mut skipped) = (Vec::new(), Vec::new());
    let mut code = exit::OK;
    for (key, prep) in preps {
        match prep? {
            Prep::Skipped(reason) => {
                eprintln!("nothing to install: {key} is skipped by a rule: {reason}");
                skipped.push(serde_json::json!({ "kernel": key.release, "reason": reason }));
            }
            Prep::Ready(ready) => {
                let inst = do_install(store, &root, &ready, !args.no_depmod, &sign, &pause)?;
                eprintln!("{}", describe_install(&key, &inst));
                installed.push(installed_json(&key, &inst));
                // A signal while the root was being written: that install was finished
                // (never left half done); the exit code still says interrupted.
                if interrupted() {
                    eprintln!(
                        "interrupted (the install above had started and was completed first)"
                    );
                    code = exit::INTERRUPTED;
                    break;
                }
            }
        }
    }
    if args.json {
        super::print_json(
            "install",
            &serde_json::json!({
                "module": module,
                "version": version,
                "target": target,
                "root": root,
                "installed": installed,
                "skipped": skipped,
                "interrupted": code == exit::INTERRUPTED,
            }),
        )?;
    }
    Ok(code)
}

/// One install of `kmx install --json` (docs/schemas/kmx.install-1.json): what
/// [`describe_install`] says.
fn installed_json(key: &CellKey, inst: &install::Installed) -> serde_json::Value {
    let root = &inst.record.root;
    serde_json::json!({
        "kernel": key.release,
        "files": inst.record.files.iter().map(|f| serde_json::json!({
            "path": root.join(&f.path),
            "signed": f.signed,
        })).collect::<Vec<_>>(),
        "moved_aside": inst.record.displaced.iter().map(|d| root.join(&d.original)).collect::<Vec<_>>(),
        "notes": inst.notes,
    })
}

/// The image kernels `kmx install` installs for: `--kernel`'s (which an image root must
/// have, unless `--create`), or every release the image has whose architecture is the
/// target's and that one of the target's trees (or a binary-only build) provides.
/// The target `kmx install -k RELEASE` without --target installs for: the one whose kernel
/// trees (fetched, or installed in ROOT) or whose builds of the module provide RELEASE; of
/// several, the only one among the default targets (`arm64` for 6.1.0-50-arm64, which the
/// `rpi3` target builds against too).
fn target_of_release(
    ctx: &Context,
    store: &Store,
    root: &Path,
    release: &str,
    module: &str,
    version: &str,
) -> Result<String> {
    let mut registry = crate::kernel::registry::Registry::load(&ctx.home)?;
    registry.add_installed(&ctx.profiles, root);
    let mut names: Vec<String> = registry
        .trees
        .iter()
        .filter(|t| t.release == release)
        .map(|t| t.target.clone())
        .chain(
            store
                .built_all()?
                .into_iter()
                .filter(|b| b.module == module && b.version == version && b.release == release)
                .map(|b| b.target),
        )
        .filter(|t| ctx.profiles.targets.contains_key(t))
        .collect();
    names.sort();
    names.dedup();
    let defaults: Vec<String> = names
        .iter()
        .filter(|n| crate::config::load::DEFAULT_TARGETS.contains(&n.as_str()))
        .cloned()
        .collect();
    match (names.as_slice(), defaults.as_slice()) {
        ([one], _) | (_, [one]) => Ok(one.clone()),
        ([], _) => Err(Error::usage(format!(
            "no target has a kernel tree of release {release}, so kmx cannot tell which to install for"
        ))
        .hint("name the target with --target (`kmx kernels list` shows the releases each has)")),
        (many, _) => Err(Error::usage(format!(
            "several targets have a kernel tree of release {release}: {}",
            many.join(", ")
        ))
        .hint("name one with --target")),
    }
}

fn releases_to_install(
    ctx: &Context,
    store: &Store,
    args: &InstallArgs,
    target: &str,
    root: &Path,
    module: &str,
    version: &str,
) -> Result<Vec<String>> {
    let target = ctx.profiles.target(target)?;
    let identity = ctx.profiles.toolchain_of(target)?.identity;
    let is_image = root != Path::new("/");
    if let Some(release) = &args.kernel {
        if is_image && !args.create && !image::has_release(root, release) {
            let has = image::releases(root);
            return Err(Error::usage(format!(
                "the image has no kernel {release}: {} does not exist, and kmx does not create it",
                root.join("lib/modules").join(release).display()
            ))
            .hint(if has.is_empty() {
                "install the kernel package into the image first, or pass --create to install anyway".to_string()
            } else {
                format!("the image's kernels: {}; or pass --create to install for {release} anyway", has.join(", "))
            }));
        }
        image::check_arch(root, release, &target.name, identity)?;
        return Ok(vec![release.clone()]);
    }
    if !is_image {
        return Err(Error::usage("name the kernel release to install for with --kernel").hint(
            "kmx installs into / only for a kernel you name; with --root IMG it finds the image's kernels",
        ));
    }
    let (found, same_arch) = image::kernels_for(root, &target.name, identity)?;
    let mut registry = crate::kernel::registry::Registry::load(&ctx.home)?;
    registry.add_installed(&ctx.profiles, root);
    let mut provided: Vec<String> = crate::kernel::registry::trees_of(target, &registry)
        .iter()
        .filter_map(|r| crate::kernel::KernelTree::inspect(&r.kdir).ok())
        .map(|t| t.release)
        .collect();
    provided.extend(
        store
            .built_all()?
            .into_iter()
            .filter(|b| b.module == module && b.version == version && b.target == target.name)
            .map(|b| b.release),
    );
    let wanted: Vec<String> = same_arch
        .into_iter()
        .filter(|r| provided.contains(r))
        .collect();
    if wanted.is_empty() {
        provided.sort();
        provided.dedup();
        return Err(Error::usage(format!(
            "none of the image's kernels ({}) is one target `{}` has a tree for",
            found.join(", "),
            target.name
        ))
        .hint(format!(
            "the target's trees: {}; `kmx kernels fetch -t {}` fetches its sources' newest, or add the image's kernel tree under [kernels] paths",
            if provided.is_empty() { "none".to_string() } else { provided.join(", ") },
            target.name
        )));
    }
    Ok(wanted)
}

pub fn uninstall_cmd(store: &Store, args: &UninstallArgs, wait: bool) -> Result<i32> {
    let (module, version) = match &args.module {
        Some(m) => {
            let (m, v) = split_module(m)?;
            (Some(m), v)
        }
        None => (None, None),
    };
    let root = install::resolve_root_for_uninstall(&args.root)?;
    // DKMS's default kernel is the running one; an image's is every kernel it has.
    let kernel = match &args.kernel {
        Some(k) => Some(k.clone()),
        None if root == Path::new("/") => Some(running_kernel()?),
        None => None,
    };
    let kernel_shown = kernel.as_deref().unwrap_or("any kernel");
    let pause = pause_at();
    let _lock = store.lock(wait)?;
    let mut found: Vec<InstallRecord> = store
        .installs_in(&root)?
        .into_iter()
        .filter(|r| {
            module.as_ref().is_none_or(|m| *m == r.module)
                && version.as_ref().is_none_or(|v| *v == r.version)
                && kernel.as_ref().is_none_or(|k| *k == r.release)
                && args.target.as_ref().is_none_or(|t| *t == r.target)
        })
        .collect();
    let shown = args.module.as_deref().unwrap_or("nothing kmx installed");
    if found.is_empty() {
        if args.all {
            eprintln!(
                "nothing to uninstall: kmx installed nothing matching for {kernel_shown} in {}",
                root.display()
            );
            return Ok(exit::OK);
        }
        return Err(Error::usage(format!(
            "{shown} is not installed for {} {kernel_shown} in {}",
            args.target.as_deref().unwrap_or("any target"),
            root.display()
        ))
        .hint("`kmx status` lists what is installed where"));
    }
    let mut versions: Vec<&str> = found.iter().map(|r| r.version.as_str()).collect();
    versions.sort();
    versions.dedup();
    if versions.len() > 1 && !args.all {
        return Err(Error::usage(format!(
            "several versions of {shown} are installed there: {}",
            versions.join(", ")
        ))
        .hint("name one as MODULE/VERSION, or pass --all"));
    }
    let last = found.len() - 1;
    for (i, rec) in found.drain(..).enumerate() {
        let key = rec.key();
        let restored = rec.displaced.len();
        // depmod once, after the last one.
        let done = install::uninstall(store, rec, !args.no_depmod && i == last, pause.as_deref())?;
        if done == install::Uninstalled::RootGone {
            eprintln!("{}", root_gone(&key, &root));
            continue;
        }
        eprintln!(
            "uninstalled {key} from {}{}",
            root.display(),
            if restored > 0 {
                format!(" (restored {restored} displaced module(s))")
            } else {
                String::new()
            }
        );
    }
    Ok(exit::OK)
}

/// The running kernel's release (`uname -r`): DKMS's default kernel.
pub(super) fn running_kernel() -> Result<String> {
    let path = Path::new("/proc/sys/kernel/osrelease");
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io("read the running kernel's release from", path, e))
}

/// `kmx unbuild`: like `dkms unbuild`, uninstall what was installed from the builds, then
/// drop the builds (and records of failed builds); the source stays registered.
pub fn unbuild_cmd(
    store: &Store,
    module_arg: &str,
    kernel: Option<&str>,
    target: Option<&str>,
    all: bool,
    no_depmod: bool,
    wait: bool,
) -> Result<i32> {
    let (module, version) = split_module(module_arg)?;
    let kernel = match (kernel, all) {
        (Some(k), _) => Some(k.to_string()),
        (None, true) => None,
        (None, false) => Some(running_kernel()?),
    };
    let _lock = store.lock(wait)?;
    let version = pick_version(store, &module, version)?;
    let wanted = |m: &str, v: &str, r: &str, t: &str| {
        m == module
            && v == version
            && kernel.as_deref().is_none_or(|k| k == r)
            && target.is_none_or(|x| x == t)
    };
    let built: Vec<BuiltRecord> = store
        .built_all()?
        .into_iter()
        .filter(|b| wanted(&b.module, &b.version, &b.release, &b.target))
        .collect();
    let failed: Vec<CellKey> = store
        .failed_all()?
        .into_iter()
        .map(|f| f.key())
        .filter(|k| wanted(&k.module, &k.version, &k.release, &k.target))
        .collect();
    if built.is_empty() && failed.is_empty() {
        return Err(Error::usage(format!(
            "{module} {version} is not built for {}{}",
            kernel.as_deref().unwrap_or("any kernel"),
            target.map(|t| format!(" ({t})")).unwrap_or_default()
        ))
        .hint("`kmx status` lists its builds; pass --kernel RELEASE or --all"));
    }
    for rec in store
        .installs_all()?
        .into_iter()
        .filter(|r| wanted(&r.module, &r.version, &r.release, &r.target))
    {
        let key = rec.key();
        let root = rec.root.clone();
        match install::uninstall(store, rec, !no_depmod, None)? {
            install::Uninstalled::Removed => eprintln!("uninstalled {key} from {}", root.display()),
            install::Uninstalled::RootGone => eprintln!("{}", root_gone(&key, &root)),
        }
    }
    for b in &built {
        let key = b.key();
        store.delete_built(&key)?;
        eprintln!("unbuilt {key}");
    }
    for key in &failed {
        store.clear_failed(key)?;
    }
    Ok(exit::OK)
}

/// What `uninstall` and `remove` say of an install whose root no longer exists.
fn root_gone(key: &impl std::fmt::Display, root: &Path) -> String {
    format!(
        "{} no longer exists: forgot the install of {key} there (nothing to remove)",
        root.display()
    )
}

pub fn remove_cmd(
    store: &Store,
    module_arg: &str,
    all: bool,
    no_depmod: bool,
    wait: bool,
) -> Result<i32> {
    let (module, version) = split_module(module_arg)?;
    let _lock = store.lock(wait)?;
    let versions = match version {
        Some(v) => vec![v],
        None => {
            let v = store.versions_of(&module)?;
            if v.len() > 1 && !all {
                return Err(Error::usage(format!(
                    "several versions of {module} are registered: {}",
                    v.join(", ")
                ))
                .hint(format!("name one ({module}/VERSION) or pass --all")));
            }
            v
        }
    };
    if versions.is_empty() {
        return Err(Error::usage(format!("module `{module}` is not registered"))
            .hint("`kmx status` lists registered modules"));
    }
    let installs = store.installs_all()?;
    for v in &versions {
        let copy = store.source_copy(&module, v);
        let known = copy.is_dir() || store.built().join(&module).join(v).is_dir();
        if !known {
            return Err(Error::usage(format!("{module} {v} is not registered"))
                .hint("`kmx status` lists registered modules"));
        }
        for rec in installs
            .iter()
            .filter(|r| r.module == module && r.version == *v)
        {
            let key = rec.key();
            let root = rec.root.clone();
            match install::uninstall(store, rec.clone(), !no_depmod, None)? {
                install::Uninstalled::Removed => {
                    eprintln!("uninstalled {key} from {}", root.display())
                }
                install::Uninstalled::RootGone => eprintln!("{}", root_gone(&key, &root)),
            }
        }
        if copy.is_dir()
            && let Ok(spec) = evaluate_generic(
                &copy,
                Default::default(),
                &crate::config::manifest::Given::both(&module, v),
            )
            && let Some(line) = &spec.post_remove
        {
            warn_on_failure("POST_REMOVE", line, &copy);
        }
        for base in [store.built(), store.sources(), store.dir.join("failed")] {
            let dir = base.join(&module).join(v);
            if dir.exists() {
                // Renamed first so a crash never leaves a half-deleted directory that looks live.
                let gone = base.join(&module).join(format!(".removing-{v}"));
                let _ = std::fs::remove_dir_all(&gone);
                std::fs::rename(&dir, &gone).map_err(|e| Error::io("remove", &dir, e))?;
                std::fs::remove_dir_all(&gone).map_err(|e| Error::io("remove", &gone, e))?;
            }
            let _ = std::fs::remove_dir(base.join(&module));
        }
        eprintln!("removed {module} {v}");
    }
    Ok(exit::OK)
}

/// Run a source hook (POST_ADD, POST_REMOVE) from the source copy: as in DKMS, its failure is
/// a warning, since what it follows has already happened.
fn warn_on_failure(name: &str, line: &str, dir: &Path) {
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(line).current_dir(dir);
    if let Err(e) = process::output(&mut cmd, Kind::Failed) {
        eprintln!("warning: {name}: {}", crate::error::render_inline(&e));
    }
}

pub fn status(
    ctx: &Context,
    filter: &crate::lifecycle::status::Filter,
    format: crate::cli::StatusFormat,
    json: bool,
) -> Result<i32> {
    let all = crate::lifecycle::status::lines(&ctx.store)?;
    let known = !all.is_empty();
    let out = filter.apply(all);
    if json {
        print_json("status", &serde_json::json!({ "lines": out }))?;
        return Ok(exit::OK);
    }
    if format == crate::cli::StatusFormat::Dkms {
        // DKMS's arch is the target's `dkms_arch`; a target this machine has no profile
        // for (a build imported from a tarball) shows under its own name.
        let mut printed = std::collections::HashSet::new();
        for l in &out {
            let target = l.target.as_deref().unwrap_or("");
            let arch = ctx
                .profiles
                .target(target)
                .map_or(target, |t| t.dkms_arch.as_str());
            // Several failed kernels of one module are one `added` line, as in DKMS.
            if let Some(line) = crate::lifecycle::status::dkms_line(l, arch)
                && printed.insert(line.clone())
            {
                println!("{line}");
            }
        }
        return Ok(exit::OK);
    }
    if out.is_empty() {
        match known {
            true => println!("no module matches (kmx status without filters lists them all)"),
            false => println!("no modules registered (kmx add DIR registers one)"),
        }
        return Ok(exit::OK);
    }
    let rows: Vec<[String; 5]> = out
        .iter()
        .map(|l| {
            let mut st = l.state.clone();
            let roots: Vec<String> = l
                .installed
                .iter()
                .map(|i| match i.state.as_str() {
                    "installed" => i.root.display().to_string(),
                    other => format!(
                        "{} ({other}: re-run kmx install or uninstall)",
                        i.root.display()
                    ),
                })
                .collect();
            if !roots.is_empty() {
                st.push_str(&format!(" in {}", roots.join(", ")));
            }
            if l.built
                && let Some(from) = &l.built_from
                && from != "build"
            {
                st.push_str(&format!(" (from {from})"));
            }
            if l.stale {
                st.push_str(" [stale: source changed since the build]");
            }
            if !l.broken.is_empty() {
                st.push_str(&format!(" [broken: {}]", l.broken.join("; ")));
            }
            if let Some(f) = &l.failed {
                if l.state != "failed" {
                    st.push_str(" [last build failed]");
                }
                st.push_str(&format!(": {} (log: {})", f.reason, f.log.display()));
            }
            [
                l.module.clone(),
                l.version.clone(),
                l.target.clone().unwrap_or_else(|| "-".into()),
                l.kernel.clone().unwrap_or_else(|| "-".into()),
                st,
            ]
        })
        .collect();
    let head = ["MODULE", "VERSION", "TARGET", "KERNEL", "STATUS"];
    let w: Vec<usize> = (0..4)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let print = |r: [&str; 5]| {
        println!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
    };
    print(head);
    for r in &rows {
        print([&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
    Ok(exit::OK)
}

/// `kmx status --check`: the store's consistency, one line per problem on stdout.
pub fn check(store: &Store) -> Result<i32> {
    let problems = store.check();
    for p in &problems {
        println!("{p}");
    }
    if problems.is_empty() {
        eprintln!("state store {} is consistent", store.dir.display());
        Ok(exit::OK)
    } else {
        eprintln!(
            "{} problem(s) in the state store {}",
            problems.len(),
            store.dir.display()
        );
        Ok(exit::FAILED)
    }
}

pub fn autoinstall(
    ctx: &Context,
    store: &Store,
    args: &AutoinstallArgs,
    wait: bool,
) -> Result<i32> {
    let root = install::resolve_root(&args.root)?;
    let sign = sign_key(ctx, &args.sign)?;
    let pause = pause_at();
    let _lock = store.lock(wait)?;
    let releases = match &args.kernel {
        Some(k) => vec![k.clone()],
        // `dkms autoinstall` with no -k: the running kernel.
        None if root == Path::new("/") => vec![running_kernel()?],
        None => image::releases(&root),
    };
    if releases.is_empty() {
        eprintln!(
            "nothing to install: the image {} has no kernel in lib/modules",
            root.display()
        );
        return Ok(exit::OK);
    }
    let mut code = exit::OK;
    for release in &releases {
        code = code.max(autoinstall_release(
            ctx, store, args, &root, release, &sign, &pause,
        )?);
        if code == exit::INTERRUPTED {
            break;
        }
    }
    Ok(code)
}

#[allow(clippy::too_many_arguments)]
fn autoinstall_release(
    ctx: &Context,
    store: &Store,
    args: &AutoinstallArgs,
    root: &Path,
    release: &String,
    sign: &Option<SignKey>,
    pause: &Option<String>,
) -> Result<i32> {
    // The newest registered version of each module.
    let mut newest: BTreeMap<String, String> = BTreeMap::new();
    for s in store.sources_all()? {
        let keep = newest
            .get(&s.module)
            .is_none_or(|v| crate::config::manifest::compare_versions(&s.version, v).is_gt());
        if keep {
            newest.insert(s.module.clone(), s.version.clone());
        }
    }
    let mut results: Vec<(CellKey, Result<Prep>)> = Vec::new();
    if !newest.is_empty() {
        let mut notes = Vec::new();
        let targets = setup_targets_in(
            &ctx.profiles,
            &ctx.home,
            &[],
            std::slice::from_ref(release),
            root,
            &mut notes,
        )?;
        for n in notes
            .iter()
            // Targets with no tree of this release (or none at all) are not news here.
            .filter(|n| !n.is_missing_tree())
        {
            eprintln!("{n}");
        }
        let exec = Options {
            jobs: args.jobs,
            // The same build cache as `kmx build`: a cell built there is not built again.
            cache: Some(Cache::new(ctx.home.cell_cache(), DEFAULT_MAX_BYTES)),
            ..Options::default()
        };
        let want = |c: &Cell| c.spec.autoinstall && c.tree.release == *release;
        let sources: Vec<(String, String)> = newest.into_iter().collect();
        results = prepare(
            store,
            &sources,
            &targets,
            &want,
            &exec,
            &mut Printer::default(),
        );
    }
    // Binary-only modules (from tarballs) built for this kernel.
    for b in store.built_all()? {
        if b.release == *release
            && b.autoinstall
            && store.load_source(&b.module, &b.version)?.is_none()
            && !results.iter().any(|(k, _)| k.module == b.module)
        {
            results.push((
                b.key(),
                prepare_binary(&ctx.profiles, &ctx.home, store, &b.key()),
            ));
        }
    }
    if results.is_empty() {
        eprintln!(
            "nothing to install for {}: no registered module has AUTOINSTALL=yes",
            release
        );
        return Ok(exit::OK);
    }
    let sign = sign.clone().or_else(|| machine_sign(ctx, root, &results));
    let sign = &sign;
    let (mut installed, mut skipped, mut failed) = (0, 0, Vec::new());
    for (key, prep) in results {
        let outcome = match prep {
            Ok(Prep::Skipped(reason)) => {
                skipped += 1;
                eprintln!("skipped {key}: {reason}");
                continue;
            }
            Ok(Prep::Ready(ready)) if install::is_installed(store, root, &ready.record) => {
                installed += 1;
                eprintln!("{key}: already installed");
                continue;
            }
            Ok(Prep::Ready(ready)) => do_install(store, root, &ready, !args.no_depmod, sign, pause),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(inst) => {
                installed += 1;
                eprintln!("{}", describe_install(&key, &inst));
            }
            Err(e) => {
                eprintln!("FAILED {key}: {}", crate::error::render_inline(&e));
                failed.push(key.to_string());
            }
        }
    }
    eprintln!(
        "\nautoinstall for {} into {}: {installed} installed, {skipped} skipped, {} failed{}",
        release,
        root.display(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed.join("; "))
        }
    );
    Ok(if interrupted() {
        exit::INTERRUPTED
    } else if failed.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    })
}

pub fn keys_generate(ctx: &Context, dir: Option<PathBuf>, cn: &str, force: bool) -> Result<i32> {
    let dir = dir.unwrap_or_else(|| ctx.home.root.join("keys"));
    let k = install::mok::generate(&dir, cn, force)?;
    println!("{}", k.key.display());
    println!("{}", k.cert.display());
    eprintln!(
        "generated a signing key pair (RSA 2048, codeSigning) in {}; to load signed modules on a machine with Secure Boot, enroll the certificate: mokutil --import {}",
        dir.display(),
        k.cert.display()
    );
    Ok(exit::OK)
}

pub fn tarball(
    store: &Store,
    module: Option<&str>,
    targets: &[String],
    output: &Path,
) -> Result<i32> {
    let cells = select_built(store, module, targets, &[])?;
    let n = tarball_create(store, &cells, output)?;
    for c in &cells {
        eprintln!("  {}", c.key());
    }
    eprintln!(
        "wrote {}: {} cells, {n} files",
        output.display(),
        cells.len()
    );
    Ok(exit::OK)
}

/// The built cells in the store that `tarball` and `package` export: MODULE[/VERSION],
/// targets and kernel releases (empty: all). None is an error.
fn select_built(
    store: &Store,
    module: Option<&str>,
    targets: &[String],
    kernels: &[String],
) -> Result<Vec<BuiltRecord>> {
    let filter = module.map(split_module).transpose()?;
    let cells: Vec<BuiltRecord> = store
        .built_all()?
        .into_iter()
        .filter(|b| {
            filter
                .as_ref()
                .is_none_or(|(m, v)| b.module == *m && v.as_ref().is_none_or(|v| *v == b.version))
                && (targets.is_empty() || targets.contains(&b.target))
                && (kernels.is_empty() || kernels.contains(&b.release))
        })
        .collect();
    if cells.is_empty() {
        if let Some((m, v)) = &filter {
            let versions = store.versions_of(m)?;
            let known = match v {
                Some(v) => versions.contains(v),
                None => !versions.is_empty(),
            };
            if !known {
                let what = v.as_ref().map_or(m.clone(), |v| format!("{m} {v}"));
                return Err(
                    Error::usage(format!("module `{what}` is not registered")).hint(
                        "`kmx status` lists registered modules; register one with `kmx add DIR`",
                    ),
                );
            }
        }
        return Err(Error::usage("nothing built matches; nothing to export")
            .hint("`kmx status` lists what is built; `kmx install` builds"));
    }
    Ok(cells)
}

/// The Debian architecture of the target `c` was built for: its profile's `[debian] arch`.
fn debian_arch(ctx: &Context, c: &BuiltRecord) -> Result<String> {
    let profile = ctx
        .profiles
        .target(&c.target)
        .map_err(|e| e.caused_by(format!("{} was built for target `{}`", c.key(), c.target)))?;
    profile
        .debian
        .as_ref()
        .map(|d| d.arch.clone())
        .ok_or_else(|| {
            Error::config(
                &profile.file,
                format!(
                    "target `{}` has no [debian] table, so kmx does not know its Debian architecture",
                    c.target
                ),
            )
            .hint("pass --arch (the dpkg architecture, e.g. --arch arm64), or add `[debian]` with `arch` and the kernel `flavour` to the profile")
        })
}

/// `kmx package --format deb`: one Debian package per built cell, its modules prepared
/// exactly as `kmx install` prepares them.
pub fn package(ctx: &Context, store: &Store, args: &PackageArgs) -> Result<i32> {
    let PackageFormat::Deb = args.format;
    let cells = select_built(store, args.module.as_deref(), &args.target, &args.kernel)?;
    let sign = sign_key(ctx, &args.sign)?;
    // Everything is checked before the first package is written: a Debian architecture
    // for every target (--arch, or its profile's), names and versions Debian accepts, and
    // no two cells making the same package.
    let mut plan = Vec::new();
    let mut names: BTreeMap<String, CellKey> = BTreeMap::new();
    for c in &cells {
        let arch = match &args.arch {
            Some(arch) => install::deb::check_arch(arch)?,
            None => debian_arch(ctx, c)?,
        };
        let deb = install::deb::package_name(&c.module, &c.release)?;
        let version = install::deb::check_version(&c.module, &c.version)?;
        let file = install::deb::file_name(&deb, &version, &arch);
        if let Some(other) = names.insert(file.clone(), c.key()) {
            return Err(
                Error::usage(format!("{} and {} would both be {file}", other, c.key()))
                    .hint("package one of them at a time (-t TARGET)"),
            );
        }
        plan.push((c, arch));
    }
    std::fs::create_dir_all(&args.output)
        .map_err(|e| Error::io("create directory", &args.output, e))?;
    let mut written = Vec::new();
    for (c, arch) in plan {
        let Prep::Ready(ready) = prepare_binary(&ctx.profiles, &ctx.home, store, &c.key())? else {
            continue;
        };
        let opts = install::Options {
            sign: sign.clone(),
            sign_file: ready.sign_file.clone(),
            ..install::Options::default()
        };
        let meta = install::deb::Meta {
            arch,
            depends: args.depends.replace("{release}", &c.release),
            maintainer: args.maintainer.clone(),
        };
        let w = install::deb::write(&ready.record, &ready.cell_dir, &opts, &meta, &args.output)?;
        eprintln!(
            "packaged {}: {}{}",
            c.key(),
            w.file.display(),
            if w.signed { " (signed)" } else { "" }
        );
        for n in &w.notes {
            eprintln!("  note: {n}");
        }
        if args.json {
            written.push(serde_json::json!({
                "module": c.module,
                "version": c.version,
                "target": c.target,
                "kernel": c.release,
                "file": std::path::absolute(&w.file).unwrap_or(w.file.clone()),
                "signed": w.signed,
                "notes": w.notes,
            }));
        } else {
            println!("{}", w.file.display());
        }
    }
    let n = names.len();
    eprintln!(
        "wrote {} into {}",
        crate::matrix::pipeline::count(n, "Debian package"),
        args.output.display()
    );
    if args.json {
        super::print_json(
            "package",
            &serde_json::json!({
                "output": std::path::absolute(&args.output).unwrap_or(args.output.clone()),
                "packages": written,
            }),
        )?;
    }
    Ok(exit::OK)
}

fn tarball_create(store: &Store, cells: &[BuiltRecord], output: &Path) -> Result<usize> {
    crate::install::tarball::create(store, cells, output)
}

pub fn load_tarball(store: &Store, file: &Path, wait: bool) -> Result<i32> {
    let _lock = store.lock(wait)?;
    let cells = crate::install::tarball::load(store, file)?;
    for c in &cells {
        eprintln!("imported {}", c.key());
    }
    eprintln!(
        "loaded {} from {}",
        crate::matrix::pipeline::count(cells.len(), "cell"),
        file.display()
    );
    Ok(exit::OK)
}

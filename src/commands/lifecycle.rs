//! The lifecycle commands, DKMS's words: `add`, `install`, `uninstall`, `unbuild`, `remove`,
//! `status`, `autoinstall`, `keys generate`, `package`, `tarball`, `load-tarball`. Each
//! resolves its arguments into a request once, takes nothing else from the command line,
//! calls its use case in [`crate::lifecycle`], and prints what it says (text on stderr, or
//! `--json` on stdout). `kmx dkms` prints its steps with the same printers.

use std::path::{Path, PathBuf};

use super::progress::Printer;
use super::{Context, print_json, split_module};
use crate::cli::{
    AutoinstallArgs, InstallArgs, PackageArgs, PackageFormat, SignArgs, UninstallArgs,
};
use crate::error::{Error, Result, exit, render_inline};
use crate::install::{self, SignKey};
use crate::lifecycle::status::{LineState, RootState};
use crate::lifecycle::{
    Env, KeyChoice, Run, autoinstall as auto, install as inst, package as pkg, register,
    remove as rm, running_kernel,
};
use crate::state::store::{CellKey, Origin, Store};

impl Context {
    /// What the lifecycle's use cases work in.
    pub fn env(&self) -> Env<'_> {
        Env {
            profiles: &self.profiles,
            home: &self.home,
            store: &self.store,
        }
    }
}

/// Read once per command: the test hook that pauses an install at a named step.
fn pause_at() -> Option<String> {
    std::env::var("KMX_TEST_PAUSE_AT")
        .ok()
        .filter(|s| !s.is_empty())
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

/// How an install runs: `jobs`, `depmod`, the key `sign` names (else kmx's home's), the
/// test hook, and whether to wait for the store's lock.
pub(super) fn run_of(
    ctx: &Context,
    jobs: Option<usize>,
    depmod: bool,
    sign: &SignArgs,
    wait: bool,
) -> Result<Run> {
    Ok(Run {
        jobs,
        depmod,
        sign: sign_key(ctx, sign)?,
        pause_at: pause_at(),
        wait,
    })
}

/// `kmx add DIR`: register a source under the name and version DKMS would give it: `given`
/// (DKMS's `-m NAME -v VERSION`) where set, else as [`crate::config::dkms`] decides.
pub fn add(
    store: &Store,
    source: &Path,
    mode: crate::sandbox::Mode,
    wait: bool,
    given: &crate::config::manifest::Given,
    json: bool,
) -> Result<i32> {
    let a = register::add(store, source, mode, wait, given)?;
    print_added(&a);
    if json {
        // docs/schemas/kmx.add-1.json
        print_json(
            "add",
            &serde_json::json!({
                "module": a.module,
                "version": a.version,
                "source": a.source,
                "copy": a.copy,
                "action": a.action.word(),
            }),
        )?;
    }
    Ok(exit::OK)
}

/// What an add did.
pub(super) fn print_added(a: &register::Added) {
    let (m, v) = (&a.module, &a.version);
    if let Some(h) = &a.hook_failed {
        eprintln!("warning: {}: {}", h.name, render_inline(&h.error));
    }
    match a.action {
        register::Action::Unchanged => {
            eprintln!("{m} {v} is already registered with the same content")
        }
        register::Action::Refreshed => eprintln!(
            "refreshed {m} {v} from {}: its builds are stale until rebuilt (kmx install does)",
            a.source.display()
        ),
        register::Action::Added => eprintln!(
            "added {m} {v} from {} (copied to {})",
            a.source.display(),
            a.copy.display()
        ),
    }
}

/// What an install says of the machine's signing key.
fn print_key(k: &KeyChoice) {
    match k {
        KeyChoice::Machine(k) => eprintln!("{}", k.describe()),
        KeyChoice::NoKey(e) => {
            eprintln!("warning: no key to sign modules with: {}", render_inline(e))
        }
    }
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

/// `kmx install`'s arguments, resolved.
pub fn install_cmd(ctx: &Context, args: &InstallArgs, wait: bool) -> Result<i32> {
    let (module, version) = split_module(&args.module)?;
    let root = install::resolve_root(&args.root)?;
    let run = run_of(ctx, args.jobs, !args.no_depmod, &args.sign, wait)?;
    let target = match &args.target {
        Some(t) => Some(ctx.profiles.target(t)?.name.clone()),
        None => None,
    };
    let req = inst::Request {
        module,
        version,
        target,
        kernel: args.kernel.clone(),
        root,
        create: args.create,
    };
    install(ctx, &req, &run, args.json)
}

/// Install as `req` asks, and print what was done.
fn install(ctx: &Context, req: &inst::Request, run: &Run, json: bool) -> Result<i32> {
    let out = inst::install(
        ctx.env(),
        req,
        run,
        &mut Printer::default(),
        &mut print_install,
    )?;
    if json {
        let installed: Vec<serde_json::Value> = out
            .installed
            .iter()
            .map(|(key, inst)| installed_json(key, inst))
            .collect();
        let skipped: Vec<serde_json::Value> = out
            .skipped
            .iter()
            .map(|(key, reason)| serde_json::json!({ "kernel": key.release, "reason": reason }))
            .collect();
        print_json(
            "install",
            &serde_json::json!({
                "module": out.module,
                "version": out.version,
                "target": out.target,
                "root": req.root,
                "installed": installed,
                "skipped": skipped,
                "interrupted": out.interrupted,
            }),
        )?;
    }
    Ok(if out.interrupted {
        exit::INTERRUPTED
    } else {
        exit::OK
    })
}

/// What an install says of a step.
pub(super) fn print_install(e: inst::Event) {
    match e {
        inst::Event::Note(n) => eprintln!("{n}"),
        inst::Event::Key(k) => print_key(k),
        inst::Event::Skipped { key, reason } => {
            eprintln!("nothing to install: {key} is skipped by a rule: {reason}")
        }
        inst::Event::Installed { key, installed } => {
            eprintln!("{}", describe_install(key, installed))
        }
        inst::Event::Interrupted => {
            eprintln!("interrupted (the install above had started and was completed first)")
        }
    }
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

/// What `uninstall`, `unbuild` and `remove` say of a step; `restored`: say how many
/// displaced modules an uninstall put back (`kmx uninstall` does).
pub(super) fn print_down(e: rm::Event, restored: bool) {
    match e {
        rm::Event::Uninstalled {
            key,
            root,
            restored: n,
        } => eprintln!(
            "uninstalled {key} from {}{}",
            root.display(),
            if restored && n > 0 {
                format!(" (restored {n} displaced module(s))")
            } else {
                String::new()
            }
        ),
        rm::Event::RootGone { key, root } => eprintln!(
            "{} no longer exists: forgot the install of {key} there (nothing to remove)",
            root.display()
        ),
        rm::Event::Unbuilt(key) => eprintln!("unbuilt {key}"),
        rm::Event::Hook(h) => eprintln!("warning: {}: {}", h.name, render_inline(&h.error)),
        rm::Event::Removed { module, version } => eprintln!("removed {module} {version}"),
    }
}

pub fn uninstall_cmd(store: &Store, args: &UninstallArgs, wait: bool) -> Result<i32> {
    uninstall(store, &uninstall_request(args)?, !args.no_depmod, wait)
}

/// `kmx uninstall`'s arguments, resolved: DKMS's default kernel is the running one; an
/// image's is every kernel it has.
fn uninstall_request(args: &UninstallArgs) -> Result<rm::UninstallRequest> {
    let (module, version) = match &args.module {
        Some(m) => {
            let (m, v) = split_module(m)?;
            (Some(m), v)
        }
        None => (None, None),
    };
    let root = install::resolve_root_for_uninstall(&args.root)?;
    let kernel = match &args.kernel {
        Some(k) => Some(k.clone()),
        None if root == Path::new("/") => Some(running_kernel()?),
        None => None,
    };
    Ok(rm::UninstallRequest {
        module,
        version,
        kernel,
        target: args.target.clone(),
        root,
        all: args.all,
    })
}

/// Uninstall as `req` asks, and print what was done.
fn uninstall(store: &Store, req: &rm::UninstallRequest, depmod: bool, wait: bool) -> Result<i32> {
    let pause = pause_at();
    let n = rm::uninstall(store, req, depmod, pause.as_deref(), wait, &mut |e| {
        print_down(e, true)
    })?;
    if n == 0 {
        eprintln!(
            "nothing to uninstall: kmx installed nothing matching for {} in {}",
            req.kernel.as_deref().unwrap_or("any kernel"),
            req.root.display()
        );
    }
    Ok(exit::OK)
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
    let req = rm::UnbuildRequest {
        module,
        version,
        kernel,
        target: target.map(str::to_string),
    };
    rm::unbuild_builds(store, &req, !no_depmod, wait, &mut |e| print_down(e, false))?;
    Ok(exit::OK)
}

/// `kmx remove`: MODULE[/VERSION] out of every root and the store.
pub fn remove_cmd(
    store: &Store,
    module_arg: &str,
    all: bool,
    no_depmod: bool,
    wait: bool,
) -> Result<i32> {
    let (module, version) = split_module(module_arg)?;
    rm::remove(store, &module, version, all, !no_depmod, wait, &mut |e| {
        print_down(e, false)
    })?;
    Ok(exit::OK)
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
            let mut st = l.state.to_string();
            let roots: Vec<String> = l
                .installed
                .iter()
                .map(|i| match i.state {
                    RootState::Installed => i.root.display().to_string(),
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
                && let Some(from @ Origin::Tarball(_)) = &l.built_from
            {
                st.push_str(&format!(" (from {from})"));
            }
            if l.stale {
                st.push_str(" [stale: source changed since the build]");
            }
            if !l.broken.is_empty() {
                let broken: Vec<String> = l.broken.iter().map(|b| b.to_string()).collect();
                st.push_str(&format!(" [broken: {}]", broken.join("; ")));
            }
            if let Some(f) = &l.failed {
                if l.state != LineState::Failed {
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

pub fn autoinstall_cmd(ctx: &Context, args: &AutoinstallArgs, wait: bool) -> Result<i32> {
    let root = install::resolve_root(&args.root)?;
    let run = run_of(ctx, args.jobs, !args.no_depmod, &args.sign, wait)?;
    autoinstall(ctx, &root, args.kernel.as_deref(), &run)
}

/// Autoinstall into `root` for `kernel` (`None`: the running one, or an image's every
/// kernel), and print what was done.
fn autoinstall(ctx: &Context, root: &Path, kernel: Option<&str>, run: &Run) -> Result<i32> {
    let out = auto::autoinstall(
        ctx.env(),
        root,
        kernel,
        run,
        &mut Printer::default(),
        &mut print_auto,
    )?;
    Ok(if out.interrupted {
        exit::INTERRUPTED
    } else if out.failed() {
        exit::FAILED
    } else {
        exit::OK
    })
}

/// What an autoinstall says of a step.
pub(super) fn print_auto(e: auto::Event) {
    match e {
        auto::Event::NoKernel(root) => eprintln!(
            "nothing to install: the image {} has no kernel in lib/modules",
            root.display()
        ),
        auto::Event::Note(n) => eprintln!("{n}"),
        auto::Event::Nothing(release) => {
            eprintln!("nothing to install for {release}: no registered module has AUTOINSTALL=yes")
        }
        auto::Event::Key(k) => print_key(k),
        auto::Event::Skipped { key, reason } => eprintln!("skipped {key}: {reason}"),
        auto::Event::AlreadyInstalled(key) => eprintln!("{key}: already installed"),
        auto::Event::Installed { key, installed } => {
            eprintln!("{}", describe_install(key, installed))
        }
        auto::Event::Failed { key, error } => {
            eprintln!("FAILED {key}: {}", render_inline(error))
        }
        auto::Event::Done(s) => {
            let failed: Vec<String> = s.failed.iter().map(CellKey::to_string).collect();
            eprintln!(
                "\nautoinstall for {} into {}: {} installed, {} skipped, {} failed{}",
                s.release,
                s.root.display(),
                s.installed,
                s.skipped,
                failed.len(),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", failed.join("; "))
                }
            )
        }
    }
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

/// MODULE[/VERSION], targets and kernels as a selection of built cells.
fn selection(
    module: Option<&str>,
    targets: &[String],
    kernels: &[String],
) -> Result<pkg::Selection> {
    Ok(pkg::Selection {
        module: module.map(split_module).transpose()?,
        targets: targets.to_vec(),
        kernels: kernels.to_vec(),
    })
}

pub fn tarball(
    store: &Store,
    module: Option<&str>,
    targets: &[String],
    output: &Path,
) -> Result<i32> {
    let (cells, n) = pkg::tarball(store, &selection(module, targets, &[])?, output)?;
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

/// `kmx package --format deb`: one Debian package per built cell, its modules prepared
/// exactly as `kmx install` prepares them.
pub fn package(ctx: &Context, args: &PackageArgs) -> Result<i32> {
    let PackageFormat::Deb = args.format;
    let req = pkg::DebRequest {
        selection: selection(args.module.as_deref(), &args.target, &args.kernel)?,
        arch: args.arch.clone(),
        depends: args.depends.clone(),
        maintainer: args.maintainer.clone(),
        output: args.output.clone(),
        sign: sign_key(ctx, &args.sign)?,
    };
    let mut written = Vec::new();
    let n = pkg::debs(ctx.env(), &req, &mut |c, w| {
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
    })?;
    eprintln!(
        "wrote {} into {}",
        crate::matrix::pipeline::count(n, "Debian package"),
        args.output.display()
    );
    if args.json {
        print_json(
            "package",
            &serde_json::json!({
                "output": std::path::absolute(&args.output).unwrap_or(args.output.clone()),
                "packages": written,
            }),
        )?;
    }
    Ok(exit::OK)
}

pub fn load_tarball(store: &Store, file: &Path, wait: bool) -> Result<i32> {
    let cells = pkg::load_tarball(store, file, wait)?;
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

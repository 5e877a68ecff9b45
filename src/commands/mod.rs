//! The commands: each turns resolved flags into work and output. Workers elsewhere never
//! print; commands do.

pub mod build;
mod compat;
mod context;
mod dkms;
mod docs;
mod doctor;
mod kernels;
mod lifecycle;
mod progress;
mod provenance;
mod smoke;
mod verify;

pub use context::Context;
pub(crate) use context::{given_of, print_json, split_module};

use crate::cli::{Cli, Cmd, KernelsCmd, KeysCmd, ProvenanceCmd, ReportCmd};
use crate::error::Result;

/// Run a command; the result is the exit code.
pub fn run(cli: Cli) -> Result<i32> {
    // Every temporary file or directory made without a place of its own goes under this
    // run's `.kmx-tmp-<pid>-...` directory, removed at the end of the run, or by the next
    // one if this one is killed.
    let _tmp = crate::state::tmp::RunDir::enter();
    let code = run_in(cli);
    crate::process::end_guardian();
    code
}

fn run_in(cli: Cli) -> Result<i32> {
    // Generated from the command line alone: no profiles, no home.
    match &cli.command {
        Cmd::Completions { shell } => return docs::completions(*shell),
        Cmd::Man { out } => return docs::man(out),
        _ => {}
    }
    let ctx = Context::load(&cli)?;
    // kmx's own signing keys are a secret of the machine wherever its home is.
    crate::sandbox::hide_also(vec![ctx.home.root.join("keys")]);
    // dkms.conf evaluations, the sandbox probe and the trees' identities, kept for the next run.
    crate::config::memo::use_dir(ctx.home.root.join("cache").join("eval"));
    crate::sandbox::remember_probe(ctx.home.root.join("cache").join("sandbox-probe"));
    crate::matrix::pipeline::keep_tree_identities_in(ctx.home.root.join("cache").join("trees"));
    let wait = !cli.global.no_wait;
    let store = &ctx.store;
    // Commands that evaluate dkms.conf or build handle Ctrl-C, SIGTERM and SIGHUP from the
    // start, planning included: what bash started is killed, temporary files are removed,
    // and the exit code says interrupted. Other commands keep the default (die at once).
    if matches!(
        cli.command,
        Cmd::Add { .. }
            | Cmd::Install(_)
            | Cmd::Autoinstall(_)
            | Cmd::Build(_)
            | Cmd::Dkms(_)
            | Cmd::Provenance(_)
    ) {
        crate::process::stop_flag()?;
    }
    match cli.command {
        Cmd::Add {
            source,
            sandbox,
            given,
            json,
        } => lifecycle::add(
            store,
            &source,
            sandbox.into(),
            wait,
            &given_of(&given)?,
            json,
        ),
        Cmd::Install(args) => lifecycle::install_cmd(&ctx, &args, wait),
        Cmd::Uninstall(args) => lifecycle::uninstall_cmd(store, &args, wait),
        Cmd::Remove {
            module,
            all,
            no_depmod,
        } => lifecycle::remove_cmd(store, &module, all, no_depmod, wait),
        Cmd::Unbuild {
            module,
            kernel,
            target,
            all,
            no_depmod,
        } => lifecycle::unbuild_cmd(
            store,
            &module,
            kernel.as_deref(),
            target.as_deref(),
            all,
            no_depmod,
            wait,
        ),
        Cmd::Status { check: true, .. } => lifecycle::check(store),
        Cmd::Status {
            module,
            kernel,
            target,
            format,
            json,
            ..
        } => {
            let (module, version) = match module.as_deref().map(split_module).transpose()? {
                Some((m, v)) => (Some(m), v),
                None => (None, None),
            };
            let filter = crate::lifecycle::status::Filter {
                module,
                version,
                kernel,
                target,
            };
            lifecycle::status(&ctx, &filter, format, json)
        }
        Cmd::Autoinstall(args) => lifecycle::autoinstall_cmd(&ctx, &args, wait),
        Cmd::Dkms(args) => dkms::run(&ctx, &args, wait),
        Cmd::Keys(KeysCmd::Generate {
            dir,
            common_name,
            force,
        }) => lifecycle::keys_generate(&ctx, dir, &common_name, force),
        Cmd::Tarball {
            module,
            target,
            output,
        } => lifecycle::tarball(store, module.as_deref(), &target, &output),
        Cmd::Package(args) => lifecycle::package(&ctx, &args),
        Cmd::Completions { shell } => docs::completions(shell),
        Cmd::Man { out } => docs::man(&out),
        Cmd::LoadTarball { file } => lifecycle::load_tarball(store, &file, wait),
        Cmd::Build(args) => build::run(&ctx, &args, wait),
        Cmd::Cache(cmd) => build::cache(&ctx, &cmd),
        Cmd::Report(ReportCmd::Merge { reports, json }) => build::merge(&reports, json),
        Cmd::Provenance(ProvenanceCmd::Check {
            records,
            sources,
            keep,
        }) => provenance::check(&ctx, &records, &sources, keep.as_deref()),
        Cmd::Verify(args) => verify::run(&ctx, &args),
        Cmd::Kernels(KernelsCmd::Fetch(args)) => kernels::fetch(&ctx, &args),
        Cmd::Kernels(KernelsCmd::List { json, root }) => kernels::list(&ctx, json, &root),
        Cmd::Kernels(KernelsCmd::Remove { release, target }) => {
            kernels::remove(&ctx, &release, target.as_deref())
        }
        Cmd::Kernels(KernelsCmd::Prune { dry_run }) => kernels::prune(&ctx, dry_run),
        Cmd::Targets { json } => doctor::targets(&ctx, json),
        Cmd::Doctor { target, json, root } => doctor::doctor(&ctx, &target, json, &root),
        Cmd::Smoke {
            paths,
            target,
            kernel,
            timeout,
            enforced,
            json,
        } => smoke::smoke(
            &ctx,
            &paths,
            &enforced,
            (&target, kernel.as_deref()),
            timeout,
            json,
        ),
        Cmd::Compat {
            inputs,
            target,
            json,
            verbose,
        } => compat::compat(&ctx, &inputs, &target, json, verbose),
    }
}

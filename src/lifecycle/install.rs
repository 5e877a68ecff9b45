//! `install`: build (when missing or stale) and install one module version for a target,
//! into `/` for the kernel named, or into an image for the kernels it has that the target
//! can build for. Which target a bare `--kernel` means and which of an image's kernels to
//! install for are decided here ([`one_target`], [`image_kernels`]); tree lookups go
//! through [`crate::kernel::select`], so a missing tree is its [`NoSuchTree`].

use std::path::{Path, PathBuf};

use super::prepare::{Prep, prepare, prepare_binary};
use super::{Env, KeyChoice, Run, choose_key, install_ready, interrupted, pick_version};
use crate::error::{Error, Result};
use crate::install::{Installed, image};
use crate::kernel::registry::{Registry, trees_of};
use crate::kernel::select::{self, NoSuchTree, Purpose};
use crate::matrix::pipeline::{Cell, Progress, SetupNote, setup_targets_in};
use crate::state::store::CellKey;

/// `kmx install`, resolved.
#[derive(Debug, Clone)]
pub struct Request {
    pub module: String,
    /// `None`: the newest registered or built.
    pub version: Option<String>,
    /// The target (its profile's name); `None`: the one with a tree of `kernel`.
    pub target: Option<String>,
    pub kernel: Option<String>,
    /// The root to install into, canonical (`/`, or an image).
    pub root: PathBuf,
    /// Install into an image for `kernel` even when the image lacks it.
    pub create: bool,
}

/// A step of an install, as it happens.
pub enum Event<'a> {
    /// What setting up the targets found (a target left out, say).
    Note(&'a SetupNote),
    /// The machine's signing key, or why there is none.
    Key(&'a KeyChoice),
    /// A rule (BUILD_EXCLUSIVE) rules this kernel out.
    Skipped { key: &'a CellKey, reason: &'a str },
    Installed {
        key: &'a CellKey,
        installed: &'a Installed,
    },
    /// A signal arrived while the root was being written: the install it interrupted was
    /// finished first, and no further one is started.
    Interrupted,
}

/// What an install did.
pub struct Outcome {
    pub module: String,
    pub version: String,
    pub target: String,
    pub installed: Vec<(CellKey, Installed)>,
    /// The cells a rule skipped, with its reason.
    pub skipped: Vec<(CellKey, String)>,
    pub interrupted: bool,
}

pub fn install(
    env: Env,
    req: &Request,
    run: &Run,
    progress: &mut dyn Progress,
    on: &mut dyn FnMut(Event),
) -> Result<Outcome> {
    let (store, root) = (env.store, &req.root);
    let _lock = store.lock(run.wait)?;
    let module = &req.module;
    let version = pick_version(store, module, req.version.clone())?;
    let target = match (&req.target, &req.kernel) {
        (Some(t), _) => t.clone(),
        (None, Some(release)) => target_of_release(env, root, release, module, &version)?,
        (None, None) => {
            return Err(Error::usage(
                "name the target with --target or the kernel release with --kernel",
            ));
        }
    };
    let target = &target;
    let releases = releases_to_install(env, req, target, module, &version)?;
    // One plan for every release: dkms.conf is read and the cells are built (in parallel)
    // once, then each is installed.
    let preps: Vec<(CellKey, Result<Prep>)> = if store.load_source(module, &version)?.is_some() {
        let mut notes = Vec::new();
        let targets = setup_targets_in(
            env.profiles,
            env.home,
            std::slice::from_ref(target),
            &releases,
            root,
            &mut notes,
        )?;
        for n in &notes {
            on(Event::Note(n));
        }
        let want = |c: &Cell| c.target.target.name == *target && releases.contains(&c.tree.release);
        let mut preps = prepare(
            store,
            &[(module.clone(), version.clone())],
            &targets,
            &want,
            &run.build_options(env.home),
            progress,
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
                let prep = prepare_binary(env.profiles, env.home, store, &key);
                (key, prep)
            })
            .collect()
    };
    let sign = choose_key(env.home, root, &run.sign, &preps, &mut |k| {
        on(Event::Key(k))
    });
    let mut out = Outcome {
        module: module.clone(),
        version: version.clone(),
        target: target.clone(),
        installed: Vec::new(),
        skipped: Vec::new(),
        interrupted: false,
    };
    for (key, prep) in preps {
        match prep? {
            Prep::Skipped(reason) => {
                on(Event::Skipped {
                    key: &key,
                    reason: &reason,
                });
                out.skipped.push((key, reason));
            }
            Prep::Ready(ready) => {
                let inst = install_ready(store, root, &ready, run, &sign)?;
                on(Event::Installed {
                    key: &key,
                    installed: &inst,
                });
                out.installed.push((key, inst));
                // A signal while the root was being written: that install was finished
                // (never left half done); the exit code still says interrupted.
                if interrupted() {
                    on(Event::Interrupted);
                    out.interrupted = true;
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// Build the one cell `key` (DKMS's `build`: for a kernel installed in `root`), under the
/// store's lock; `force`: build it again even when it is built and current. The setup's
/// notes are not news there (the target and kernel were found installed).
pub fn build(
    env: Env,
    key: &CellKey,
    root: &Path,
    run: &Run,
    force: bool,
    progress: &mut dyn Progress,
) -> Result<Vec<(CellKey, Result<Prep>)>> {
    let _lock = env.store.lock(run.wait)?;
    let mut notes = Vec::new();
    let targets = setup_targets_in(
        env.profiles,
        env.home,
        std::slice::from_ref(&key.target),
        std::slice::from_ref(&key.release),
        root,
        &mut notes,
    )?;
    let mut exec = run.build_options(env.home);
    exec.force = force;
    let want = |c: &Cell| c.target.target.name == key.target && c.tree.release == key.release;
    Ok(prepare(
        env.store,
        &[(key.module.clone(), key.version.clone())],
        &targets,
        &want,
        &exec,
        progress,
    ))
}

/// The target `kmx install -k RELEASE` without --target installs for: the one whose kernel
/// trees (fetched, or installed in ROOT) or whose builds of the module provide RELEASE; of
/// several, the only one among the default targets (`arm64` for 6.1.0-50-arm64, which the
/// `rpi3` target builds against too).
fn target_of_release(
    env: Env,
    root: &Path,
    release: &str,
    module: &str,
    version: &str,
) -> Result<String> {
    let mut registry = Registry::load(env.home)?;
    registry.add_installed(env.profiles, root);
    let profiled: Vec<&str> = env.profiles.targets.keys().map(String::as_str).collect();
    let trees = select::registered(&registry, &profiled, release, Purpose::Install);
    let built: Vec<String> = env
        .store
        .built_all()?
        .into_iter()
        .filter(|b| b.module == module && b.version == version && b.release == release)
        .map(|b| b.target)
        .filter(|t| env.profiles.targets.contains_key(t))
        .collect();
    let names = match &trees {
        Ok(trees) => trees
            .iter()
            .map(|t| t.target.clone())
            .chain(built)
            .collect(),
        Err(_) => built,
    };
    match one_target(release, names, crate::config::load::DEFAULT_TARGETS)? {
        Some(one) => Ok(one),
        // No tree and no build of it: the trees there are, and how to get one.
        None => Err(trees.err().map_or_else(
            || Error::usage(format!("no target has a kernel tree of release {release}")),
            Error::from,
        )),
    }
}

/// Of the targets that provide a release (`names`, in any order, repeats allowed), the one
/// to install for: the only one, else the only default target among them; `None`: none
/// provides it.
pub fn one_target(
    release: &str,
    mut names: Vec<String>,
    defaults: &[&str],
) -> Result<Option<String>> {
    names.sort();
    names.dedup();
    let in_defaults: Vec<&String> = names
        .iter()
        .filter(|n| defaults.contains(&n.as_str()))
        .collect();
    match (names.as_slice(), in_defaults.as_slice()) {
        ([one], _) => Ok(Some(one.clone())),
        (_, [one]) => Ok(Some((*one).clone())),
        ([], _) => Ok(None),
        (many, _) => Err(Error::usage(format!(
            "several targets have a kernel tree of release {release}: {}",
            many.join(", ")
        ))
        .hint("name one with --target")),
    }
}

/// The kernels to install for: `--kernel`'s (which an image root must have, unless
/// `--create`), or every release the image has whose architecture is the target's and that
/// one of the target's trees (or a binary-only build) provides.
fn releases_to_install(
    env: Env,
    req: &Request,
    target: &str,
    module: &str,
    version: &str,
) -> Result<Vec<String>> {
    let root = &req.root;
    let target = env.profiles.target(target)?;
    let identity = env.profiles.toolchain_of(target)?.identity;
    let is_image = root != Path::new("/");
    if let Some(release) = &req.kernel {
        if is_image && !req.create && !image::has_release(root, release) {
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
    let (_, same_arch) = image::kernels_for(root, &target.name, identity)?;
    let mut registry = Registry::load(env.home)?;
    registry.add_installed(env.profiles, root);
    let mut provided: Vec<String> = trees_of(target, &registry)
        .iter()
        .filter_map(|r| crate::kernel::KernelTree::inspect(&r.kdir).ok())
        .map(|t| t.release)
        .collect();
    provided.extend(
        env.store
            .built_all()?
            .into_iter()
            .filter(|b| b.module == module && b.version == version && b.target == target.name)
            .map(|b| b.release),
    );
    Ok(image_kernels(&target.name, &same_arch, provided)?)
}

/// Of an image's kernels of the target's architecture (`same_arch`, in the image's order),
/// the ones `target` provides (a tree, or a build of the module): none is a [`NoSuchTree`]
/// naming what the target has.
pub fn image_kernels(
    target: &str,
    same_arch: &[String],
    mut provided: Vec<String>,
) -> std::result::Result<Vec<String>, NoSuchTree> {
    provided.sort();
    provided.dedup();
    let have = select::of_release(target, provided, same_arch, Purpose::Install)?;
    Ok(same_arch
        .iter()
        .filter(|r| have.contains(r))
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_release_one_target_provides_is_that_target_s() {
        let t = one_target(
            "6.1.0-57-amd64",
            s(&["amd64", "amd64"]),
            &["amd64", "arm64"],
        );
        assert_eq!(t.unwrap().as_deref(), Some("amd64"));
        // Not a default target: still the only one.
        let t = one_target("6.1.0-57-rpi", s(&["rpi3"]), &["amd64", "arm64"]);
        assert_eq!(t.unwrap().as_deref(), Some("rpi3"));
        assert_eq!(one_target("x", vec![], &["amd64"]).unwrap(), None);
    }

    #[test]
    fn of_several_targets_the_only_default_one_is_taken_else_it_is_an_error() {
        // rpi3 builds against arm64's trees too.
        let t = one_target("6.1.0-50-arm64", s(&["rpi3", "arm64"]), &["amd64", "arm64"]);
        assert_eq!(t.unwrap().as_deref(), Some("arm64"));
        let e = one_target("6.1.0-50-arm64", s(&["rpi3", "arm64"]), &["amd64"]).unwrap_err();
        assert_eq!(
            e.message,
            "several targets have a kernel tree of release 6.1.0-50-arm64: arm64, rpi3"
        );
        assert!(one_target("r", s(&["a", "b"]), &["a", "b"]).is_err());
    }

    #[test]
    fn an_image_gets_the_kernels_the_target_provides_in_the_image_s_order() {
        let image = s(&["6.1.0-57-amd64", "6.1.0-50-amd64", "6.12.95+deb12-amd64"]);
        let provided = s(&["6.12.95+deb12-amd64", "6.1.0-57-amd64", "6.1.0-57-amd64"]);
        assert_eq!(
            image_kernels("amd64", &image, provided).unwrap(),
            s(&["6.1.0-57-amd64", "6.12.95+deb12-amd64"])
        );
    }

    #[test]
    fn an_image_with_no_kernel_the_target_provides_is_no_such_tree() {
        let e =
            image_kernels("amd64", &s(&["6.1.0-40-amd64"]), s(&["6.1.0-57-amd64"])).unwrap_err();
        assert_eq!(e.releases, s(&["6.1.0-40-amd64"]));
        assert_eq!(e.target.as_deref(), Some("amd64"));
        assert_eq!(e.purpose, Purpose::Install);
        assert_eq!(
            e.to_string(),
            "target `amd64` has no kernel tree with release 6.1.0-40-amd64; kmx has 6.1.0-57-amd64 (amd64)"
        );
        assert!(
            e.hint()
                .contains("kmx kernels fetch --abi 6.1.0-40 --target amd64"),
            "{}",
            e.hint()
        );
    }
}

//! Tree selection: which of the trees a command has at hand are the ones asked for by
//! release (`--kernel`, `-k`), and the one error when none is, [`NoSuchTree`], which names
//! the releases there are and how to get the one asked for. `kmx build` (and `install`,
//! `autoinstall` through the pipeline), `verify`, `smoke`, `install` and `kernels remove`
//! all select here, so they all say the same thing. This decides and renders; it never
//! prints, reads no file and inspects no tree (the callers hand it what they have).

use std::fmt;

use crate::error::Error;
use crate::kernel::registry::{RegisteredTree, Registry};

/// Anything with a kernel release: a registered tree, an inspected one.
pub trait HasRelease {
    fn release(&self) -> &str;
}

impl HasRelease for RegisteredTree {
    fn release(&self) -> &str {
        &self.release
    }
}

impl HasRelease for crate::kernel::KernelTree {
    fn release(&self) -> &str {
        &self.release
    }
}

/// A release by itself (one a build of a module provides).
impl HasRelease for String {
    fn release(&self) -> &str {
        self
    }
}

impl<T: HasRelease> HasRelease for std::sync::Arc<T> {
    fn release(&self) -> &str {
        (**self).release()
    }
}

impl<T: HasRelease> HasRelease for &T {
    fn release(&self) -> &str {
        (**self).release()
    }
}

/// What the tree was wanted for: it words the hint (what to do with the trees there are,
/// and whether to fetch with the boot image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Build,
    Verify,
    /// The release a module was built for, among the trees of a `kmx verify` run: said in
    /// that module's kernel check (one line, its own advice), not as an error.
    ModuleRelease,
    Boot,
    /// The release a module given to `kmx smoke` was built for, among every target's
    /// trees: said as the module's error (`--target` boots it anyway).
    BootModule,
    Install,
    Remove,
}

/// One tree (release and target) that a [`NoSuchTree`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Have {
    pub release: String,
    pub target: String,
}

/// No tree of the targets asked of has a release asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoSuchTree {
    /// The releases asked for, in the order given (any one would do).
    pub releases: Vec<String>,
    /// The one target asked of; `None`: every target asked of (the default set, the
    /// targets given).
    pub target: Option<String>,
    /// The trees those targets have.
    pub have: Vec<Have>,
    /// Trees of the release asked for that other targets have (armhf's `-armmp` asked
    /// of arm64): the hint names their target.
    pub elsewhere: Vec<Have>,
    pub purpose: Purpose,
}

/// The trees of `target` with one of `releases` (all of them when `releases` is empty),
/// in their order; none is a [`NoSuchTree`] naming the releases `trees` have.
pub fn of_release<T: HasRelease>(
    target: &str,
    trees: Vec<T>,
    releases: &[String],
    purpose: Purpose,
) -> Result<Vec<T>, NoSuchTree> {
    if releases.is_empty() {
        return Ok(trees);
    }
    let have: Vec<Have> = trees
        .iter()
        .map(|t| Have {
            release: t.release().to_string(),
            target: target.to_string(),
        })
        .collect();
    let picked: Vec<T> = trees
        .into_iter()
        .filter(|t| releases.iter().any(|r| r == t.release()))
        .collect();
    if picked.is_empty() {
        return Err(NoSuchTree {
            releases: releases.to_vec(),
            target: Some(target.to_string()),
            have,
            elsewhere: Vec::new(),
            purpose,
        });
    }
    Ok(picked)
}

/// The registered trees of `targets` (every target when empty) with release `release`,
/// in registry order; none is a [`NoSuchTree`] naming the releases those targets have.
pub fn registered<'a>(
    registry: &'a Registry,
    targets: &[&str],
    release: &str,
    purpose: Purpose,
) -> Result<Vec<&'a RegisteredTree>, NoSuchTree> {
    let asked = |t: &RegisteredTree| targets.is_empty() || targets.contains(&t.target.as_str());
    let of: Vec<&RegisteredTree> = registry.trees.iter().filter(|t| asked(t)).collect();
    let picked: Vec<&RegisteredTree> = of
        .iter()
        .copied()
        .filter(|t| t.release == release)
        .collect();
    if !picked.is_empty() {
        return Ok(picked);
    }
    Err(NoSuchTree {
        releases: vec![release.to_string()],
        target: match targets {
            [one] => Some(one.to_string()),
            _ => None,
        },
        have: of
            .iter()
            .map(|t| Have {
                release: t.release.clone(),
                target: t.target.clone(),
            })
            .collect(),
        elsewhere: Vec::new(),
        purpose,
    }
    .elsewhere_in(registry))
}

impl NoSuchTree {
    /// The same releases asked of every target that failed: one error naming what each has.
    pub fn across(each: Vec<NoSuchTree>) -> Option<NoSuchTree> {
        let mut it = each.into_iter();
        let mut all = it.next()?;
        all.target = None;
        all.elsewhere.clear();
        for e in it {
            all.have.extend(e.have);
        }
        Some(all)
    }

    /// With the trees of the releases asked for that targets other than the one asked of
    /// have in `registry`.
    pub fn elsewhere_in(mut self, registry: &Registry) -> NoSuchTree {
        if let Some(target) = &self.target {
            self.elsewhere = registry
                .trees
                .iter()
                .filter(|t| t.target != *target && self.releases.contains(&t.release))
                .map(|t| Have {
                    release: t.release.clone(),
                    target: t.target.clone(),
                })
                .collect();
        }
        self
    }

    /// What to do: use one of the trees there are, take the other target's, or fetch
    /// Debian's trees of the release asked for.
    pub fn hint(&self) -> String {
        if self.purpose == Purpose::BootModule {
            return if self.have.is_empty() {
                "fetch kernels with `kmx kernels fetch --with-image`".to_string()
            } else {
                let known: Vec<String> = self
                    .have
                    .iter()
                    .map(|h| format!("{} ({})", h.release, h.target))
                    .collect();
                format!(
                    "pass --target to boot it anyway; known releases: {}",
                    known.join(", ")
                )
            };
        }
        if let Some(first) = self.elsewhere.first() {
            let theirs: Vec<String> = self
                .elsewhere
                .iter()
                .map(|h| format!("{} is target {}'s", h.release, h.target))
                .collect();
            let verb = match self.purpose {
                Purpose::Build => "build it",
                Purpose::Verify | Purpose::ModuleRelease => "check against it",
                Purpose::Boot | Purpose::BootModule => "boot it",
                Purpose::Install => "install for it",
                Purpose::Remove => "remove it",
            };
            return format!(
                "{}: {verb} with --target {}",
                theirs.join(", "),
                first.target
            );
        }
        let with_image = match self.purpose {
            Purpose::Boot => " --with-image",
            _ => "",
        };
        let target = self
            .target
            .as_ref()
            .map(|t| format!(" --target {t}"))
            .unwrap_or_default();
        let fetch = match self.releases.iter().find_map(|r| debian_abi(r)) {
            _ if self.purpose == Purpose::Remove => None,
            Some(abi) => Some(format!(
                "fetch Debian's {abi} trees with `kmx kernels fetch{with_image} --abi {abi}{target}`"
            )),
            None => Some("list its tree under [kernels] paths in a target profile".to_string()),
        };
        let extra = match self.purpose {
            Purpose::Verify => ", or pass --kdir DIR",
            _ => "",
        };
        if self.have.is_empty() {
            return match fetch {
                Some(f) => format!("{f}{extra}"),
                None => "`kmx kernels list` shows the known trees".to_string(),
            };
        }
        let verb = match self.purpose {
            Purpose::Build => "build for",
            Purpose::Verify | Purpose::ModuleRelease => "check against",
            Purpose::Boot | Purpose::BootModule => "boot",
            Purpose::Install => "install for",
            Purpose::Remove => "remove",
        };
        let mut hint = format!("{verb} one of those (`kmx kernels list` shows them)");
        if let Some(f) = fetch {
            hint.push_str(&format!(", or {f}"));
        }
        hint.push_str(extra);
        hint
    }
}

impl fmt::Display for NoSuchTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.purpose == Purpose::BootModule {
            return write!(
                f,
                "no known kernel tree has release `{}`, which the module was built for",
                self.releases.join(" or ")
            );
        }
        if self.purpose == Purpose::ModuleRelease {
            let trees: Vec<&str> = self.have.iter().map(|h| h.release.as_str()).collect();
            return write!(
                f,
                "no kernel tree of target {} has the module's release \"{}\" (trees: {}); pass --kernel RELEASE or --kdir DIR",
                self.target.as_deref().unwrap_or("given"),
                self.releases.join(" or "),
                trees.join(", ")
            );
        }
        match &self.target {
            Some(t) => write!(f, "target `{t}` has no kernel tree")?,
            None => write!(f, "no target has a kernel tree")?,
        }
        write!(f, " with release {}; kmx has ", self.releases.join(" or "))?;
        if self.have.is_empty() {
            return write!(f, "none");
        }
        let have: Vec<String> = self
            .have
            .iter()
            .map(|h| format!("{} ({})", h.release, h.target))
            .collect();
        write!(f, "{}", have.join(", "))
    }
}

impl std::error::Error for NoSuchTree {}

/// A missing kernel tree is the machine lacking something (exit 3); one asked to be
/// removed is a wrong argument (exit 2): there is nothing to remove, and so is a module
/// given to smoke for a kernel kmx does not know (`--target` boots it anyway).
impl From<NoSuchTree> for Error {
    fn from(e: NoSuchTree) -> Error {
        let kind = match e.purpose {
            Purpose::Remove | Purpose::BootModule => crate::error::Kind::Usage,
            _ => crate::error::Kind::Environment,
        };
        Error::new(kind, e.to_string()).hint(e.hint())
    }
}

/// The Debian kernel ABI of a Debian release (`6.1.0-51` of `6.1.0-51-arm64`), if it is one.
pub fn debian_abi(release: &str) -> Option<String> {
    let mut parts = release.splitn(3, '-');
    let (version, abi, _flavour) = (parts.next()?, parts.next()?, parts.next()?);
    let numeric = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    (version.split('.').count() == 3 && version.split('.').all(numeric) && numeric(abi))
        .then(|| format!("{version}-{abi}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn reg(trees: &[(&str, &str)]) -> Registry {
        Registry {
            trees: trees
                .iter()
                .map(|(target, release)| RegisteredTree {
                    target: target.to_string(),
                    release: release.to_string(),
                    kdir: PathBuf::from(format!("/t/{release}")),
                    origin: "debian bookworm".into(),
                    source: None,
                    abi: None,
                    boot: None,
                    installed: false,
                })
                .collect(),
        }
    }

    fn rendered(e: NoSuchTree) -> String {
        crate::error::render(&Error::from(e))
    }

    const TREES: &[(&str, &str)] = &[
        ("amd64", "6.1.0-50-amd64"),
        ("arm64", "6.1.0-50-arm64"),
        ("armhf", "6.1.0-50-armmp"),
        ("arm64", "6.1.0-57-arm64"),
    ];

    #[test]
    fn no_release_asked_for_keeps_every_tree_in_order() {
        let r = reg(TREES);
        let of: Vec<&RegisteredTree> = r.for_target("arm64").collect();
        let picked = of_release("arm64", of.clone(), &[], Purpose::Build).unwrap();
        assert_eq!(picked, of);
    }

    #[test]
    fn any_release_of_several_is_kept_in_tree_order() {
        let r = reg(TREES);
        let of: Vec<&RegisteredTree> = r.for_target("arm64").collect();
        let asked = ["6.1.0-57-arm64".to_string(), "6.1.0-50-arm64".to_string()];
        let picked = of_release("arm64", of, &asked, Purpose::Build).unwrap();
        let releases: Vec<&str> = picked.iter().map(|t| t.release.as_str()).collect();
        assert_eq!(releases, ["6.1.0-50-arm64", "6.1.0-57-arm64"]);
    }

    #[test]
    fn a_module_for_an_unknown_kernel_names_its_release_and_the_known_ones() {
        let none = NoSuchTree {
            releases: vec!["6.1.0-40-arm64".into()],
            target: None,
            have: vec![],
            elsewhere: vec![],
            purpose: Purpose::BootModule,
        };
        assert_eq!(
            none.to_string(),
            "no known kernel tree has release `6.1.0-40-arm64`, which the module was built for"
        );
        assert_eq!(
            none.hint(),
            "fetch kernels with `kmx kernels fetch --with-image`"
        );
        let some = NoSuchTree {
            have: vec![Have {
                release: "6.1.0-57-arm64".into(),
                target: "arm64".into(),
            }],
            ..none
        };
        assert_eq!(
            some.hint(),
            "pass --target to boot it anyway; known releases: 6.1.0-57-arm64 (arm64)"
        );
        // A wrong argument (exit 2), not a machine lacking something.
        assert_eq!(Error::from(some).kind, crate::error::Kind::Usage);
    }

    #[test]
    fn registered_keeps_to_the_targets_asked_of() {
        let r = reg(TREES);
        let found = registered(&r, &["amd64", "arm64"], "6.1.0-50-arm64", Purpose::Boot).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].target, "arm64");
        // armhf's tree is not arm64's.
        let e = registered(&r, &["arm64"], "6.1.0-50-armmp", Purpose::Boot).unwrap_err();
        assert_eq!(e.target.as_deref(), Some("arm64"));
        assert_eq!(e.elsewhere.len(), 1);
    }

    // Every message a user can meet, pinned whole.

    #[test]
    fn a_target_without_the_release_names_its_trees_and_how_to_fetch_it() {
        let r = reg(TREES);
        let of: Vec<&RegisteredTree> = r.for_target("arm64").collect();
        let e =
            of_release("arm64", of, &["6.1.0-58-arm64".to_string()], Purpose::Build).unwrap_err();
        assert_eq!(
            rendered(e),
            "error: target `arm64` has no kernel tree with release 6.1.0-58-arm64; kmx has \
             6.1.0-50-arm64 (arm64), 6.1.0-57-arm64 (arm64)\n  hint: build for one of those \
             (`kmx kernels list` shows them), or fetch Debian's 6.1.0-58 trees with `kmx \
             kernels fetch --abi 6.1.0-58 --target arm64`"
        );
    }

    #[test]
    fn no_target_with_the_release_names_every_targets_trees() {
        let r = reg(&TREES[..2]);
        let each: Vec<NoSuchTree> = ["amd64", "arm64"]
            .iter()
            .map(|t| {
                let of: Vec<&RegisteredTree> = r.for_target(t).collect();
                of_release(t, of, &["6.1.0-58-arm64".to_string()], Purpose::Build).unwrap_err()
            })
            .collect();
        assert_eq!(
            rendered(NoSuchTree::across(each).unwrap()),
            "error: no target has a kernel tree with release 6.1.0-58-arm64; kmx has \
             6.1.0-50-amd64 (amd64), 6.1.0-50-arm64 (arm64)\n  hint: build for one of those \
             (`kmx kernels list` shows them), or fetch Debian's 6.1.0-58 trees with `kmx \
             kernels fetch --abi 6.1.0-58`"
        );
        assert_eq!(NoSuchTree::across(Vec::new()), None);
    }

    #[test]
    fn another_targets_release_names_that_target() {
        let r = reg(TREES);
        let e = registered(&r, &["arm64"], "6.1.0-50-armmp", Purpose::Build).unwrap_err();
        assert_eq!(
            rendered(e),
            "error: target `arm64` has no kernel tree with release 6.1.0-50-armmp; kmx has \
             6.1.0-50-arm64 (arm64), 6.1.0-57-arm64 (arm64)\n  hint: 6.1.0-50-armmp is target \
             armhf's: build it with --target armhf"
        );
    }

    #[test]
    fn verify_points_at_kdir_and_boot_at_the_image() {
        let r = reg(TREES);
        let e = registered(&r, &["amd64"], "6.1.0-99-amd64", Purpose::Verify).unwrap_err();
        assert_eq!(
            rendered(e),
            "error: target `amd64` has no kernel tree with release 6.1.0-99-amd64; kmx has \
             6.1.0-50-amd64 (amd64)\n  hint: check against one of those (`kmx kernels list` \
             shows them), or fetch Debian's 6.1.0-99 trees with `kmx kernels fetch --abi \
             6.1.0-99 --target amd64`, or pass --kdir DIR"
        );
        let e = registered(&r, &[], "6.1.0-99-amd64", Purpose::Boot).unwrap_err();
        assert_eq!(
            rendered(e),
            "error: no target has a kernel tree with release 6.1.0-99-amd64; kmx has \
             6.1.0-50-amd64 (amd64), 6.1.0-50-arm64 (arm64), 6.1.0-50-armmp (armhf), \
             6.1.0-57-arm64 (arm64)\n  hint: boot one of those (`kmx kernels list` shows \
             them), or fetch Debian's 6.1.0-99 trees with `kmx kernels fetch --with-image \
             --abi 6.1.0-99`"
        );
    }

    #[test]
    fn with_no_tree_at_all_the_hint_is_to_fetch() {
        let e = registered(
            &Registry::default(),
            &["amd64"],
            "my-kernel",
            Purpose::Install,
        )
        .unwrap_err();
        assert_eq!(
            rendered(e),
            "error: target `amd64` has no kernel tree with release my-kernel; kmx has none\n  \
             hint: list its tree under [kernels] paths in a target profile"
        );
        let e =
            registered(&Registry::default(), &[], "6.1.0-50-amd64", Purpose::Remove).unwrap_err();
        assert_eq!(
            rendered(e),
            "error: no target has a kernel tree with release 6.1.0-50-amd64; kmx has none\n  \
             hint: `kmx kernels list` shows the known trees"
        );
        let r = reg(TREES);
        let e = registered(&r, &["amd64"], "6.1.0-50-arm64", Purpose::Remove).unwrap_err();
        assert_eq!(
            rendered(e),
            "error: target `amd64` has no kernel tree with release 6.1.0-50-arm64; kmx has \
             6.1.0-50-amd64 (amd64)\n  hint: 6.1.0-50-arm64 is target arm64's: remove it \
             with --target arm64"
        );
    }

    #[test]
    fn the_abi_of_a_debian_release_only() {
        assert_eq!(debian_abi("6.1.0-51-arm64").as_deref(), Some("6.1.0-51"));
        assert_eq!(debian_abi("6.12.95+deb12-amd64"), None);
        assert_eq!(debian_abi("my-kernel"), None);
        assert_eq!(debian_abi("6.1.0-rc1-x"), None);
    }

    #[test]
    fn a_missing_tree_is_the_machine_lacking_something_unless_asked_to_remove_it() {
        use crate::error::exit;
        for (purpose, code) in [
            (Purpose::Build, exit::ENVIRONMENT),
            (Purpose::Verify, exit::ENVIRONMENT),
            (Purpose::ModuleRelease, exit::ENVIRONMENT),
            (Purpose::Boot, exit::ENVIRONMENT),
            (Purpose::Install, exit::ENVIRONMENT),
            (Purpose::Remove, exit::USAGE),
        ] {
            let e = registered(&Registry::default(), &[], "r", purpose).unwrap_err();
            assert_eq!(Error::from(e).code(), code, "{purpose:?}");
        }
    }
}

//! Where profiles come from, and which one wins. This is the ONLY place that layers
//! configuration directories; each precedence rule has a test named after it.
//!
//! Layers, later ones override earlier ones profile by profile (a whole file replaces the
//! whole file of the same name, nothing is merged key by key):
//! 1. the profiles shipped with kmx (this repository's `targets/` and `toolchains/`,
//!    compiled into the binary so an installed kmx has them too);
//! 2. the user's configuration directory: `$XDG_CONFIG_HOME/kmx` (`~/.config/kmx`);
//! 3. `--config-dir DIR` (or `KMX_CONFIG_DIR`).
//!
//! Each directory holds `targets/*.toml` and `toolchains/*.toml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::profile::{Target, Toolchain};
use crate::error::{Error, Result};

/// The names of the targets shipped with kmx (for shell completions).
pub fn shipped_targets() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().filter_map(|(path, _)| {
        path.strip_prefix("targets/")
            .and_then(|f| f.strip_suffix(".toml"))
    })
}

/// Profiles shipped with kmx: (relative path, contents).
const BUILTIN: &[(&str, &str)] = &[
    (
        "targets/amd64.toml",
        include_str!("../../targets/amd64.toml"),
    ),
    ("targets/i386.toml", include_str!("../../targets/i386.toml")),
    (
        "targets/arm64.toml",
        include_str!("../../targets/arm64.toml"),
    ),
    (
        "targets/armhf.toml",
        include_str!("../../targets/armhf.toml"),
    ),
    ("targets/rpi.toml", include_str!("../../targets/rpi.toml")),
    ("targets/rpi3.toml", include_str!("../../targets/rpi3.toml")),
    ("targets/rpi4.toml", include_str!("../../targets/rpi4.toml")),
    (
        "toolchains/x86_64-linux-gnu.toml",
        include_str!("../../toolchains/x86_64-linux-gnu.toml"),
    ),
    (
        "toolchains/i686-linux-gnu.toml",
        include_str!("../../toolchains/i686-linux-gnu.toml"),
    ),
    (
        "toolchains/aarch64-linux-gnu.toml",
        include_str!("../../toolchains/aarch64-linux-gnu.toml"),
    ),
    (
        "toolchains/arm-linux-gnueabihf.toml",
        include_str!("../../toolchains/arm-linux-gnueabihf.toml"),
    ),
    (
        "toolchains/arm-linux-gnueabi.toml",
        include_str!("../../toolchains/arm-linux-gnueabi.toml"),
    ),
];

/// Where a user changes the profile read from `file`: that file, or, for a profile shipped
/// with kmx (compiled in: a copy in a source checkout is never read), a file of the same
/// name in the user's configuration directory or a `--config-dir`, which replaces it.
pub fn where_to_change(file: &Path) -> String {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR"));
    match file.strip_prefix(shipped) {
        Ok(rel) if BUILTIN.iter().any(|(r, _)| Path::new(r) == rel) => format!(
            "~/.config/kmx/{0} (or DIR/{0} with --config-dir DIR), which replaces the profile \
             shipped with kmx",
            rel.display()
        ),
        _ => file.display().to_string(),
    }
}

/// The hints that name a profile's file say where the user changes it ([`where_to_change`]):
/// they live with the layering, which knows.
impl Target {
    /// What to do when the target has no kernel tree: fetch from its sources, or, when it
    /// names none, list trees under `[kernels] paths`.
    pub fn no_tree_hint(&self) -> String {
        let file = where_to_change(&self.file);
        if self.kernel_sources.is_empty() {
            format!(
                "list its kernel trees under [kernels] paths in {file} (it names no [[kernels.source]] to fetch from)"
            )
        } else {
            format!(
                "run `kmx kernels fetch --target {}`, or list trees under [kernels] paths in {file}",
                self.name
            )
        }
    }
}

/// The default target set: what `kmx build` builds when no `--target` is given and every
/// one is usable.
pub const DEFAULT_TARGETS: &[&str] = &["i386", "amd64", "arm64", "armhf", "rpi"];

/// Every target and toolchain profile, resolved.
#[derive(Debug, Default, Clone)]
pub struct Profiles {
    pub targets: BTreeMap<String, Target>,
    pub toolchains: BTreeMap<String, Toolchain>,
}

/// The configuration directories to read, in precedence order (lowest first).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Read the profiles compiled into kmx.
    pub builtin: bool,
    pub dirs: Vec<PathBuf>,
}

impl Sources {
    /// The standard layering: built-ins, the user's XDG config dir, then `--config-dir`.
    pub fn standard(user_dir: Option<PathBuf>, config_dir: Option<PathBuf>) -> Sources {
        Sources {
            builtin: true,
            dirs: user_dir.into_iter().chain(config_dir).collect(),
        }
    }
}

/// The user's configuration directory (`$XDG_CONFIG_HOME/kmx`, else `~/.config/kmx`).
pub fn user_config_dir() -> Option<PathBuf> {
    directories::BaseDirs::new().map(|b| b.config_dir().join("kmx"))
}

impl Profiles {
    pub fn load(sources: &Sources) -> Result<Profiles> {
        let mut profiles = Profiles::default();
        if sources.builtin {
            let shipped = Path::new(env!("CARGO_MANIFEST_DIR"));
            for (rel, text) in BUILTIN {
                profiles.add(&shipped.join(rel), text)?;
            }
        }
        for dir in &sources.dirs {
            for kind in ["toolchains", "targets"] {
                let sub = dir.join(kind);
                let entries = match std::fs::read_dir(&sub) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io("read directory", &sub, e)),
                };
                let mut files: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect();
                files.sort();
                for file in files {
                    let text = read_profile(&file)?;
                    profiles.add(&file, &text)?;
                }
            }
        }
        Ok(profiles)
    }

    fn add(&mut self, file: &Path, text: &str) -> Result<()> {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| Error::config(file, "profile file name is not valid UTF-8"))?
            .to_string();
        let kind = file
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|s| s.to_str());
        if kind == Some("targets") {
            self.targets
                .insert(name.clone(), Target::parse(&name, text, file)?);
        } else {
            self.toolchains
                .insert(name.clone(), Toolchain::parse(&name, text, file)?);
        }
        Ok(())
    }

    /// The targets an architecture's other names stand for: `uname -m` (the profile's
    /// `dkms_arch`), the Debian architecture, and what target-lexicon parses as the
    /// toolchain triple's architecture (`aarch64` and `arm64`, `x86_64`, `i686`). Of several,
    /// those among the default targets.
    fn by_arch_name(&self, name: &str) -> Vec<&Target> {
        use std::str::FromStr;
        let arch = target_lexicon::Architecture::from_str(name).ok();
        let matches: Vec<&Target> = self
            .targets
            .values()
            .filter(|t| {
                t.dkms_arch == name
                    || t.debian.as_ref().is_some_and(|d| d.arch == name)
                    || arch.is_some_and(|a| {
                        self.toolchains.get(&t.toolchain).is_some_and(|tc| {
                            target_lexicon::Triple::from_str(&tc.triple)
                                .is_ok_and(|tr| tr.architecture == a)
                        })
                    })
            })
            .collect();
        let defaults: Vec<&Target> = matches
            .iter()
            .copied()
            .filter(|t| DEFAULT_TARGETS.contains(&t.name.as_str()))
            .collect();
        if defaults.is_empty() {
            matches
        } else {
            defaults
        }
    }

    /// Look a target up by name, or by another name of its architecture when only one
    /// target has it (`aarch64` is `arm64`), with a "did you mean" for near misses.
    pub fn target(&self, name: &str) -> Result<&Target> {
        if let Some(t) = self.targets.get(name) {
            return Ok(t);
        }
        let by_arch = self.by_arch_name(name);
        if let [one] = by_arch.as_slice() {
            return Ok(one);
        }
        Err({
            let known: Vec<&str> = self.targets.keys().map(String::as_str).collect();
            let mut err = Error::usage(format!("unknown target `{name}`"));
            if by_arch.len() > 1 {
                let names: Vec<&str> = by_arch.iter().map(|t| t.name.as_str()).collect();
                return Err(err.hint(format!(
                    "`{name}` is the architecture of targets {}: name one",
                    names.join(", ")
                )));
            }
            err = match closest(name, &known) {
                Some(s) => err.hint(format!("did you mean `{s}`? Known targets: {}", known.join(", "))),
                None => err.hint(format!(
                    "known targets: {}; add your own as targets/{name}.toml in --config-dir or ~/.config/kmx",
                    known.join(", ")
                )),
            };
            err
        })
    }

    /// The toolchain a target names; an unknown name is an error about the target's file.
    pub fn toolchain_of(&self, target: &Target) -> Result<&Toolchain> {
        self.toolchains.get(&target.toolchain).ok_or_else(|| {
            let (line, col) = target.toolchain_at;
            let known: Vec<&str> = self.toolchains.keys().map(String::as_str).collect();
            Error::config(
                &target.file,
                format!(
                    "target `{}` names unknown toolchain `{}`",
                    target.name, target.toolchain
                ),
            )
            .line(line, col)
            .hint(format!("known toolchains: {}", known.join(", ")))
        })
    }

    /// Resolve `--target` values: none means the default set (those that exist).
    pub fn select(&self, names: &[String]) -> Result<Vec<&Target>> {
        if names.is_empty() {
            return Ok(DEFAULT_TARGETS
                .iter()
                .filter_map(|n| self.targets.get(*n))
                .collect());
        }
        let mut out = Vec::new();
        for name in names {
            for part in name.split(',').filter(|p| !p.is_empty()) {
                let t = self.target(part)?;
                if !out.iter().any(|o: &&Target| o.name == t.name) {
                    out.push(t);
                }
            }
        }
        Ok(out)
    }
}

/// The known name nearest to `name` (edit distance at most 2), for "did you mean".
pub fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

/// Edit distance counting an adjacent transposition as one edit ("armfh" is one from "armhf").
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// A profile's text. Bytes that are not UTF-8 are a configuration error naming the file
/// and the line (exit 2), not a failure of the machine.
fn read_profile(file: &Path) -> Result<String> {
    let bytes = std::fs::read(file).map_err(|e| Error::io("read", file, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        let col = at
            - bytes[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1)
            + 1;
        Error::config(file, "this profile is not valid UTF-8 text")
            .line(line, col)
            .hint("TOML files must be UTF-8: re-save the file as UTF-8 (e.g. with iconv)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_that_is_not_utf8_is_a_config_error_naming_the_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("targets/bad.toml");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"description = \"ok\"\nkernel_arch = \"\xff\"\n").unwrap();
        let err = Profiles::load(&Sources {
            builtin: false,
            dirs: vec![d.path().to_path_buf()],
        })
        .unwrap_err();
        assert_eq!(err.code(), crate::error::exit::USAGE, "{err}");
        assert_eq!(
            err.to_string(),
            format!("{}:2:16: this profile is not valid UTF-8 text", p.display())
        );
    }

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn shipped_profiles_give_the_five_default_targets() {
        let p = Profiles::load(&Sources {
            builtin: true,
            dirs: vec![],
        })
        .unwrap();
        let names: Vec<&str> = p
            .select(&[])
            .unwrap()
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["i386", "amd64", "arm64", "armhf", "rpi"]);
        for t in p.targets.values() {
            p.toolchain_of(t).unwrap();
            // Every shipped target fetches its trees from Debian 12 at least.
            assert!(
                t.kernel_sources
                    .iter()
                    .any(|s| s.label() == "debian bookworm"),
                "{}",
                t.name
            );
        }
        assert_eq!(
            p.targets["rpi"].kernel_sources[1].label(),
            "debian bookworm-backports"
        );
    }

    #[test]
    fn a_shipped_profile_is_changed_by_a_copy_in_the_config_dir_a_users_in_place() {
        let profiles = Profiles::load(&Sources::standard(None, None)).unwrap();
        let arm64 = profiles.target("arm64").unwrap();
        assert_eq!(
            where_to_change(&arm64.file),
            "~/.config/kmx/targets/arm64.toml (or DIR/targets/arm64.toml with --config-dir \
             DIR), which replaces the profile shipped with kmx"
        );
        let mine = Path::new("/home/me/.config/kmx/targets/arm64.toml");
        assert_eq!(where_to_change(mine), mine.display().to_string());
    }

    #[test]
    fn user_dir_overrides_shipped_profile() {
        let user = tempfile::tempdir().unwrap();
        write(
            user.path(),
            "targets/arm64.toml",
            "kernel_arch = \"arm64\"\ntoolchain = \"aarch64-linux-gnu\"\ndescription = \"mine\"\n",
        );
        let p = Profiles::load(&Sources::standard(Some(user.path().into()), None)).unwrap();
        assert_eq!(p.targets["arm64"].description, "mine");
        assert_eq!(p.targets["amd64"].kernel_arch, "x86");
    }

    #[test]
    fn config_dir_overrides_user_dir() {
        let user = tempfile::tempdir().unwrap();
        let cli = tempfile::tempdir().unwrap();
        let t = |d: &str| {
            format!(
                "kernel_arch = \"arm64\"\ntoolchain = \"aarch64-linux-gnu\"\ndescription = \"{d}\"\n"
            )
        };
        write(user.path(), "targets/rpi.toml", &t("user"));
        write(cli.path(), "targets/rpi.toml", &t("cli"));
        let p = Profiles::load(&Sources::standard(
            Some(user.path().into()),
            Some(cli.path().into()),
        ))
        .unwrap();
        assert_eq!(p.targets["rpi"].description, "cli");
    }

    #[test]
    fn missing_directories_are_not_errors() {
        let p = Profiles::load(&Sources::standard(Some("/nonexistent/kmx".into()), None)).unwrap();
        assert_eq!(p.targets.len(), 7);
    }

    #[test]
    fn unknown_target_suggests_the_closest() {
        let p = Profiles::load(&Sources {
            builtin: true,
            dirs: vec![],
        })
        .unwrap();
        let err = p.target("armfh").unwrap_err();
        assert_eq!(err.to_string(), "unknown target `armfh`");
        assert_eq!(
            err.hint.as_deref(),
            Some("did you mean `armhf`? Known targets: amd64, arm64, armhf, i386, rpi, rpi3, rpi4")
        );
    }

    #[test]
    fn unknown_toolchain_points_at_the_target_file() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "targets/x.toml",
            "kernel_arch = \"arm\"\ntoolchain = \"armel\"\n",
        );
        let p = Profiles::load(&Sources::standard(None, Some(dir.path().into()))).unwrap();
        let err = p.toolchain_of(&p.targets["x"]).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("x.toml:2:13: target `x` names unknown toolchain `armel`"),
            "{err}"
        );
    }
}

//! Finding a toolchain's compiler on this machine (with `which`) and asking it its version.
//! The compiler a build calls is decided here and nowhere else.

use std::path::PathBuf;
use std::process::Command;

use serde::Serialize;

use crate::config::Toolchain;
use crate::error::{Error, Result};

/// A compiler found on this machine.
#[derive(Debug, Clone, Serialize)]
pub struct Compiler {
    /// The name called (`aarch64-linux-gnu-gcc-12`).
    pub name: String,
    pub path: PathBuf,
    /// First line of `--version`, e.g. `aarch64-linux-gnu-gcc-12 (Debian 12.2.0-14) 12.2.0`.
    pub version_line: String,
    /// The version number (`12.2.0`).
    pub version: String,
    /// The toolchain root the compiler lives in ([`crate::kernel::toolroot`]): the build
    /// steps that call it run with that root as their view's `/`. `None`: the host's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
}

/// The Debian package of the compiler a tree calls: a versioned host package (`gcc-12`)
/// with the version the tree wants (`gcc-14` for a tree that calls `gcc-14`). Unchanged
/// when the profile names its own `cc`, the tree calls plain `gcc`, or the package is not
/// versioned.
fn package_for(pkg: &str, tree_cc: Option<&str>, own_cc: bool) -> String {
    let Some(version) = tree_cc.and_then(|cc| cc.strip_prefix("gcc-")) else {
        return pkg.to_string();
    };
    if own_cc || version.is_empty() || !version.chars().all(|c| c.is_ascii_digit()) {
        return pkg.to_string();
    }
    // Only a versioned host package (`gcc-12`) says which version it brings; an unversioned
    // cross package (`gcc-aarch64-linux-gnu`) brings the distribution's default, whose
    // version kmx cannot know: kept as written.
    match pkg.strip_prefix("gcc-") {
        Some(rest) if !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()) => {
            format!("gcc-{version}")
        }
        _ => pkg.to_string(),
    }
}

impl Toolchain {
    /// The compiler's name for a kernel tree that calls `tree_cc` (e.g. Debian's `gcc-12`;
    /// `None` means plain `gcc`). The profile's `cc` overrides both.
    pub fn compiler_name(&self, tree_cc: Option<&str>) -> String {
        match &self.cc {
            Some(cc) => cc.clone(),
            None => format!("{}{}", self.cross_compile, tree_cc.unwrap_or("gcc")),
        }
    }

    /// Find the compiler and read its version. The error says which package to install.
    pub fn probe(&self, tree_cc: Option<&str>) -> Result<Compiler> {
        let name = self.compiler_name(tree_cc);
        let path = which::which(&name).map_err(|_| {
            let err = Error::env(format!("{name} not found"));
            match &self.debian_package {
                Some(pkg) => err.hint(format!(
                    "apt-get install {}",
                    package_for(pkg, tree_cc, self.cc.is_some())
                )),
                None => err.hint(format!(
                    "install a compiler for {} or set `cc` in {}",
                    self.triple,
                    crate::config::load::where_to_change(&self.file)
                )),
            }
        })?;
        let version_line = match super::memo::program_version(&path) {
            Some(line) => line,
            None => {
                let out = Command::new(&path)
                    .arg("--version")
                    .output()
                    .map_err(|e| Error::env(format!("cannot run {}: {e}", path.display())))?;
                let text = String::from_utf8_lossy(&out.stdout);
                let line = text.lines().next().unwrap_or("").trim().to_string();
                if out.status.success() && !line.is_empty() {
                    super::memo::keep_program_version(&path, &line);
                }
                line
            }
        };
        Ok(Compiler {
            name,
            path,
            version: version_of(&version_line),
            version_line,
            root: None,
        })
    }

    /// The compiler a tree calls, in toolchain root `root`: asked its version inside the
    /// root (its programs are linked against the root's C library, not the host's).
    pub fn probe_in_root(&self, tree_cc: Option<&str>, root: &std::path::Path) -> Result<Compiler> {
        let name = self.compiler_name(tree_cc);
        let host_path = root.join("usr/bin").join(&name);
        if !host_path.is_file() {
            return Err(Error::env(format!(
                "{name} not found in the toolchain root {}",
                root.display()
            ))
            .hint("`kmx kernels fetch` assembles it again"));
        }
        let version_line = match super::memo::program_version(&host_path) {
            Some(line) => line,
            None => {
                let out = crate::sandbox::run_in_root(root, &[&name, "--version"]).map_err(|why| {
                    Error::env(format!(
                        "cannot run {name} in its toolchain root {}: {why}",
                        root.display()
                    ))
                    .hint("toolchain roots need bubblewrap (apt-get install bubblewrap) and user namespaces, or root")
                })?;
                let text = String::from_utf8_lossy(&out.stdout);
                let line = text.lines().next().unwrap_or("").trim().to_string();
                if !out.status.success() || line.is_empty() {
                    return Err(Error::env(format!(
                        "{name} in the toolchain root {} does not run: {}",
                        root.display(),
                        crate::process::tail(&out.stderr, 2)
                    ))
                    .hint("remove the root; `kmx kernels fetch` assembles it again"));
                }
                super::memo::keep_program_version(&host_path, &line);
                line
            }
        };
        Ok(Compiler {
            path: std::path::Path::new("/usr/bin").join(&name),
            name,
            version: version_of(&version_line),
            version_line,
            root: Some(root.to_path_buf()),
        })
    }
}

/// The version number of a `--version` line (`12.2.0`).
fn version_of(version_line: &str) -> String {
    version_line
        .split_whitespace()
        .rev()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
        .unwrap_or("")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::package_for;

    #[test]
    fn the_package_named_is_the_one_of_the_compiler_version_the_tree_calls() {
        assert_eq!(package_for("gcc-12", Some("gcc-14"), false), "gcc-14");
        assert_eq!(
            package_for("gcc-aarch64-linux-gnu", Some("gcc-12"), false),
            "gcc-aarch64-linux-gnu"
        );
        assert_eq!(package_for("gcc-12", Some("gcc-12"), false), "gcc-12");
        assert_eq!(package_for("gcc-12", None, false), "gcc-12");
        assert_eq!(package_for("gcc-12", Some("gcc-14"), true), "gcc-12");
    }
}

//! What an image root says about the kernels it runs: the releases under `lib/modules` and
//! `usr/lib/modules`, and the architecture of each, read from the kernel's own modules (their
//! ELF header) or, for a release without modules, from its `boot/config-<release>`.
//!
//! `kmx install --root IMG` uses it to install for the image's kernels without being told
//! which, to refuse a target of another architecture, and never to create a
//! `lib/modules/<release>` the image does not have.

use std::path::{Path, PathBuf};

use crate::config::arch::{ElfClass, ElfIdentity, Endian, machine};
use crate::error::{Error, Result};
use crate::verify::module::Module;

/// The kernel releases an image root has module directories for, sorted, each once (a
/// merged-/usr root shows the same directory twice).
pub fn releases(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = ["lib/modules", "usr/lib/modules"]
        .iter()
        .filter_map(|d| std::fs::read_dir(root.join(d)).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether the image has `lib/modules/<release>`, where kmx installs (on a merged-/usr
/// image, `lib` is a link to `usr/lib` and this is the kernel's `usr/lib/modules/<release>`).
pub fn has_release(root: &Path, release: &str) -> bool {
    root.join("lib/modules").join(release).is_dir()
}

/// How the architecture of an image's kernel was learnt.
#[derive(Debug, Clone)]
pub struct KernelIdentity {
    pub identity: ElfIdentity,
    /// The file it was read from.
    pub evidence: PathBuf,
}

/// The architecture of the image's kernel `release`: the ELF header of one of its modules,
/// else its config; `None` when the image holds neither.
pub fn kernel_identity(root: &Path, release: &str) -> Option<KernelIdentity> {
    for dir in ["lib/modules", "usr/lib/modules"] {
        let kernel = root.join(dir).join(release).join("kernel");
        if let Some(found) = first_module(&kernel, 4)
            && let Ok(m) = Module::read(&found)
        {
            return Some(KernelIdentity {
                identity: m.identity,
                evidence: found,
            });
        }
    }
    let config = root.join(format!("boot/config-{release}"));
    let text = std::fs::read_to_string(&config).ok()?;
    let on = |name: &str| text.lines().any(|l| l == format!("CONFIG_{name}=y"));
    let (class, machine) = if on("ARM64") {
        (ElfClass::Elf64, machine::EM_AARCH64)
    } else if on("X86_64") {
        (ElfClass::Elf64, machine::EM_X86_64)
    } else if on("X86_32") {
        (ElfClass::Elf32, machine::EM_386)
    } else if on("ARM") {
        (ElfClass::Elf32, machine::EM_ARM)
    } else {
        return None;
    };
    Some(KernelIdentity {
        identity: ElfIdentity {
            class,
            endian: if on("CPU_BIG_ENDIAN") {
                Endian::Big
            } else {
                Endian::Little
            },
            machine,
        },
        evidence: config,
    })
}

/// The first `.ko` (compressed or not) under `dir`, depth first, at most `depth` levels down.
fn first_module(dir: &Path, depth: usize) -> Option<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in &entries {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let is_ko = crate::verify::is_module_name(&name);
        if is_ko && e.file_type().is_ok_and(|t| t.is_file()) {
            return Some(e.path());
        }
    }
    if depth == 0 {
        return None;
    }
    entries
        .iter()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| first_module(&e.path(), depth - 1))
}

/// Refuse to install `target`'s modules for the image's kernel `release` when that kernel
/// is of another architecture. `Ok(false)`: the image does not say which architecture it is.
pub fn check_arch(root: &Path, release: &str, target: &str, wanted: ElfIdentity) -> Result<bool> {
    let Some(found) = kernel_identity(root, release) else {
        return Ok(false);
    };
    if found.identity == wanted {
        return Ok(true);
    }
    Err(Error::usage(format!(
        "the image's kernel {release} is {} (read from {}), but target `{target}` builds {wanted} modules",
        found.identity,
        found.evidence.display()
    ))
    .hint("pick the target of the image's architecture with --target (`kmx targets` lists them)"))
}

/// The image's kernel releases (all of them), and those `target`'s modules may be installed
/// for: of the target's architecture, or of one the image does not say (no module, no
/// config), and under `lib/modules` (kmx does not create it; a release only in
/// `usr/lib/modules` of an image whose `lib` is no link is named in a note). An image
/// without kernels, or whose kernels are all of another architecture, is an error.
pub fn kernels_for(
    root: &Path,
    target: &str,
    wanted: ElfIdentity,
) -> Result<(Vec<String>, Vec<String>)> {
    let found = releases(root);
    if found.is_empty() {
        return Err(Error::usage(format!(
            "the image {} has no kernel: neither lib/modules nor usr/lib/modules holds a release",
            root.display()
        ))
        .hint(
            "install the kernel package into the image first, or name one with --kernel R --create",
        ));
    }
    let (mut usable, mut known_same, mut refusal) = (Vec::new(), false, None);
    for r in &found {
        match check_arch(root, r, target, wanted) {
            Ok(known) => {
                known_same |= known;
                if has_release(root, r) {
                    usable.push(r.clone());
                } else {
                    eprintln!(
                        "note: {r} is only in {}: kmx installs under lib/modules, which it does not create (name it with --kernel {r} --create)",
                        root.join("usr/lib/modules").display()
                    );
                }
            }
            Err(e) => refusal = refusal.or(Some(e)),
        }
    }
    match refusal {
        Some(e) if !known_same => Err(e),
        _ => Ok((found, usable)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_come_from_both_module_directories_once() {
        let root = tempfile::tempdir().unwrap();
        for d in [
            "lib/modules/6.1.0-50-arm64",
            "usr/lib/modules/6.12.95+deb12-arm64",
            "usr/lib/modules/6.1.0-50-arm64",
        ] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        std::fs::write(root.path().join("lib/modules/not-a-dir"), "").unwrap();
        assert_eq!(
            releases(root.path()),
            ["6.1.0-50-arm64", "6.12.95+deb12-arm64"]
        );
        assert!(has_release(root.path(), "6.1.0-50-arm64"));
        // Only in usr/lib/modules of an image whose lib is not a link to usr/lib: kmx
        // would have to create lib/modules/<release>.
        assert!(!has_release(root.path(), "6.12.95+deb12-arm64"));
        assert!(!has_release(root.path(), "6.1.0-51-arm64"));
    }

    #[test]
    fn a_kernel_without_modules_is_known_by_its_config() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("lib/modules/r/kernel")).unwrap();
        std::fs::create_dir_all(root.path().join("boot")).unwrap();
        std::fs::write(
            root.path().join("boot/config-r"),
            "CONFIG_ARM=y\nCONFIG_CPU_V6=y\n",
        )
        .unwrap();
        let id = kernel_identity(root.path(), "r").unwrap();
        assert_eq!(id.identity.machine, machine::EM_ARM);
        assert_eq!(id.identity.class, ElfClass::Elf32);
        assert!(kernel_identity(root.path(), "other").is_none());
    }
}

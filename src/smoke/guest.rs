//! What the guest runs: the load order (the given modules and the in-tree modules they
//! depend on, dependencies first), the `/init` script, and the initramfs holding them with
//! busybox as the only program.
//!
//! `/init` prints markers the console parser ([`super::console`]) relies on, one per line:
//! `KMX-BOOTED <release>`, then per module `KMX-BEGIN <n>`, `KMX-INSMOD <n> <insmod output>`,
//! `KMX-RESULT <n> <exit status>`, `KMX-DMESG <n>`, the kernel log lines printed while it
//! loaded, `KMX-END <n>`; finally `KMX-DONE`. `<n>` is the module's index in the load order.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::cpio;
use crate::error::{Error, Result};
use crate::verify::Module;

/// A module to load in the guest.
#[derive(Debug, Clone)]
pub struct Load {
    pub name: String,
    pub path: PathBuf,
    /// An in-tree module from the kernel's own module tree, loaded because a given module
    /// depends on it.
    pub dependency: bool,
    /// Turn on `module.sig_enforce` before loading this one (it stays on).
    pub enforce_signatures: bool,
}

/// A module given to smoke, as the load order needs it.
#[derive(Debug, Clone)]
pub struct Given {
    pub path: PathBuf,
    /// The name the kernel uses (`name=`, else the file name with `-` as `_`).
    pub name: String,
    /// `depends=`: module names it needs loaded first.
    pub depends: Vec<String>,
}

impl Given {
    /// Read a `.ko` file with the module reader; one it cannot read is still loaded (the
    /// kernel is the judge), named after its file.
    pub fn read(path: &Path) -> Result<Given> {
        match Module::read(path) {
            Ok(module) => Ok(Given::new(path, &module)),
            Err(_) if path.is_file() => Ok(Given::unread(path)),
            Err(e) => Err(e.into_error(path)),
        }
    }

    /// A module kmx could not read: its name from the file name, no dependencies.
    pub fn unread(path: &Path) -> Given {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        Given {
            path: path.to_path_buf(),
            name: normalize(file.split('.').next().unwrap_or_default()),
            depends: Vec::new(),
        }
    }

    pub fn new(path: &Path, module: &Module) -> Given {
        let name = module.name().map(str::to_string).unwrap_or_else(|| {
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            normalize(file.split('.').next().unwrap_or_default())
        });
        Given {
            path: path.to_path_buf(),
            name,
            depends: module.depends(),
        }
    }
}

/// Kernel module names treat `-` and `_` alike.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The kernel's module tree index: module name -> (path, its dependencies' names), from
/// `modules.dep` (paths relative to the tree, dependency lists already transitive).
pub fn read_modules_dep(modules_dir: &Path) -> Result<BTreeMap<String, (PathBuf, Vec<String>)>> {
    let file = modules_dir.join("modules.dep");
    let text = std::fs::read_to_string(&file).map_err(|e| {
        Error::io("read", &file, e).hint("run `kmx kernels fetch --with-image` again")
    })?;
    let stem = |p: &str| -> String {
        let base = p.rsplit('/').next().unwrap_or(p);
        normalize(base.split(".ko").next().unwrap_or(base))
    };
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let Some((module, deps)) = line.split_once(':') else {
            continue;
        };
        map.insert(
            stem(module),
            (
                modules_dir.join(module),
                deps.split_whitespace().map(stem).collect(),
            ),
        );
    }
    Ok(map)
}

/// The load order for `given`: every module after the ones it
/// depends on; in-tree dependencies come from `tree` and are loaded once. A dependency
/// found nowhere is left to the kernel, which refuses the module with "Unknown symbol".
/// With `enforce_from`, the first module loaded for `given[enforce_from]` (or a later one)
/// turns on `module.sig_enforce`.
pub fn load_order(
    given: &[Given],
    tree: &BTreeMap<String, (PathBuf, Vec<String>)>,
    enforce_from: Option<usize>,
) -> Vec<Load> {
    let by_name: BTreeMap<String, usize> = given
        .iter()
        .enumerate()
        .map(|(i, g)| (normalize(&g.name), i))
        .collect();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        name: &str,
        given: &[Given],
        by_name: &BTreeMap<String, usize>,
        tree: &BTreeMap<String, (PathBuf, Vec<String>)>,
        seen: &mut HashSet<String>,
        order: &mut Vec<Load>,
    ) {
        if !seen.insert(name.to_string()) {
            return;
        }
        if let Some(&i) = by_name.get(name) {
            let g = &given[i];
            for d in &g.depends {
                visit(&normalize(d), given, by_name, tree, seen, order);
            }
            order.push(Load {
                name: g.name.clone(),
                path: g.path.clone(),
                dependency: false,
                enforce_signatures: false,
            });
        } else if let Some((path, deps)) = tree.get(name) {
            // modules.dep lists the transitive closure, the deepest dependency last.
            for d in deps.iter().rev() {
                visit(d, given, by_name, tree, seen, order);
            }
            order.push(Load {
                name: name.to_string(),
                path: path.clone(),
                dependency: true,
                enforce_signatures: false,
            });
        }
    }
    let mut enforce_at = None;
    for (i, g) in given.iter().enumerate() {
        if enforce_from == Some(i) {
            enforce_at = Some(order.len());
        }
        visit(
            &normalize(&g.name),
            given,
            &by_name,
            tree,
            &mut seen,
            &mut order,
        );
    }
    if let Some(load) = enforce_at.and_then(|at| order.get_mut(at)) {
        load.enforce_signatures = true;
    }
    order
}

/// The `/init` script for a load order.
pub fn init_script(order: &[Load]) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         # Written by kmx smoke: load modules, report each result, power off.\n\
         B=/bin/busybox\n\
         $B mkdir -p /proc /sys /dev /tmp\n\
         $B mount -t proc proc /proc\n\
         $B mount -t sysfs sysfs /sys\n\
         $B mount -t devtmpfs devtmpfs /dev 2>/dev/null\n\
         echo \"KMX-BOOTED $($B uname -r)\"\n\
         $B dmesg -c >/dev/null\n\
         kmx_load() {\n\
         \techo \"KMX-BEGIN $1\"\n\
         \tout=$($B insmod \"$2\" 2>&1)\n\
         \trc=$?\n\
         \t[ -n \"$out\" ] && echo \"$out\" | while read -r l; do echo \"KMX-INSMOD $1 $l\"; done\n\
         \techo \"KMX-RESULT $1 $rc\"\n\
         \techo \"KMX-DMESG $1\"\n\
         \t$B dmesg -c\n\
         \techo \"KMX-END $1\"\n\
         }\n",
    );
    for (i, load) in order.iter().enumerate() {
        if load.enforce_signatures {
            s.push_str("echo 1 > /sys/module/module/parameters/sig_enforce\n");
        }
        s.push_str(&format!("kmx_load {i} {}\n", guest_path(i)));
    }
    s.push_str("echo KMX-DONE\n$B sync\n$B poweroff -f\n");
    s
}

/// Where the `i`-th module of the load order lives in the guest.
fn guest_path(i: usize) -> String {
    format!("/m/{i:03}.ko")
}

/// Write the initramfs (uncompressed newc: Debian's kernels accept it) to `out`.
pub fn write_initramfs(out: &Path, busybox: &Path, order: &[Load]) -> Result<()> {
    let file = std::fs::File::create(out).map_err(|e| Error::io("create", out, e))?;
    let io = |e: std::io::Error| Error::io("write", out, e);
    let mut w = cpio::Writer::new(std::io::BufWriter::new(file));
    for d in ["bin", "dev", "m", "proc", "sys", "tmp"] {
        w.dir(d).map_err(io)?;
    }
    w.char_device("dev/console", 0o600, 5, 1).map_err(io)?;
    let bb = std::fs::read(busybox).map_err(|e| {
        Error::io("read", busybox, e).hint("run `kmx kernels fetch --with-image` again")
    })?;
    w.file("bin/busybox", 0o755, &bb).map_err(io)?;
    w.symlink("bin/sh", "busybox").map_err(io)?;
    w.file("init", 0o755, init_script(order).as_bytes())
        .map_err(io)?;
    for (i, load) in order.iter().enumerate() {
        let data = std::fs::read(&load.path).map_err(|e| Error::io("read", &load.path, e))?;
        // Compressed modules are inflated here, as kmod's insmod does in user space.
        let data = match crate::verify::Compression::detect(&data) {
            Some(format) => crate::verify::decompress::decompress(
                &data,
                format,
                crate::verify::decompress::DEFAULT_LIMIT,
            )
            .map_err(|e| Error::failed(e.to_string()).at(&load.path))?,
            None => data,
        };
        w.file(guest_path(i).trim_start_matches('/'), 0o644, &data)
            .map_err(io)?;
    }
    w.finish().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(path: &str, name: &str, depends: &[&str]) -> Given {
        Given {
            path: PathBuf::from(path),
            name: name.into(),
            depends: depends.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let mut tree = BTreeMap::new();
        tree.insert(
            "crc_itu_t".to_string(),
            (PathBuf::from("/t/crc-itu-t.ko"), vec![]),
        );
        tree.insert(
            "nfc_digital".to_string(),
            (
                PathBuf::from("/t/nfc_digital.ko"),
                vec!["nfc".into(), "rfkill".into(), "crc_itu_t".into()],
            ),
        );
        tree.insert(
            "nfc".to_string(),
            (PathBuf::from("/t/nfc.ko"), vec!["rfkill".into()]),
        );
        tree.insert(
            "rfkill".to_string(),
            (PathBuf::from("/t/rfkill.ko"), vec![]),
        );
        let given = vec![
            given("/b/top.ko", "top", &["mid", "crc-itu-t"]),
            given("/b/mid.ko", "mid", &["nfc_digital"]),
            given("/b/lone.ko", "lone", &["nowhere"]),
        ];
        let order: Vec<(String, bool)> = load_order(&given, &tree, None)
            .into_iter()
            .map(|l| (l.name, l.dependency))
            .collect();
        let names: Vec<&str> = order.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "crc_itu_t",
                "rfkill",
                "nfc",
                "nfc_digital",
                "mid",
                "top",
                "lone"
            ]
        );
        assert!(order[0].1 && !order[4].1);
    }

    #[test]
    fn modules_dep_is_indexed_by_normalized_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("modules.dep"),
            "kernel/lib/crc-itu-t.ko:\nkernel/fs/udf/udf.ko: kernel/lib/crc-itu-t.ko kernel/drivers/cdrom/cdrom.ko\n",
        )
        .unwrap();
        let map = read_modules_dep(dir.path()).unwrap();
        assert_eq!(
            map["crc_itu_t"].0,
            dir.path().join("kernel/lib/crc-itu-t.ko")
        );
        assert_eq!(map["udf"].1, ["crc_itu_t", "cdrom"]);
    }
}

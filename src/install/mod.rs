//! Installing built cells into a root (`/`, or an image root being assembled) and
//! uninstalling them. It owns the paths under `<root>/lib/modules/<release>`, compression,
//! signing, moving in-tree modules aside, and depmod; records go through
//! [`crate::state::store`]. It builds nothing and never looks at the running kernel.
//!
//! Crash safety: the intent ([`InstallState::Installing`] with every file and every
//! displaced module) is recorded before the root is touched; files are written under a
//! temporary name in their destination directory and renamed; every step is idempotent.
//! So after a `kill -9` the record says what may be half done, and re-running the same
//! install (or uninstall) completes it. The temporary names are `.kmx-tmp-<pid>-...`
//! ([`crate::state::tmp`]): the next kmx to take the store's lock removes those of a dead
//! kmx from every directory a record writes into, so an image root never keeps one.
//!
//! Containment: every destination is built from validated components (no `..`, no absolute
//! parts) and its deepest existing directory must resolve, symlinks followed, inside the
//! root. A destination that would leave the root is refused before anything is written.
//!
//! [`tarball`]: built cells carried between machines (`kmx tarball`, `kmx load-tarball`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::manifest::{ModuleField, check_module_field};
use crate::digest::sha256;
use crate::error::{Error, Kind, Result};
use crate::modfile::{Compression, Vermagic};
use crate::process;
use crate::state::store::{
    BuiltRecord, Displaced, InstallRecord, InstallState, InstalledFile, Store, now, valid_component,
};
use crate::state::write_atomic_mode;
use crate::verify::module::Module;

pub mod deb;
pub mod image;
pub mod mok;
pub mod tarball;

/// A signing key pair (PEM private key, X.509 certificate).
#[derive(Debug, Clone)]
pub struct SignKey {
    pub key: PathBuf,
    pub cert: PathBuf,
}

/// A shell command from the manifest (PRE_INSTALL, POST_INSTALL, POST_REMOVE) and the
/// directory it runs in (the registered source).
#[derive(Debug, Clone)]
pub struct Hook {
    pub line: String,
    pub dir: PathBuf,
}

/// Whether this very build (`built`) is installed in `root` and its files are there: the
/// kernel hooks then have nothing to do (they run twice when headers and image arrive
/// together, as DKMS's do).
pub fn is_installed(store: &Store, root: &Path, built: &BuiltRecord) -> bool {
    matches!(
        store.load_install(root, &built.key()),
        Ok(Some(rec)) if rec.state == InstallState::Installed
            && rec.updated_at >= built.built_at
            && rec.files.iter().all(|f| rec.root.join(&f.path).is_file())
    )
}

/// How to install one cell.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub depmod: bool,
    /// Key to sign with, when the kernel checks signatures.
    pub sign: Option<SignKey>,
    /// The kernel tree's `scripts/sign-file`, when the tree is on this machine.
    pub sign_file: Option<PathBuf>,
    pub pre_install: Option<Hook>,
    pub post_install: Option<Hook>,
    /// Test hook (`KMX_TEST_PAUSE_AT`): stop and wait at this named step.
    pub pause_at: Option<String>,
}

/// What an install did.
#[derive(Debug)]
pub struct Installed {
    pub record: InstallRecord,
    pub notes: Vec<String>,
}

/// The root an uninstall names: its canonical path, or, when it no longer exists (an image
/// deleted by hand), the absolute path it was installed under, so its records can be
/// dropped.
pub fn resolve_root_for_uninstall(root: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::path::absolute(root).map_err(|e| Error::io("resolve the root directory", root, e))
        }
        _ => resolve_root(root),
    }
}

/// The canonical path of an existing root directory.
pub fn resolve_root(root: &Path) -> Result<PathBuf> {
    let canon = root.canonicalize().map_err(|e| {
        Error::io("open the root directory", root, e)
            .hint("pass an existing directory with --root (default /)")
    })?;
    if !canon.is_dir() {
        return Err(Error::usage("the root is not a directory").at(root));
    }
    Ok(canon)
}

/// `lib/modules/<release>/<location>/<name>.ko[.<ext>]`, relative to the root, refusing
/// anything that could leave it.
pub fn dest_relative(
    module: &str,
    release: &str,
    location: &str,
    name: &str,
    compress: Option<Compression>,
) -> Result<PathBuf> {
    let escape = |what: &str, value: &str, why: &str| {
        Error::usage(format!(
            "module `{module}`: {what} {value:?} {why}; refusing to install"
        ))
        .hint("DEST_MODULE_LOCATION must start with /kernel, /updates or /extra and stay inside it; DEST_MODULE_NAME must be a plain file name")
    };
    if !valid_component(release) {
        return Err(escape(
            "the kernel release",
            release,
            &format!("would leave /lib/modules/{release}"),
        ));
    }
    for (field, value) in [
        (ModuleField::DestName, name),
        (ModuleField::DestLocation, location),
    ] {
        if let Err(why) = check_module_field(field, value) {
            return Err(escape(field.dkms_name(), value, &why.to_string()));
        }
    }
    let mut rel = PathBuf::from("lib/modules").join(release);
    // `/kernel/../misc` is `misc` (the check above refused a `..` that climbs out).
    let Some(parts) = crate::config::manifest::dest_components(location) else {
        return Err(escape(
            "DEST_MODULE_LOCATION",
            location,
            "is not a plain path",
        ));
    };
    rel.extend(parts);
    let file = match compress {
        Some(c) => format!("{name}.ko.{}", c.extension()),
        None => format!("{name}.ko"),
    };
    rel.push(file);
    Ok(rel)
}

/// The distribution of `root` as DKMS names it: `ID_LIKE`'s first word, else `ID`, from
/// `ROOT/etc/os-release` (resolved inside the root), as `ubuntu` for Ubuntu; empty when
/// the root has none (a bare image).
pub fn os_release_id(root: &Path) -> String {
    let Some(path) = crate::kernel::installed::resolve_in_root(root, Path::new("/etc/os-release"))
    else {
        return String::new();
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
            .unwrap_or_default()
    };
    let id = field("ID");
    let like = field("ID_LIKE");
    match like.split_whitespace().next() {
        Some(first) if id != "ubuntu" => first.to_string(),
        _ => id,
    }
}

/// Where DKMS installs every module on the distribution `id` ([`os_release_id`]), whatever
/// DEST_MODULE_LOCATION says: `/updates/dkms` on Debian, Ubuntu and Arch, `/extra` on
/// Fedora and RHEL, `/updates` on SUSE (DKMS 3.0's `override_dest_module_location`); `None`
/// elsewhere (the dkms.conf's own location).
pub fn distribution_location(id: &str) -> Option<&'static str> {
    let starts = |p: &[&str]| p.iter().any(|p| id.starts_with(p));
    if starts(&["debian", "ubuntu", "arch"]) {
        Some("/updates/dkms")
    } else if starts(&["fedora", "rhel", "ovm"]) {
        Some("/extra")
    } else if starts(&["sles", "suse", "opensuse"]) {
        Some("/updates")
    } else {
        None
    }
}

/// Fail unless `path` (under `root`) stays inside `root` once symlinks are followed: its
/// deepest existing ancestor must resolve inside the canonical root.
pub fn check_inside(root: &Path, path: &Path) -> Result<()> {
    let mut probe = path.parent().unwrap_or(root).to_path_buf();
    loop {
        if std::fs::symlink_metadata(&probe).is_ok() {
            break;
        }
        match probe.parent() {
            Some(p) => probe = p.to_path_buf(),
            None => break,
        }
    }
    let resolved = probe
        .canonicalize()
        .map_err(|e| Error::io("resolve", &probe, e))?;
    if !resolved.starts_with(root) {
        return Err(Error::usage(format!(
            "resolves to {}, outside the root {}; refusing to install through it",
            resolved.display(),
            root.display()
        ))
        .at(&probe)
        .hint("a symlink inside the root points out of it: make it relative to the root, or remove it"));
    }
    Ok(())
}

/// The final bytes of one module: signed (if asked) and compressed as the kernel wants.
pub struct Prepared {
    /// Where it goes, relative to the root: `lib/modules/<release>/<location>/<name>.ko[.<ext>]`.
    pub rel: PathBuf,
    pub bytes: Vec<u8>,
    pub sha256: String,
    pub signed: bool,
}

/// The module files of the built cell `built` (files in `cell_dir`) exactly as they go
/// into a root: each at its DEST_MODULE_LOCATION, signed with `opts.sign` when the kernel
/// checks signatures (CONFIG_MODULE_SIG), compressed as its CONFIG_MODULE_COMPRESS_* says,
/// and read back with the module reader (right vermagic). Work files go under `stage`;
/// nothing is written anywhere else. Notes (why a module is not signed) go to `notes`.
/// `kmx install` writes these into a root; `kmx package` into a Debian package.
///
/// `location`, when given, stands for every file's DEST_MODULE_LOCATION: the directory
/// DKMS uses on the distribution installed into ([`distribution_location`]).
pub fn prepare_files(
    built: &BuiltRecord,
    cell_dir: &Path,
    opts: &Options,
    location: Option<&str>,
    stage: &Path,
    notes: &mut Vec<String>,
) -> Result<Vec<Prepared>> {
    let ext = built.compress;
    let mut dests = Vec::new();
    for f in &built.files {
        // The module's own location is checked even where the distribution's replaces it.
        dest_relative(
            &built.module,
            &built.release,
            &f.dest_location,
            &f.dest_name,
            ext,
        )?;
        dests.push(dest_relative(
            &built.module,
            &built.release,
            location.unwrap_or(&f.dest_location),
            &f.dest_name,
            ext,
        )?);
    }
    let sign = match (&opts.sign, built.sig_enabled) {
        (Some(k), true) => match &opts.sign_file {
            Some(tool) => Some((k, tool)),
            None => {
                notes.push(format!(
                    "not signed: no kernel tree for {} on this machine to take scripts/sign-file from",
                    built.release
                ));
                None
            }
        },
        (None, true) => {
            notes.push("not signed: the kernel checks module signatures (CONFIG_MODULE_SIG) but no key is configured; run `kmx keys generate` or pass --sign-key/--sign-cert".to_string());
            None
        }
        _ => None,
    };
    if sign.is_none() && built.sig_force {
        return Err(Error::failed(format!(
            "kernel {} refuses unsigned modules (CONFIG_MODULE_SIG_FORCE) and kmx cannot sign them",
            built.release
        ))
        .hint("run `kmx keys generate` (or pass --sign-key/--sign-cert) and make sure the kernel tree is fetched"));
    }
    let mut prepared = Vec::new();
    for (f, rel) in built.files.iter().zip(dests) {
        let src = cell_dir.join(&f.file);
        let staged = stage.join(&f.file);
        std::fs::copy(&src, &staged).map_err(|e| {
            Error::io("copy", &src, e).hint(format!(
                "the built cell is damaged; rebuild it with `kmx install` after `kmx remove {}/{}`",
                built.module, built.version
            ))
        })?;
        if let Some((k, tool)) = sign {
            let hash = built.sig_hash.as_deref().unwrap_or("sha256");
            let mut cmd = Command::new(tool);
            cmd.arg(hash).arg(&k.key).arg(&k.cert).arg(&staged);
            process::output(&mut cmd, Kind::Failed)?;
        }
        let plain = std::fs::read(&staged).map_err(|e| Error::io("read", &staged, e))?;
        let bytes = match ext {
            None => plain,
            Some(c) => compress(c, &staged)?,
        };
        // Read back what will be installed with the module reader: right kernel, signed.
        let module = Module::parse(&bytes).map_err(|e| e.into_error(&src))?;
        if module.vermagic().and_then(Vermagic::parse).as_ref() != Some(&built.vermagic) {
            return Err(Error::failed(format!(
                "vermagic {:?} differs from the recorded {:?}",
                module.vermagic().unwrap_or(""),
                built.vermagic.to_string()
            ))
            .at(&src)
            .hint("the built cell was changed after it was built; rebuild it"));
        }
        let signed = module.signature.is_some();
        prepared.push(Prepared {
            rel,
            sha256: sha256(&bytes),
            bytes,
            signed,
        });
    }
    Ok(prepared)
}

/// Install the built cell `built` (files in `cell_dir`) into `root` (canonical).
pub fn install(
    store: &Store,
    root: &Path,
    built: &BuiltRecord,
    cell_dir: &Path,
    opts: &Options,
) -> Result<Installed> {
    let key = built.key();
    let mut notes = Vec::new();
    // 1. Signed and compressed bytes, prepared off to the side; 2. their destinations,
    // checked before anything is written into the root.
    let stage = crate::state::tmp::dir_in(&store.dir)?;
    let location = distribution_location(&os_release_id(root));
    let prepared = prepare_files(built, cell_dir, opts, location, stage.path(), &mut notes)?;
    for p in &prepared {
        check_inside(root, &root.join(&p.rel))?;
    }
    // 4. In-tree modules of the same name are moved aside (those already recorded stay so).
    let previous = store.load_install(root, &key)?;
    let first = previous.is_none();
    let mut displaced: Vec<Displaced> = previous
        .as_ref()
        .map(|p| p.displaced.clone())
        .unwrap_or_default();
    let owned: HashSet<PathBuf> = store
        .installs_in(root)?
        .iter()
        .flat_map(|r| r.files.iter().map(|f| f.path.clone()))
        .collect();
    // What is at a destination and no install of kmx's wrote (a vendor's module, a link) is
    // moved aside like an in-tree module, not overwritten.
    let names: Vec<&str> = built.files.iter().map(|f| f.dest_name.as_str()).collect();
    for rel in find_in_tree(root, &built.release, &names, &owned)? {
        if !displaced.iter().any(|d| d.original == rel) {
            let under = rel
                .strip_prefix(Path::new("lib/modules").join(&built.release))
                .unwrap_or(&rel);
            displaced.push(Displaced {
                saved: store.displaced_dir(root, &built.release).join(under),
                original: rel,
            });
        }
    }
    if let Some(h) = &opts.pre_install {
        run_hook("PRE_INSTALL", h, built, root)?;
    }
    // 5. Intent, then action.
    let mut record = InstallRecord {
        root: root.to_path_buf(),
        module: built.module.clone(),
        version: built.version.clone(),
        release: built.release.clone(),
        target: built.target.clone(),
        state: InstallState::Installing,
        files: prepared
            .iter()
            .map(|p| InstalledFile {
                path: p.rel.clone(),
                sha256: p.sha256.clone(),
                signed: p.signed,
            })
            .collect(),
        displaced: displaced.clone(),
        updated_at: now(),
    };
    // Files an earlier install of this cell put elsewhere (another compression) go too;
    // they stay in the intent until removed.
    let stale: Vec<InstalledFile> = previous
        .map(|p| p.files)
        .unwrap_or_default()
        .into_iter()
        .filter(|f| !record.files.iter().any(|n| n.path == f.path))
        .collect();
    // Another version of the module installed for this kernel and target goes first: only
    // now, when everything that can fail before touching the root has succeeded.
    for other in store.installs_in(root)? {
        if other.module == built.module
            && other.version != built.version
            && other.release == built.release
            && other.target == built.target
        {
            notes.push(format!(
                "uninstalled {} {} first (another version)",
                other.module, other.version
            ));
            uninstall(store, other, false, None)?;
        }
    }
    let mut intent = record.clone();
    intent.files.extend(stale.iter().cloned());
    store.save_install(&intent)?;
    let acted = (|| -> Result<()> {
        for d in &displaced {
            move_file(&root.join(&d.original), &d.saved)?;
        }
        for f in &stale {
            remove_in_root(root, &f.path)?;
        }
        for p in &prepared {
            let dest = root.join(&p.rel);
            check_inside(root, &dest)?;
            write_into_root(&dest, &p.bytes, opts)?;
        }
        pause(opts, "before-depmod");
        if opts.depmod {
            depmod(root, &built.release)?;
        }
        Ok(())
    })();
    if let Err(e) = acted {
        // A first install that failed (a read-only root, a full disk) is undone and
        // forgotten, not left for `status` to call interrupted; one that cannot be undone,
        // or that replaced an earlier install, keeps its intent for a re-run to complete.
        if first && undo_install(root, &intent).is_ok() {
            store.delete_install(&intent)?;
            return Err(e.caused_by(format!(
                "install of {} {} into {} (nothing of it was left in the root)",
                built.module,
                built.version,
                root.display()
            )));
        }
        return Err(e);
    }
    record.state = InstallState::Installed;
    record.updated_at = now();
    store.save_install(&record)?;
    if let Some(h) = &opts.post_install
        && let Err(e) = run_hook("POST_INSTALL", h, built, root)
    {
        notes.push(format!("warning: {}", crate::error::render_inline(&e)));
    }
    Ok(Installed { record, notes })
}

/// Put the root back as it was before a first install whose action failed: remove the files
/// it wrote (those holding the bytes it meant to write), put back what it moved aside.
fn undo_install(root: &Path, record: &InstallRecord) -> Result<()> {
    for f in &record.files {
        let path = root.join(&f.path);
        if std::fs::read(&path).is_ok_and(|b| sha256(&b) == f.sha256) {
            remove_in_root(root, &f.path)?;
        }
    }
    for d in &record.displaced {
        if std::fs::symlink_metadata(&d.saved).is_ok() {
            move_file(&d.saved, &root.join(&d.original))?;
        }
    }
    Ok(())
}

/// Undo an install: remove its files, restore what it moved aside, run depmod, drop the
/// record. Safe to re-run after a crash.
/// What an uninstall did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uninstalled {
    /// The files were removed from the root (and displaced modules put back).
    Removed,
    /// The root no longer exists (an image deleted with `rm -rf`): there was nothing to
    /// remove, and the record of the install is dropped.
    RootGone,
}

pub fn uninstall(
    store: &Store,
    mut record: InstallRecord,
    depmod_after: bool,
    pause: Option<&str>,
) -> Result<Uninstalled> {
    let root = record.root.clone();
    if matches!(std::fs::symlink_metadata(&root), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
    {
        for d in &record.displaced {
            let _ = std::fs::remove_file(&d.saved);
        }
        store.delete_install(&record)?;
        return Ok(Uninstalled::RootGone);
    }
    record.state = InstallState::Removing;
    record.updated_at = now();
    store.save_install(&record)?;
    for f in &record.files {
        remove_in_root(&root, &f.path)?;
    }
    for d in &record.displaced {
        let original = root.join(&d.original);
        check_inside(&root, &original)?;
        move_file(&d.saved, &original)?;
    }
    pause_at(pause, "uninstall-before-depmod");
    if depmod_after {
        depmod(&root, &record.release)?;
    }
    store.delete_install(&record)?;
    Ok(Uninstalled::Removed)
}

fn pause(opts: &Options, point: &str) {
    pause_at(opts.pause_at.as_deref(), point);
}

/// The test hook: see [`process::pause_for_tests`]; the install or uninstall then finishes,
/// and the command says it was interrupted.
fn pause_at(asked: Option<&str>, point: &str) {
    process::pause_for_tests(asked, point);
}

/// Write one module into the root atomically: as `.kmx-tmp-<pid>-...` next to `dest`
/// (0644 from the start, fsynced), then renamed. A kmx killed before the rename leaves only
/// that name, which the next run removes (crate::state::tmp): the root never keeps it.
fn write_into_root(dest: &Path, bytes: &[u8], opts: &Options) -> Result<()> {
    crate::state::home::write_atomic_then(dest, bytes, Some(0o644), &|| {
        pause(opts, "writing-module")
    })
}

fn remove_in_root(root: &Path, rel: &Path) -> Result<()> {
    let path = root.join(rel);
    check_inside(root, &path)?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", &path, e)),
    }
}

/// Move `from` to `to` (possibly across file systems), idempotently: `to` is written
/// atomically before `from` is removed, and a missing `from` means it is already done. A
/// symbolic link moves as a link (its target is never read), so uninstall puts back exactly
/// what install moved aside.
fn move_file(from: &Path, to: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(from) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("read", from, e)),
    };
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(from).map_err(|e| Error::io("read link", from, e))?;
        let dir = to.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        let tmp = dir.join(format!(".kmx-link-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(|e| Error::io("create link", &tmp, e))?;
        std::fs::rename(&tmp, to).map_err(|e| Error::io("rename", to, e))?;
    } else {
        let bytes = std::fs::read(from).map_err(|e| Error::io("read", from, e))?;
        write_atomic_mode(to, &bytes, Some(0o644))?;
    }
    std::fs::remove_file(from).map_err(|e| Error::io("remove", from, e))
}

/// Modules named like `names` (`.ko`, `.ko.xz`, `.ko.zst`, `.ko.gz`) anywhere under
/// `<root>/lib/modules/<release>` except the `build`/`source` links and `skip`, relative to
/// the root. Symlinks are not followed: a link of such a name is moved aside as a link.
fn find_in_tree(
    root: &Path,
    release: &str,
    names: &[&str],
    skip: &HashSet<PathBuf>,
) -> Result<Vec<PathBuf>> {
    let base = Path::new("lib/modules").join(release);
    let wanted: HashSet<String> = names
        .iter()
        .flat_map(|n| {
            ["ko", "ko.xz", "ko.zst", "ko.gz"]
                .into_iter()
                .map(move |e| format!("{n}.{e}"))
        })
        .collect();
    let mut out = Vec::new();
    let mut stack = vec![base.clone()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read directory", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
            let name = entry.file_name();
            let child = rel.join(&name);
            let ft = entry
                .file_type()
                .map_err(|e| Error::io("stat", entry.path(), e))?;
            if ft.is_dir() {
                stack.push(child);
            } else if (ft.is_file() || ft.is_symlink())
                && wanted.contains(name.to_string_lossy().as_ref())
                && !skip.contains(&child)
            {
                out.push(child);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Compress `file` as `modules_install` does for CONFIG_MODULE_COMPRESS_*.
fn compress(c: Compression, file: &Path) -> Result<Vec<u8>> {
    let ext = c.extension();
    let (prog, args, package): (&str, &[&str], &str) = match c {
        Compression::Xz => (
            "xz",
            &["--check=crc32", "--lzma2=dict=1MiB", "-c"],
            "xz-utils",
        ),
        Compression::Zstd => ("zstd", &["-q", "-c"], "zstd"),
        Compression::Gzip => ("gzip", &["-n", "-c"], "gzip"),
    };
    let mut cmd = Command::new(prog);
    cmd.args(args).arg(file);
    let out = process::output(&mut cmd, Kind::Failed).map_err(|e| {
        e.hint_if_missing(format!(
            "the kernel wants .ko.{ext} modules: install {package}"
        ))
    })?;
    Ok(out.stdout)
}

/// `depmod -b <root> <release>`: rebuild modules.dep and friends for that kernel.
pub fn depmod(root: &Path, release: &str) -> Result<()> {
    if !root.join("lib/modules").join(release).is_dir() {
        return Ok(());
    }
    let mut cmd = Command::new("depmod");
    cmd.arg("-b").arg(root).arg(release);
    process::output(&mut cmd, Kind::Failed)
        .map_err(|e| e.hint_if_missing("install kmod, or pass --no-depmod"))
        .map(|_| ())
}

/// Run a manifest hook with bash in the source directory, with DKMS's variables and
/// `KMX_ROOT`.
pub fn run_hook(name: &str, hook: &Hook, built: &BuiltRecord, root: &Path) -> Result<()> {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(&hook.line)
        .current_dir(&hook.dir)
        .env("kernelver", &built.release)
        .env("module", &built.module)
        .env("module_version", &built.version)
        .env("KMX_TARGET", &built.target)
        .env("KMX_ROOT", root);
    process::output(&mut cmd, Kind::Failed)
        .map_err(|e| e.caused_by(format!("{name} of {} {}", built.module, built.version)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_distribution_decides_the_location_as_dkms_decides_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(os_release_id(root), "");
        assert_eq!(distribution_location(&os_release_id(root)), None);
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        // Debian's /etc/os-release is an absolute link to /usr/lib/os-release: the root's.
        std::os::unix::fs::symlink("/usr/lib/os-release", root.join("etc/os-release")).unwrap();
        let cases = [
            (
                "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n",
                "debian",
                Some("/updates/dkms"),
            ),
            (
                "ID=raspbian\nID_LIKE=debian\n",
                "debian",
                Some("/updates/dkms"),
            ),
            (
                "ID=ubuntu\nID_LIKE=debian\n",
                "ubuntu",
                Some("/updates/dkms"),
            ),
            (
                "ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n",
                "rhel",
                Some("/extra"),
            ),
            (
                "ID=opensuse-leap\nID_LIKE=\"suse opensuse\"\n",
                "suse",
                Some("/updates"),
            ),
            ("ID=alpine\n", "alpine", None),
        ];
        for (text, id, location) in cases {
            std::fs::write(root.join("usr/lib/os-release"), text).unwrap();
            assert_eq!(os_release_id(root), id, "{text}");
            assert_eq!(distribution_location(id), location, "{text}");
        }
    }

    #[test]
    fn destinations_stay_under_lib_modules() {
        assert_eq!(
            dest_relative(
                "m",
                "6.1.0-50-arm64",
                "/updates/dkms",
                "hello",
                Some(Compression::Xz)
            )
            .unwrap(),
            PathBuf::from("lib/modules/6.1.0-50-arm64/updates/dkms/hello.ko.xz")
        );
        let err = dest_relative("m", "6.1", "/updates/../../../etc", "hello", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "module `m`: DEST_MODULE_LOCATION \"/updates/../../../etc\" climbs out with `..`: it would leave /lib/modules/<kver>; refusing to install"
        );
        assert!(dest_relative("m", "6.1", "/updates", "../x", None).is_err());
        assert!(dest_relative("m", "..", "/updates", "x", None).is_err());
        // DKMS takes Debian 13 mstflint-dkms's `/kernel/../misc/`: the module goes to misc/.
        assert_eq!(
            dest_relative("m", "6.1", "/kernel/../misc", "m", None).unwrap(),
            PathBuf::from("lib/modules/6.1/misc/m.ko")
        );
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(root.join("lib/modules/r")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let root = root.canonicalize().unwrap();
        std::os::unix::fs::symlink(&outside, root.join("lib/modules/r/updates")).unwrap();
        let err = check_inside(&root, &root.join("lib/modules/r/updates/kmx/a.ko")).unwrap_err();
        assert!(err.to_string().contains("outside the root"), "{err}");
        // A relative link that stays inside (merged /usr) is fine.
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib2")).unwrap();
        check_inside(&root, &root.join("lib2/modules/x.ko")).unwrap();
    }
}

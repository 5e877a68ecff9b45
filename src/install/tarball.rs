//! Binary-only distribution (DKMS's mktarball / ldtarball): built cells and their records
//! as one tar archive (`.tar`, or gzip-compressed when the name ends in `.gz`/`.tgz`), and
//! importing such an archive into the store as built cells.
//!
//! Layout inside the archive: `kmx-tarball.json` (what it holds), then
//! `built/<module>/<version>/<release>/<target>/<file>` for each cell's `.ko` files,
//! `Module.symvers` and `kmx-built.json`. Import refuses absolute paths, `..`, any link
//! entry (a link could point outside the store), anything outside that layout, and a cell
//! whose files do not match its record (SHA-256 and vermagic, read with the module reader).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::manifest::{ModuleField, check_module_field};
use crate::digest::sha256;
use crate::error::{Error, Result};
use crate::modfile::Vermagic;
use crate::state::store::{BUILT_RECORD, BuiltRecord, Origin, Store, valid_component};
use crate::verify::module::Module;

const MANIFEST: &str = "kmx-tarball.json";
/// The most bytes one archive entry may hold: what the module reader accepts of a module.
const MAX_ENTRY: u64 = crate::verify::decompress::DEFAULT_LIMIT as u64;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: u32,
    created_by: String,
    cells: Vec<CellKey2>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CellKey2 {
    module: String,
    version: String,
    release: String,
    target: String,
}

fn gzipped(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.ends_with(".gz") || name.ends_with(".tgz")
}

/// Write `cells` (records of cells in the store) to `out`. Returns the number of files.
pub fn create(store: &Store, cells: &[BuiltRecord], out: &Path) -> Result<usize> {
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let tmp = crate::state::tmp::file_in(dir)?;
    let file = tmp.reopen().map_err(|e| Error::io("open", tmp.path(), e))?;
    let writer: Box<dyn Write> = if gzipped(out) {
        Box::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::default(),
        ))
    } else {
        Box::new(file)
    };
    let mut tar = tar::Builder::new(writer);
    let manifest = Manifest {
        format: 1,
        created_by: format!("kmx {}", env!("CARGO_PKG_VERSION")),
        cells: cells
            .iter()
            .map(|c| CellKey2 {
                module: c.module.clone(),
                version: c.version.clone(),
                release: c.release.clone(),
                target: c.target.clone(),
            })
            .collect(),
    };
    let text = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::env(format!("cannot serialize the tarball manifest: {e}")))?;
    let mut count = 0;
    let mut add = |tar: &mut tar::Builder<Box<dyn Write>>, name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(crate::state::store::now());
        h.set_entry_type(tar::EntryType::Regular);
        count += 1;
        tar.append_data(&mut h, name, bytes)
            .map_err(|e| Error::io("write", out, e))
    };
    add(&mut tar, MANIFEST, &text)?;
    for c in cells {
        let cell_dir = store.cell_dir(&c.module, &c.version, &c.release, &c.target);
        let prefix = format!(
            "built/{}/{}/{}/{}",
            c.module, c.version, c.release, c.target
        );
        let mut names: Vec<String> = c.files.iter().map(|f| f.file.clone()).collect();
        names.push(BUILT_RECORD.to_string());
        if cell_dir.join("Module.symvers").is_file() {
            names.push("Module.symvers".to_string());
        }
        for name in names {
            let path = cell_dir.join(&name);
            let bytes = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
            add(&mut tar, &format!("{prefix}/{name}"), &bytes)?;
        }
    }
    let writer = tar.into_inner().map_err(|e| Error::io("write", out, e))?;
    drop(writer); // finishes the gzip stream
    tmp.persist(out)
        .map_err(|e| Error::io("rename into place", out, e.error))?;
    Ok(count)
}

/// Validate one entry path: relative, no `..`, in the archive's layout. Returns the path
/// below `built/` (or None for the manifest).
fn entry_path(file: &Path, raw: &Path) -> Result<Option<PathBuf>> {
    let refuse = |why: &str| {
        Error::usage(format!(
            "entry {:?} {why}; refusing to import",
            raw.display().to_string()
        ))
        .at(file)
        .hint("only archives written by `kmx tarball` can be imported")
    };
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse("contains `..`")),
            Component::RootDir | Component::Prefix(_) => return Err(refuse("is an absolute path")),
        }
    }
    if parts.len() == 1 && parts[0] == MANIFEST {
        return Ok(None);
    }
    if parts.first().map(String::as_str) != Some("built") {
        return Err(refuse("is outside built/"));
    }
    if parts.len() > 1 && !parts[1..].iter().all(|p| valid_component(p)) {
        return Err(refuse("has a name kmx does not accept"));
    }
    // NAME_MAX: a longer name is the archive's fault, not the machine's.
    if parts.iter().any(|p| p.len() > 255) {
        return Err(refuse("has a name longer than 255 bytes"));
    }
    if parts.len() > 6 {
        return Err(refuse(
            "is nested deeper than built/<module>/<version>/<release>/<target>/<file>",
        ));
    }
    Ok(Some(parts[1..].iter().collect()))
}

/// A read error inside the archive: truncated, not gzip, not tar. Bad input (exit 2), naming
/// the archive.
fn corrupt(file: &Path, e: std::io::Error) -> Error {
    Error::usage(format!("cannot read this archive: {e}"))
        .at(file)
        .hint("the file is truncated or is not an archive written by `kmx tarball` (gzip-compressed when named .gz or .tgz): copy or make it again")
}

/// Copy one entry to `out`: a read error is the archive's ([`corrupt`]), a write error the
/// machine's (exit 3, naming `dest`).
fn copy_entry(entry: &mut impl Read, out: &mut File, file: &Path, dest: &Path) -> Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(corrupt(file, e)),
        };
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("extract the archive into", dest, e))?;
        total += n as u64;
    }
}

/// Import the archive `file` into the store. Returns the imported cells' records.
pub fn load(store: &Store, file: &Path) -> Result<Vec<BuiltRecord>> {
    let f = File::open(file).map_err(|e| Error::io("open", file, e))?;
    let reader: Box<dyn Read> = if gzipped(file) {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    std::fs::create_dir_all(&store.dir)
        .map_err(|e| Error::io("create directory", &store.dir, e))?;
    let incoming = crate::state::tmp::dir_in(&store.dir)?;
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| corrupt(file, e))?;
    let mut saw_manifest = false;
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(file, e))?;
        let raw = entry.path().map_err(|e| corrupt(file, e))?.into_owned();
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .ok()
                .flatten()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Err(Error::usage(format!(
                "entry {:?} is a link to {target:?}, which could point outside the store; refusing to import",
                raw.display().to_string()
            ))
            .at(file)
            .hint("only archives written by `kmx tarball` can be imported"));
        }
        let rel = entry_path(file, &raw)?;
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(Error::usage(format!(
                "entry {:?} is not a regular file; refusing to import",
                raw.display().to_string()
            ))
            .at(file));
        }
        // Sizes are checked from the header before reading, and entries stream to disk:
        // a small archive cannot make kmx hold or write more than one module's worth.
        let limit = MAX_ENTRY;
        let size = entry.header().size().map_err(|e| {
            Error::usage(format!(
                "entry {:?} has a bad size: {e}",
                raw.display().to_string()
            ))
            .at(file)
        })?;
        if size > limit {
            return Err(Error::usage(format!(
                "entry {:?} is {size} bytes, more than a module may be ({limit} bytes); refusing to import",
                raw.display().to_string()
            ))
            .at(file)
            .hint("only archives written by `kmx tarball` can be imported"));
        }
        match rel {
            None => {
                let mut bytes = Vec::new();
                (&mut entry)
                    .take(limit)
                    .read_to_end(&mut bytes)
                    .map_err(|e| corrupt(file, e))?;
                let m: Manifest = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::usage(format!("cannot parse {MANIFEST}: {e}")).at(file))?;
                if m.format != 1 {
                    return Err(Error::usage(format!(
                        "{MANIFEST} has format {}, this kmx reads format 1",
                        m.format
                    ))
                    .at(file)
                    .hint("use a kmx as new as the one that wrote the archive"));
                }
                saw_manifest = true;
            }
            Some(rel) => {
                if rel.components().count() != 5 {
                    return Err(Error::usage(format!(
                        "entry {:?} is not built/<module>/<version>/<release>/<target>/<file>; refusing to import",
                        raw.display().to_string()
                    ))
                    .at(file));
                }
                let dest = incoming.path().join(&rel);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| Error::io("create directory", parent, e))?;
                }
                let mut out = File::create(&dest).map_err(|e| Error::io("create", &dest, e))?;
                let written = copy_entry(
                    &mut (&mut entry).take(limit.saturating_add(1)),
                    &mut out,
                    file,
                    &dest,
                )?;
                if written > limit {
                    return Err(Error::usage(format!(
                        "entry {:?} holds more than its header says; refusing to import",
                        raw.display().to_string()
                    ))
                    .at(file));
                }
            }
        }
    }
    if !saw_manifest {
        return Err(Error::usage(format!("no {MANIFEST} in the archive"))
            .at(file)
            .hint("only archives written by `kmx tarball` can be imported"));
    }
    // Check every cell before moving any into place.
    let mut cells = Vec::new();
    for m in crate::state::store::subdirs(incoming.path())? {
        for v in crate::state::store::subdirs(&m)? {
            for r in crate::state::store::subdirs(&v)? {
                for t in crate::state::store::subdirs(&r)? {
                    cells.push((t.clone(), check_cell(file, incoming.path(), &t)?));
                }
            }
        }
    }
    let origin = Origin::Tarball(
        file.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let mut out = Vec::new();
    for (dir, mut rec) in cells {
        rec.origin = origin.clone();
        let text = serde_json::to_vec_pretty(&rec)
            .map_err(|e| Error::env(format!("cannot serialize a state record: {e}")))?;
        crate::state::write_atomic(&dir.join(BUILT_RECORD), &text)?;
        let dest = store.cell_dir(&rec.module, &rec.version, &rec.release, &rec.target);
        crate::state::replace_dir(&dir, &dest)?;
        out.push(rec);
    }
    Ok(out)
}

/// Check one extracted cell against its record.
fn check_cell(file: &Path, base: &Path, dir: &Path) -> Result<BuiltRecord> {
    let rel = dir.strip_prefix(base).unwrap_or(dir);
    let rec_path = dir.join(BUILT_RECORD);
    let bytes = std::fs::read(&rec_path).map_err(|_| {
        Error::usage(format!("cell {} has no {BUILT_RECORD}", rel.display())).at(file)
    })?;
    let rec: BuiltRecord = serde_json::from_slice(&bytes).map_err(|e| {
        Error::usage(format!(
            "cannot parse {}/{BUILT_RECORD}: {e}",
            rel.display()
        ))
        .at(file)
    })?;
    let expected: PathBuf = [&rec.module, &rec.version, &rec.release, &rec.target]
        .iter()
        .collect();
    if expected != rel {
        return Err(Error::usage(format!(
            "{}/{BUILT_RECORD} describes {}, not its own directory",
            rel.display(),
            rec.key()
        ))
        .at(file));
    }
    for f in &rec.files {
        if !valid_component(&f.file) {
            return Err(
                Error::usage(format!("{} names a bad file {:?}", rel.display(), f.file)).at(file),
            );
        }
        for (field, value) in [
            (ModuleField::DestName, &f.dest_name),
            (ModuleField::DestLocation, &f.dest_location),
        ] {
            if let Err(why) = check_module_field(field, value) {
                return Err(Error::usage(format!(
                    "{}/{BUILT_RECORD}: {} {value:?} {why}; refusing to import",
                    rel.display(),
                    field.dkms_name()
                ))
                .at(file));
            }
        }
        let path = dir.join(&f.file);
        let data = std::fs::read(&path).map_err(|_| {
            Error::usage(format!("cell {} lacks {}", rel.display(), f.file)).at(file)
        })?;
        if sha256(&data) != f.sha256 {
            return Err(Error::usage(format!(
                "{}/{} does not match the SHA-256 in its record",
                rel.display(),
                f.file
            ))
            .at(file)
            .hint("the archive is damaged; make it again with `kmx tarball`"));
        }
        let module = Module::parse(&data).map_err(|e| e.into_error(&path))?;
        if module.vermagic().and_then(Vermagic::parse).as_ref() != Some(&rec.vermagic) {
            return Err(Error::usage(format!(
                "{}/{} has vermagic {:?}, its record says {:?}",
                rel.display(),
                f.file,
                module.vermagic().unwrap_or(""),
                rec.vermagic.to_string()
            ))
            .at(file));
        }
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_confined() {
        let f = Path::new("x.tar");
        assert_eq!(entry_path(f, Path::new("kmx-tarball.json")).unwrap(), None);
        assert_eq!(
            entry_path(f, Path::new("built/m/1/r/t/m.ko")).unwrap(),
            Some(PathBuf::from("m/1/r/t/m.ko"))
        );
        let err = entry_path(f, Path::new("built/../../etc/passwd")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.tar: entry \"built/../../etc/passwd\" contains `..`; refusing to import"
        );
        assert!(entry_path(f, Path::new("/etc/passwd")).is_err());
        assert!(entry_path(f, Path::new("other/file")).is_err());
    }
}

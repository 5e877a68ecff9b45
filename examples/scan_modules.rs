//! Read every `.ko*` under a directory with the module reader (in parallel) and print one
//! tab-separated line per file: path, name, vermagic, depends, signer, key id, hash, number
//! of modversions, exported symbols (sorted, comma-separated). Used to compare the reader
//! with kmod's `modinfo` over whole kernel trees; prints errors as `path\tERROR\tmessage`.
//!
//! `cargo run --release --example scan_modules -- /lib/modules/$(uname -r)`

use std::path::{Path, PathBuf};
use std::time::Instant;

use kmx::verify::Module;
use rayon::prelude::*;

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(&path, out)?;
        } else if path.to_string_lossy().contains(".ko") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| ".".to_string());
    let mut files = Vec::new();
    walk(Path::new(&dir), &mut files)?;
    files.sort();
    let start = Instant::now();
    let lines: Vec<String> = files
        .par_iter()
        .map(|path| match Module::read(path) {
            Ok(m) => {
                let sig = m.signature.as_ref();
                let mut exported = m.exported.clone();
                exported.sort();
                format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    path.display(),
                    m.name().unwrap_or_default(),
                    m.vermagic().unwrap_or_default(),
                    m.modinfo_get("depends").unwrap_or_default(),
                    sig.map(|s| s.signer.as_str()).unwrap_or_default(),
                    sig.map(|s| s.key_id.as_str()).unwrap_or_default(),
                    sig.map(|s| s.hash_algo.as_str()).unwrap_or_default(),
                    m.versions.len(),
                    exported.join(","),
                )
            }
            Err(e) => format!("{}\tERROR\t{e}", path.display()),
        })
        .collect();
    let elapsed = start.elapsed();
    for line in &lines {
        println!("{line}");
    }
    eprintln!("{} files in {:.2?}", lines.len(), elapsed);
    Ok(())
}

//! `Module.symvers`: the CRC, owner and export kind of every symbol a kernel tree exports.
//! This module owns reading that file; checking a module's `__versions` against it belongs
//! to `verify`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use crate::{Error, Result};

/// One exported symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolExport {
    pub crc: u32,
    /// The exporting module, `vmlinux` for the kernel image.
    pub module: String,
    /// `EXPORT_SYMBOL` or `EXPORT_SYMBOL_GPL`.
    pub export: String,
    /// The symbol namespace; empty for none.
    pub namespace: String,
}

/// A parsed `Module.symvers`, by symbol name. Look-ups take `&str`; the map is hashed with
/// [`FxHasher`] because `kmx verify` makes hundreds of thousands of them per run.
#[derive(Debug, Clone, Default)]
pub struct Symvers {
    pub map: HashMap<String, SymbolExport, FxBuildHasher>,
}

/// Builds [`FxHasher`]s.
pub type FxBuildHasher = BuildHasherDefault<FxHasher>;

/// The multiply-rotate hash of rustc's FxHasher: several times faster than SipHash on short
/// symbol names. It does not resist hash flooding, which is fine for a kernel tree's own
/// `Module.symvers`.
#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Symvers {
    pub fn load(path: &Path) -> Result<Symvers> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        Symvers::parse(&text, path)
    }

    /// Parse `0x%08x\t<symbol>\t<module>\t<export>\t<namespace>` lines; the namespace field
    /// may be empty or missing. `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Symvers> {
        let mut map = HashMap::with_capacity_and_hasher(text.len() / 64, FxBuildHasher::default());
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split('\t');
            let (crc, symbol, module, export) =
                match (fields.next(), fields.next(), fields.next(), fields.next()) {
                    (Some(c), Some(s), Some(m), Some(e)) if !s.is_empty() => (c, s, m, e),
                    _ => return Err(malformed(path, n, "expected 4 or 5 tab-separated fields")),
                };
            let namespace = fields.next().unwrap_or("");
            if fields.next().is_some() {
                return Err(malformed(path, n, "more than 5 tab-separated fields"));
            }
            let crc = crc
                .strip_prefix("0x")
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .ok_or_else(|| malformed(path, n, &format!("bad CRC {crc:?}")))?;
            map.insert(
                symbol.to_string(),
                SymbolExport {
                    crc,
                    module: module.to_string(),
                    export: export.to_string(),
                    namespace: namespace.to_string(),
                },
            );
        }
        Ok(Symvers { map })
    }

    pub fn get(&self, symbol: &str) -> Option<&SymbolExport> {
        self.map.get(symbol)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

fn malformed(path: &Path, index: usize, what: &str) -> Error {
    Error::env(format!("malformed Module.symvers line: {what}"))
        .at(path)
        .line(index + 1, 1)
        .hint("the tree's Module.symvers is damaged: regenerate it by building the kernel (`make modules`), or fetch a tree with `kmx kernels fetch`")
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/k/Module.symvers";

    #[test]
    fn parses_fields_with_and_without_namespace() {
        let text = "0xbce1a965\tmodule_layout\tvmlinux\tEXPORT_SYMBOL\t\n\
                    0x12345678\tusb_stor_probe1\tdrivers/usb/storage/usb-storage\tEXPORT_SYMBOL_GPL\tUSB_STORAGE\n\
                    0x00000001\told_style\tvmlinux\tEXPORT_SYMBOL\n";
        let s = Symvers::parse(text, Path::new(P)).unwrap();
        assert_eq!(s.len(), 3);
        let layout = s.get("module_layout").unwrap();
        assert_eq!(
            (layout.crc, layout.module.as_str()),
            (0xbce1a965, "vmlinux")
        );
        assert_eq!(layout.namespace, "");
        let probe = s.get("usb_stor_probe1").unwrap();
        assert_eq!(probe.export, "EXPORT_SYMBOL_GPL");
        assert_eq!(probe.namespace, "USB_STORAGE");
        assert_eq!(s.get("old_style").unwrap().namespace, "");
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let err = |text: &str| Symvers::parse(text, Path::new(P)).unwrap_err().to_string();
        let good = "0x00000001\ta\tvmlinux\tEXPORT_SYMBOL\t\n";
        assert_eq!(
            err(&format!("{good}0xzz\tb\tvmlinux\tEXPORT_SYMBOL\t\n")),
            "/k/Module.symvers:2:1: malformed Module.symvers line: bad CRC \"0xzz\""
        );
        assert_eq!(
            err(&format!("{good}{good}0x00000002 b vmlinux\n")),
            "/k/Module.symvers:3:1: malformed Module.symvers line: expected 4 or 5 tab-separated fields"
        );
    }
}

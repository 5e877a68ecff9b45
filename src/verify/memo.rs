//! What reading a compressed module found, kept by the SHA-256 of its compressed bytes, so a
//! warm `kmx verify` of a tree of `.ko.xz` files reads and hashes each file but decompresses
//! none of the modules it has seen. The key is the content itself: a file rewritten with the
//! same path, size and times is a miss. Entries are this kmx's own (the file starts with
//! this binary's identity; another kmx's file is ignored and replaced).
//!
//! Only reads without the signed-content digest use it (the digest needs every byte, and has
//! its own cache, [`super::certs::DigestCache`]). The store is one file, loaded once by
//! [`open`], written once by [`save`] with what this run read (and what it found there that
//! this run did not use, up to [`MAX_BYTES`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

use super::module::{Modinfo, Module, Signature, SignedMessage, SymbolVersion, VersionsFormat};
use crate::config::arch::{ElfClass, ElfIdentity, Endian};
use crate::verify::decompress::Compression;

/// The most the store keeps.
pub const MAX_BYTES: usize = 256 << 20;

struct Store {
    file: PathBuf,
    /// Entries found in the file: key -> encoded module.
    known: HashMap<[u8; 32], Vec<u8>>,
    /// Keys used by this run, and entries read this run.
    used: Mutex<Vec<[u8; 32]>>,
    found: Mutex<Vec<([u8; 32], Vec<u8>)>>,
}

static STORE: OnceLock<Store> = OnceLock::new();

fn header() -> Vec<u8> {
    let exe = crate::digest::file_identity(Path::new("/proc/self/exe"));
    format!(
        "kmx-verify-modules-v1 {} {exe}\n",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

/// Use the store in `dir` for this process (`KMX_HOME/cache/verify`). A second call changes
/// nothing.
pub fn open(dir: &Path) {
    let file = dir.join("modules.bin");
    let mut known = HashMap::new();
    if let Ok(bytes) = std::fs::read(&file)
        && let Some(mut rest) = bytes.strip_prefix(header().as_slice())
    {
        while rest.len() >= 36 {
            let mut key = [0u8; 32];
            key.copy_from_slice(&rest[..32]);
            let len = u32::from_le_bytes([rest[32], rest[33], rest[34], rest[35]]) as usize;
            let Some(entry) = rest.get(36..36 + len) else {
                break;
            };
            known.insert(key, entry.to_vec());
            rest = &rest[36 + len..];
        }
    }
    let _ = STORE.set(Store {
        file,
        known,
        used: Mutex::default(),
        found: Mutex::default(),
    });
}

/// Write the store back when this run read anything new: the entries used or found by this
/// run first, then the others, up to [`MAX_BYTES`]. A failure to write costs the next run
/// its decompressions, nothing else.
pub fn save() {
    let Some(store) = STORE.get() else { return };
    let found = std::mem::take(&mut *store.found.lock().unwrap_or_else(|e| e.into_inner()));
    if found.is_empty() {
        return;
    }
    let used = std::mem::take(&mut *store.used.lock().unwrap_or_else(|e| e.into_inner()));
    let mut out = header();
    let mut written = std::collections::HashSet::new();
    let mut put = |key: &[u8; 32], entry: &[u8], out: &mut Vec<u8>| {
        if out.len() + 36 + entry.len() <= MAX_BYTES && written.insert(*key) {
            out.extend_from_slice(key);
            out.extend_from_slice(&(entry.len() as u32).to_le_bytes());
            out.extend_from_slice(entry);
        }
    };
    for (key, entry) in &found {
        put(key, entry, &mut out);
    }
    for key in &used {
        if let Some(entry) = store.known.get(key) {
            put(key, entry, &mut out);
        }
    }
    for (key, entry) in &store.known {
        put(key, entry, &mut out);
    }
    if let Some(dir) = store.file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = crate::state::home::write_atomic(&store.file, &out);
}

/// The module compressed as `bytes`, read without the content digest: from the store, or by
/// `read` (then kept).
pub fn module(
    bytes: &[u8],
    read: impl FnOnce() -> Result<Module, super::module::ReadError>,
) -> Result<Module, super::module::ReadError> {
    let Some(store) = STORE.get() else {
        return read();
    };
    let mut h = Sha256::new();
    h.update(b"kmx-verify-module\0");
    h.update(bytes);
    let key: [u8; 32] = h.finalize().into();
    if let Some(module) = store.known.get(&key).and_then(|e| decode(e)) {
        store
            .used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(key);
        return Ok(module);
    }
    let module = read()?;
    store
        .found
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((key, encode(&module)));
    Ok(module)
}

#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    fn opt(&mut self, v: Option<&[u8]>) {
        match v {
            Some(b) => {
                self.u8(1);
                self.bytes(b);
            }
            None => self.u8(0),
        }
    }
    fn strings(&mut self, v: &[String]) {
        self.u32(v.len() as u32);
        for s in v {
            self.bytes(s.as_bytes());
        }
    }
}

struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn opt(&mut self) -> Option<Option<Vec<u8>>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.bytes()?.to_vec())),
            _ => None,
        }
    }
    fn strings(&mut self) -> Option<Vec<String>> {
        let n = self.u32()? as usize;
        (0..n).map(|_| self.string()).collect()
    }
}

fn encode(m: &Module) -> Vec<u8> {
    let mut w = W::default();
    w.u8(match m.identity.class {
        ElfClass::Elf32 => 0,
        ElfClass::Elf64 => 1,
    });
    w.u8(match m.identity.endian {
        Endian::Little => 0,
        Endian::Big => 1,
    });
    w.u32(u32::from(m.identity.machine));
    w.u32(m.e_flags);
    let (text, entries) = m.modinfo.parts();
    w.bytes(text.as_bytes());
    w.u32(entries.len() as u32);
    for &(a, b, c) in entries {
        w.u32(a);
        w.u32(b);
        w.u32(c);
    }
    w.u32(m.versions.len() as u32);
    for v in &m.versions {
        w.bytes(v.name.as_bytes());
        w.u32(v.crc);
    }
    w.u8(match m.versions_format {
        VersionsFormat::None => 0,
        VersionsFormat::Classic => 1,
        VersionsFormat::Extended => 2,
    });
    w.u8(u8::from(m.has_this_module));
    w.strings(&m.undefined);
    w.strings(&m.exported);
    match &m.signature {
        None => w.u8(0),
        Some(s) => {
            w.u8(1);
            for f in [&s.signer, &s.key_id, &s.hash_algo, &s.id_type] {
                w.bytes(f.as_bytes());
            }
            match &s.message {
                None => w.u8(0),
                Some(msg) => {
                    w.u8(1);
                    w.bytes(&msg.issuer);
                    w.bytes(&msg.serial);
                    w.opt(msg.subject_key_id.as_deref());
                    w.bytes(&msg.digest_oid);
                    w.bytes(&msg.signature_oid);
                    w.opt(msg.signed_attrs.as_deref());
                    w.opt(msg.message_digest.as_deref());
                    w.bytes(&msg.signature);
                    w.u32(msg.certificates.len() as u32);
                    for c in &msg.certificates {
                        w.bytes(c);
                    }
                    w.opt(msg.content_digest.as_deref());
                }
            }
        }
    }
    match m.arm_cpu_arch {
        None => w.u8(0),
        Some(v) => {
            w.u8(1);
            w.u8(v);
        }
    }
    w.u8(match m.compression {
        None => 0,
        Some(Compression::Xz) => 1,
        Some(Compression::Zstd) => 2,
        Some(Compression::Gzip) => 3,
    });
    w.0
}

fn decode(bytes: &[u8]) -> Option<Module> {
    let mut r = R(bytes);
    let class = match r.u8()? {
        0 => ElfClass::Elf32,
        1 => ElfClass::Elf64,
        _ => return None,
    };
    let endian = match r.u8()? {
        0 => Endian::Little,
        1 => Endian::Big,
        _ => return None,
    };
    let machine = u16::try_from(r.u32()?).ok()?;
    let e_flags = r.u32()?;
    let text = r.string()?;
    let n = r.u32()? as usize;
    let entries = (0..n)
        .map(|_| Some((r.u32()?, r.u32()?, r.u32()?)))
        .collect::<Option<Vec<_>>>()?;
    let modinfo = Modinfo::from_parts(text, entries)?;
    let n = r.u32()? as usize;
    let versions = (0..n)
        .map(|_| {
            Some(SymbolVersion {
                name: r.string()?,
                crc: r.u32()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let versions_format = match r.u8()? {
        0 => VersionsFormat::None,
        1 => VersionsFormat::Classic,
        2 => VersionsFormat::Extended,
        _ => return None,
    };
    let has_this_module = r.u8()? == 1;
    let undefined = r.strings()?;
    let exported = r.strings()?;
    let signature = match r.u8()? {
        0 => None,
        1 => {
            let (signer, key_id, hash_algo, id_type) =
                (r.string()?, r.string()?, r.string()?, r.string()?);
            let message = match r.u8()? {
                0 => None,
                1 => Some(Box::new(SignedMessage {
                    issuer: r.bytes()?.to_vec(),
                    serial: r.bytes()?.to_vec(),
                    subject_key_id: r.opt()?,
                    digest_oid: r.bytes()?.to_vec(),
                    signature_oid: r.bytes()?.to_vec(),
                    signed_attrs: r.opt()?,
                    message_digest: r.opt()?,
                    signature: r.bytes()?.to_vec(),
                    certificates: {
                        let n = r.u32()? as usize;
                        (0..n)
                            .map(|_| r.bytes().map(<[u8]>::to_vec))
                            .collect::<Option<Vec<_>>>()?
                    },
                    content_digest: r.opt()?,
                })),
                _ => return None,
            };
            Some(Signature {
                signer,
                key_id,
                hash_algo,
                id_type,
                message,
            })
        }
        _ => return None,
    };
    let arm_cpu_arch = match r.u8()? {
        0 => None,
        1 => Some(r.u8()?),
        _ => return None,
    };
    let compression = match r.u8()? {
        0 => None,
        1 => Some(Compression::Xz),
        2 => Some(Compression::Zstd),
        3 => Some(Compression::Gzip),
        _ => return None,
    };
    if !r.0.is_empty() {
        return None;
    }
    Some(Module {
        identity: ElfIdentity {
            class,
            endian,
            machine,
        },
        e_flags,
        modinfo,
        versions,
        versions_format,
        has_this_module,
        undefined,
        exported,
        signature,
        arm_cpu_arch,
        compression,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_of_a_real_tree_comes_back_whole() {
        // Debian's compressed modules where fetched (KMX_TEST_HOME), else none to check.
        let Some(home) = std::env::var_os("KMX_TEST_HOME") else {
            return;
        };
        let dir = Path::new(&home).join("trees/debian-6.12.95+deb12/lib/modules");
        let mut seen = 0;
        for entry in walkdir(&dir).into_iter().take(300) {
            let bytes = std::fs::read(&entry).unwrap();
            let Ok(module) = Module::parse_with(&bytes, false) else {
                continue;
            };
            assert_eq!(
                decode(&encode(&module)).as_ref(),
                Some(&module),
                "{entry:?}"
            );
            seen += 1;
        }
        assert!(seen > 100, "only {seen} modules read under {dir:?}");
    }

    fn walkdir(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.to_string_lossy().ends_with(".ko.xz") {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }
}

//! The certificates a kernel image trusts for module signatures: its built-in keyring
//! (`system_certificate_list`, the `.builtin_trusted_keys` the kernel loads at boot), found
//! in the image `kmx kernels fetch --with-image` brought, and cached.
//!
//! Getting them means decompressing the kernel (a bzImage or zImage holds an xz or gzip
//! stream, an arm64 `vmlinuz` is gzip) and scanning it for DER certificates: a second or
//! more per image. So the result is cached under `$KMX_HOME/cache/certs`, keyed by the
//! image's path, size and modification time, written atomically; `kmx verify` pays the cost
//! once per image, and only when it meets a signed module (the caller loads lazily).
//!
//! This module does the I/O; parsing and checking live in [`crate::verify::signing`]. It
//! must not judge modules.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::Digest;

use crate::error::{Error, Result};
use crate::kernel::symvers::FxBuildHasher;
use crate::state::write_atomic;
use crate::verify::decompress::{self, Compression};
use crate::verify::signing::{Keyring, TrustedKey, scan_certificates, scan_keyring};

/// Largest kernel image kmx decompresses (a vmlinux is a few tens of MiB).
const IMAGE_LIMIT: usize = 512 << 20;

pub use xz::XzError;

/// Why the certificates of a kernel image could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Decompress(#[from] decompress::DecompressError),
    #[error(transparent)]
    Xz(#[from] XzError),
    /// Neither the image nor any stream in it has the keyring, and no stream inflated.
    #[error("no compressed kernel inside the image")]
    NoCompressedKernel,
}

/// The certificates built into `image`, from the cache in `cache_dir` when it is fresh.
/// A cache that cannot be written is not an error (the home may be read-only).
pub fn builtin(image: &Path, cache_dir: &Path) -> Result<Keyring> {
    let meta = std::fs::metadata(image).map_err(|e| {
        Error::io("read", image, e).hint("run `kmx kernels fetch --with-image` again")
    })?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = sha2::Sha256::digest(format!("{}\0{}\0{mtime}", image.display(), meta.len()));
    let cached = cache_dir.join(format!("{}.der", hex(&key[..16])));
    let source = format!("the built-in certificates of {}", image.display());
    let ders = match std::fs::read(&cached) {
        Ok(bytes) => split_concatenated(&bytes),
        Err(_) => {
            let data = std::fs::read(image).map_err(|e| Error::io("read", image, e))?;
            let ders = extract(&data).map_err(|why| {
                Error::failed(format!(
                    "cannot read the kernel image's certificates: {why}"
                ))
                .at(image)
                .hint("pass the kernel's signing certificate with --cert FILE")
            })?;
            if std::fs::create_dir_all(cache_dir).is_ok() {
                let _ = write_atomic(&cached, &ders.concat());
            }
            ders
        }
    };
    let keys: Vec<TrustedKey> = ders
        .iter()
        .filter_map(|der| TrustedKey::from_der(der).ok())
        .collect();
    // Not finding the list is not knowing the keys: say so rather than judge every signed
    // module as signed by an unknown key.
    if keys.is_empty() {
        return Err(Error::failed(
            "found no built-in certificates (system_certificate_list) in the kernel image",
        )
        .at(image)
        .hint("pass the kernel's signing certificate with --cert FILE"));
    }
    Ok(Keyring {
        keys,
        source,
        ..Keyring::default()
    })
}

/// The file remembering the signatures found good with `keyring`'s keys.
fn verified_file(keyring: &Keyring, cache_dir: &Path) -> PathBuf {
    cache_dir.join(format!("verified-{}.bin", hex(&keyring.id())))
}

/// Load what earlier runs found good with `keyring`'s keys (nothing if never saved or
/// unreadable: the cache only saves work).
pub fn load_verified(keyring: &mut Keyring, cache_dir: &Path) {
    let known = std::fs::read(verified_file(keyring, cache_dir))
        .map(|bytes| {
            bytes
                .chunks_exact(16)
                .map(|c| {
                    let mut e = [0u8; 16];
                    e.copy_from_slice(c);
                    e
                })
                .collect()
        })
        .unwrap_or_default();
    keyring.verified = std::sync::Arc::new(crate::verify::signing::Verified {
        known,
        found: Default::default(),
    });
}

/// Save the good signatures of this run with the earlier ones, atomically; a cache that
/// cannot be written is not an error.
pub fn save_verified(keyring: &Keyring, cache_dir: &Path) {
    let found = match keyring.verified.found.lock() {
        Ok(f) if !f.is_empty() => f.clone(),
        _ => return,
    };
    let mut all: Vec<[u8; 16]> = keyring.verified.known.iter().copied().collect();
    all.extend(found);
    all.sort_unstable();
    all.dedup();
    if std::fs::create_dir_all(cache_dir).is_ok() {
        let _ = write_atomic(&verified_file(keyring, cache_dir), &all.concat());
    }
}

/// The digests of signed modules' signed bytes, by file identity: a warm run over a whole
/// module tree then reads only the sections it checks, as it did before signatures were
/// checked, instead of every byte of every module. The identity is the path, device,
/// inode, size, modification and change times (what git's index trusts to say a file is
/// unchanged; the change time cannot be set back by a user) and the digest algorithm.
/// Only SHA-256 digests are kept (what every distribution signs with).
#[derive(Debug, Default)]
pub struct DigestCache {
    known: std::collections::HashMap<[u8; 16], [u8; 32], FxBuildHasher>,
    found: std::sync::Mutex<Vec<([u8; 16], [u8; 32])>>,
}

const DIGESTS_FILE: &str = "module-digests.bin";

impl DigestCache {
    pub fn load(cache_dir: &Path) -> DigestCache {
        let known = std::fs::read(cache_dir.join(DIGESTS_FILE))
            .map(|bytes| {
                bytes
                    .chunks_exact(48)
                    .map(|c| {
                        let mut k = [0u8; 16];
                        let mut d = [0u8; 32];
                        k.copy_from_slice(&c[..16]);
                        d.copy_from_slice(&c[16..]);
                        (k, d)
                    })
                    .collect()
            })
            .unwrap_or_default();
        DigestCache {
            known,
            found: Default::default(),
        }
    }

    /// The identity of the file at `path`, whose metadata `meta` is (the reader's `fstat` of
    /// the file it read), for a digest with `digest_oid`.
    pub fn key(path: &Path, meta: &std::fs::Metadata, digest_oid: &[u8]) -> [u8; 16] {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::MetadataExt;
        let mut h = sha2::Sha256::new();
        h.update(path.as_os_str().as_bytes());
        h.update([0]);
        for n in [
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime() as u64,
            meta.mtime_nsec() as u64,
            meta.ctime() as u64,
            meta.ctime_nsec() as u64,
        ] {
            h.update(n.to_le_bytes());
        }
        h.update(digest_oid);
        let mut key = [0u8; 16];
        key.copy_from_slice(&h.finalize()[..16]);
        key
    }

    pub fn get(&self, key: &[u8; 16]) -> Option<Vec<u8>> {
        self.known.get(key).map(|d| d.to_vec())
    }

    pub fn remember(&self, key: [u8; 16], digest: &[u8]) {
        let Ok(d) = <[u8; 32]>::try_from(digest) else {
            return;
        };
        if let Ok(mut found) = self.found.lock() {
            found.push((key, d));
        }
    }

    /// Save this run's digests with the earlier ones, atomically; a cache that cannot be
    /// written is not an error.
    pub fn save(&self, cache_dir: &Path) {
        let found = match self.found.lock() {
            Ok(f) if !f.is_empty() => f.clone(),
            _ => return,
        };
        let mut all: Vec<([u8; 16], [u8; 32])> = self.known.iter().map(|(k, d)| (*k, *d)).collect();
        all.extend(found);
        all.sort_unstable();
        all.dedup_by_key(|(k, _)| *k);
        let bytes: Vec<u8> = all
            .iter()
            .flat_map(|(k, d)| k.iter().chain(d))
            .copied()
            .collect();
        if std::fs::create_dir_all(cache_dir).is_ok() {
            let _ = write_atomic(&cache_dir.join(DIGESTS_FILE), &bytes);
        }
    }
}

/// Certificates from files the user names (`--cert`): PEM or DER. Errors name the file.
pub fn from_files(files: &[PathBuf]) -> Result<Keyring> {
    let mut keys = Vec::new();
    for file in files {
        let bytes = std::fs::read(file).map_err(|e| Error::io("read", file, e))?;
        let parsed = crate::verify::signing::parse_cert_file(&bytes).map_err(|e| {
            Error::usage(e.to_string()).at(file).hint(
                "pass an X.509 certificate, PEM or DER (e.g. the kernel's certs/signing_key.x509)",
            )
        })?;
        keys.extend(parsed);
    }
    let source = match files {
        [one] => one.display().to_string(),
        _ => format!("the {} --cert files", files.len()),
    };
    Ok(Keyring {
        keys,
        source,
        ..Keyring::default()
    })
}

/// The cache file: DER certificates back to back, each self-delimiting.
fn split_concatenated(bytes: &[u8]) -> Vec<Vec<u8>> {
    scan_certificates(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The DER certificates of a kernel image's built-in keyring: found in the image itself
/// when it is compressed whole (arm64's gzip `vmlinuz`) or not compressed, else in the
/// first compressed stream inside it (a bzImage's or zImage's payload) that has them.
/// Empty when the kernel has none.
pub fn extract(data: &[u8]) -> std::result::Result<Vec<Vec<u8>>, ImageError> {
    if let Some(format) = Compression::detect(data) {
        let inner = inflate(data, format)?;
        return Ok(scan_keyring(&inner));
    }
    let direct = scan_keyring(data);
    if !direct.is_empty() {
        return Ok(direct);
    }
    let mut inflated = 0;
    let mut last_error = None;
    for (magic, format) in [
        (&[0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00][..], Compression::Xz),
        (&[0x1F, 0x8B, 0x08][..], Compression::Gzip),
        (&[0x28, 0xB5, 0x2F, 0xFD][..], Compression::Zstd),
    ] {
        let mut at = 0;
        while let Some(rel) = find(data.get(at..).unwrap_or_default(), magic) {
            let start = at + rel;
            at = start + 1;
            match inflate(data.get(start..).unwrap_or_default(), format) {
                Ok(inner) => {
                    inflated += 1;
                    let certs = scan_keyring(&inner);
                    if !certs.is_empty() {
                        return Ok(certs);
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
    }
    match (inflated, last_error) {
        (0, Some(e)) => Err(e),
        (0, None) => Err(ImageError::NoCompressedKernel),
        _ => Ok(Vec::new()),
    }
}

/// Decompress one stream, keeping what came out before trailing data (a zImage's piggy
/// data is followed by its size; a bzImage's payload by the rest of the image).
fn inflate(data: &[u8], format: Compression) -> std::result::Result<Vec<u8>, ImageError> {
    Ok(match format {
        Compression::Xz => xz::decompress(data, IMAGE_LIMIT)?,
        _ => decompress::decompress_prefix(data, format, IMAGE_LIMIT)?,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The kernel's xz streams (scripts/xz_wrap.sh): one block whose filter chain is a branch
/// converter (BCJ: x86, ARM) then LZMA2. lzma-rs decodes LZMA2 but not the xz BCJ filters,
/// so the container is read here, LZMA2 is decoded by lzma-rs and the BCJ filter undone
/// after (the decoders follow xz-embedded's `xz_dec_bcj.c`, which the kernel's own
/// decompressor uses).
mod xz {
    const FILTER_X86: u64 = 0x04;
    const FILTER_ARM: u64 = 0x07;
    const FILTER_LZMA2: u64 = 0x21;

    /// What is wrong with a kernel image's xz stream.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum XzError {
        #[error("truncated xz stream header")]
        TruncatedStreamHeader,
        #[error("truncated xz block")]
        TruncatedBlock,
        #[error("xz stream has no block")]
        NoBlock,
        #[error("truncated xz block header")]
        TruncatedBlockHeader,
        #[error("bad xz filter")]
        BadFilter,
        #[error("truncated xz filter properties")]
        TruncatedFilterProperties,
        #[error("xz block does not end with the LZMA2 filter")]
        NotLzma2,
        /// Nothing came out of LZMA2: the decoder's words, if it said any.
        #[error("corrupt xz stream: {}", decoder.as_deref().unwrap_or("empty"))]
        Corrupt { decoder: Option<String> },
        #[error("xz filter {0:#x} is not supported")]
        UnsupportedFilter(u64),
        #[error("truncated xz varint")]
        TruncatedVarint,
        #[error("xz varint too long")]
        VarintTooLong,
    }

    pub fn decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, XzError> {
        // Stream header: magic (6), flags (2), CRC32 (4).
        let block = data.get(12..).ok_or(XzError::TruncatedStreamHeader)?;
        let header_size = (usize::from(*block.first().ok_or(XzError::TruncatedBlock)?) + 1) * 4;
        if header_size == 4 {
            return Err(XzError::NoBlock);
        }
        let header = block
            .get(1..header_size)
            .ok_or(XzError::TruncatedBlockHeader)?;
        let flags = *header.first().ok_or(XzError::TruncatedBlockHeader)?;
        let mut rest = header.get(1..).unwrap_or_default();
        if flags & 0x40 != 0 {
            varint(&mut rest)?;
        }
        if flags & 0x80 != 0 {
            varint(&mut rest)?;
        }
        let mut filters = Vec::new();
        for _ in 0..=(flags & 3) {
            let id = varint(&mut rest)?;
            let props = usize::try_from(varint(&mut rest)?).map_err(|_| XzError::BadFilter)?;
            rest = rest
                .get(props..)
                .ok_or(XzError::TruncatedFilterProperties)?;
            filters.push(id);
        }
        if filters.last() != Some(&FILTER_LZMA2) {
            return Err(XzError::NotLzma2);
        }
        let mut input = block.get(header_size..).ok_or(XzError::TruncatedBlock)?;
        let mut out = Vec::new();
        let mut capped = Capped {
            out: &mut out,
            limit,
        };
        let result = lzma_rs::lzma2_decompress(&mut input, &mut capped);
        if out.is_empty() {
            return Err(XzError::Corrupt {
                decoder: result.err().map(|e| e.to_string()),
            });
        }
        for &filter in filters.iter().rev().skip(1) {
            match filter {
                FILTER_X86 => bcj_x86(&mut out),
                FILTER_ARM => bcj_arm(&mut out),
                other => return Err(XzError::UnsupportedFilter(other)),
            }
        }
        Ok(out)
    }

    struct Capped<'a> {
        out: &'a mut Vec<u8>,
        limit: usize,
    }

    impl std::io::Write for Capped<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.out.len() + buf.len() > self.limit {
                return Err(std::io::Error::other("decompressed size limit exceeded"));
            }
            self.out.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn varint(bytes: &mut &[u8]) -> Result<u64, XzError> {
        let mut value = 0u64;
        for i in 0..9 {
            let (&b, rest) = bytes.split_first().ok_or(XzError::TruncatedVarint)?;
            *bytes = rest;
            value |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(XzError::VarintTooLong)
    }

    fn test_msbyte(b: u8) -> bool {
        b == 0x00 || b == 0xFF
    }

    /// Undo the x86 BCJ filter over a whole buffer that starts at stream position 0.
    pub fn bcj_x86(buf: &mut [u8]) {
        const ALLOWED: [bool; 8] = [true, true, true, false, true, false, false, false];
        const BIT_NUM: [u32; 8] = [0, 1, 2, 2, 3, 3, 3, 3];
        if buf.len() <= 4 {
            return;
        }
        let size = buf.len() - 4;
        let mut prev_pos: usize = usize::MAX;
        let mut prev_mask: u32 = 0;
        let mut i = 0usize;
        while i < size {
            if buf[i] & 0xFE != 0xE8 {
                i += 1;
                continue;
            }
            let distance = i.wrapping_sub(prev_pos);
            if distance > 3 {
                prev_mask = 0;
            } else {
                prev_mask = (prev_mask << (distance - 1)) & 7;
                if prev_mask != 0 {
                    let b = buf[i + 4 - BIT_NUM[prev_mask as usize] as usize];
                    if !ALLOWED[prev_mask as usize] || test_msbyte(b) {
                        prev_pos = i;
                        prev_mask = (prev_mask << 1) | 1;
                        i += 1;
                        continue;
                    }
                }
            }
            prev_pos = i;
            if test_msbyte(buf[i + 4]) {
                let mut src = u32::from_le_bytes([buf[i + 1], buf[i + 2], buf[i + 3], buf[i + 4]]);
                let mut dest;
                loop {
                    dest = src.wrapping_sub((i as u32).wrapping_add(5));
                    if prev_mask == 0 {
                        break;
                    }
                    let j = BIT_NUM[prev_mask as usize] * 8;
                    let b = (dest >> (24 - j)) as u8;
                    if !test_msbyte(b) {
                        break;
                    }
                    src = dest ^ ((1u32 << (32 - j)) - 1);
                }
                dest &= 0x01FF_FFFF;
                dest |= 0u32.wrapping_sub(dest & 0x0100_0000);
                buf[i + 1..i + 5].copy_from_slice(&dest.to_le_bytes());
                i += 5;
            } else {
                prev_mask = (prev_mask << 1) | 1;
                i += 1;
            }
        }
    }

    /// Undo the ARM BCJ filter (BL instructions) over a whole buffer at position 0.
    pub fn bcj_arm(buf: &mut [u8]) {
        let mut i = 0usize;
        while i + 4 <= buf.len() {
            if buf[i + 3] == 0xEB {
                let mut addr = u32::from(buf[i])
                    | (u32::from(buf[i + 1]) << 8)
                    | (u32::from(buf[i + 2]) << 16);
                addr <<= 2;
                addr = addr.wrapping_sub((i as u32).wrapping_add(8));
                addr >>= 2;
                buf[i] = addr as u8;
                buf[i + 1] = (addr >> 8) as u8;
                buf[i + 2] = (addr >> 16) as u8;
            }
            i += 4;
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn bcj_leaves_plain_data_alone_and_decodes_a_call() {
            let mut plain = b"no calls in here at all".to_vec();
            let copy = plain.clone();
            bcj_x86(&mut plain);
            assert_eq!(plain, copy);
            // A call at 0 encoded to absolute target 0x105 decodes to relative 0x100.
            let mut call = vec![0xE8, 0x05, 0x01, 0x00, 0x00, 0x90, 0x90, 0x90, 0x90];
            bcj_x86(&mut call);
            assert_eq!(&call[..5], &[0xE8, 0x00, 0x01, 0x00, 0x00]);
            let mut bl = vec![0x02, 0x00, 0x00, 0xEB];
            bcj_arm(&mut bl);
            assert_eq!(bl, vec![0x00, 0x00, 0x00, 0xEB]);
        }

        #[test]
        fn truncated_streams_are_errors() {
            assert!(decompress(&[0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00], 1 << 20).is_err());
            let mut s = vec![0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00, 0, 1, 0, 0, 0, 0];
            s.extend_from_slice(&[0x02, 0x00, 0x21, 0x01]);
            assert!(decompress(&s, 1 << 20).is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_without_certificates_or_streams_says_so() {
        assert_eq!(
            extract(b"MZ just some bytes").unwrap_err(),
            ImageError::NoCompressedKernel
        );
    }
}

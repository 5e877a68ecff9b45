//! Decompression of `.ko.xz`, `.ko.zst` and `.ko.gz` modules into memory, with a hard cap on
//! the output size enforced while streaming: a lying or hostile stream ends in an error, never
//! in an out-of-memory abort.
//!
//! This module owns only "which format is this" (by magic bytes, never by file name) and
//! "inflate it, at most N bytes". It knows nothing about ELF or kernel modules, and it does
//! no file I/O: callers hand it bytes.

use std::fmt;
use std::io::{self, Read, Write};

use serde::Serialize;

/// The decompressed size above which a module is rejected: the largest real modules are a
/// few tens of MiB with debug info, so 256 MiB is generous and still bounded.
pub const DEFAULT_LIMIT: usize = 256 * 1024 * 1024;

const XZ_MAGIC: &[u8] = &[0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xB5, 0x2F, 0xFD];
const GZIP_MAGIC: &[u8] = &[0x1F, 0x8B];

/// A compression format a module file may be stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Xz,
    Zstd,
    Gzip,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
        })
    }
}

impl Compression {
    /// The format whose magic bytes start `data`, if any.
    pub fn detect(data: &[u8]) -> Option<Compression> {
        if data.starts_with(XZ_MAGIC) {
            Some(Compression::Xz)
        } else if data.starts_with(ZSTD_MAGIC) {
            Some(Compression::Zstd)
        } else if data.starts_with(GZIP_MAGIC) {
            Some(Compression::Gzip)
        } else {
            None
        }
    }
}

/// Why decompression failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    /// The stream is not valid for its format (corrupt, truncated, bad checksum).
    #[error("corrupt {format} stream: {detail}")]
    Corrupt { format: Compression, detail: String },
    /// The stream inflates to more than the limit.
    #[error("{format} stream decompresses to more than {limit} bytes")]
    TooLarge { format: Compression, limit: usize },
}

/// Inflate `data`, stored as `format`, to at most `limit` bytes.
pub fn decompress(
    data: &[u8],
    format: Compression,
    limit: usize,
) -> Result<Vec<u8>, DecompressError> {
    let (out, result) = inflate(data, format, limit, true);
    // The cap is checked first: a decoder that stops because the writer refused more data
    // reports that as its own I/O error, which would otherwise read as "corrupt".
    if out.exceeded {
        return Err(DecompressError::TooLarge { format, limit });
    }
    result.map_err(|detail| DecompressError::Corrupt { format, detail })?;
    Ok(out.buf)
}

/// Inflate the stream at the start of `data`, keeping what it produced when data that is
/// not part of the stream follows it (a kernel image's payload is followed by the rest of
/// the image). Fails only when nothing came out, or the output passed `limit`.
pub fn decompress_prefix(
    data: &[u8],
    format: Compression,
    limit: usize,
) -> Result<Vec<u8>, DecompressError> {
    let (out, result) = inflate(data, format, limit, false);
    if out.exceeded {
        return Err(DecompressError::TooLarge { format, limit });
    }
    match result {
        Err(detail) if out.buf.is_empty() => Err(DecompressError::Corrupt { format, detail }),
        _ => Ok(out.buf),
    }
}

/// Run the decoder of `format` over `data` into a writer capped at `limit`. `whole`: the
/// data is one file (gzip members and zstd frames may follow each other); otherwise only
/// the first stream counts.
fn inflate(
    data: &[u8],
    format: Compression,
    limit: usize,
    whole: bool,
) -> (CappedWriter, Result<(), String>) {
    let mut out = CappedWriter {
        buf: Vec::new(),
        limit,
        exceeded: false,
    };
    let result = match format {
        Compression::Xz => {
            let mut input = data;
            lzma_rs::xz_decompress(&mut input, &mut out).map_err(|e| e.to_string())
        }
        Compression::Zstd if whole => zstd_frames(data, &mut out),
        Compression::Zstd => {
            let mut input = data;
            ruzstd::decoding::StreamingDecoder::new(&mut input)
                .map_err(|e| e.to_string())
                .and_then(|mut d| copy(&mut d, &mut out).map_err(|e| e.to_string()))
        }
        Compression::Gzip if whole => {
            let mut decoder = flate2::read::MultiGzDecoder::new(data);
            copy(&mut decoder, &mut out).map_err(|e| e.to_string())
        }
        Compression::Gzip => {
            let mut decoder = flate2::read::GzDecoder::new(data);
            copy(&mut decoder, &mut out).map_err(|e| e.to_string())
        }
    };
    (out, result.map(|_| ()))
}

/// Decode every frame of a zstd stream (the `zstd` tool writes one; concatenations are legal).
fn zstd_frames(data: &[u8], out: &mut CappedWriter) -> Result<(), String> {
    let mut input = data;
    if input.is_empty() {
        return Err("empty stream".to_string());
    }
    while !input.is_empty() {
        let mut decoder =
            ruzstd::decoding::StreamingDecoder::new(&mut input).map_err(|e| e.to_string())?;
        copy(&mut decoder, out).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `io::copy` with a fixed buffer, so the only growing allocation is the capped output.
fn copy(reader: &mut dyn Read, out: &mut CappedWriter) -> io::Result<()> {
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(chunk.get(..n).unwrap_or_default())?;
    }
}

/// A `Vec` writer that refuses to grow past `limit` and remembers that it refused.
struct CappedWriter {
    buf: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.limit.saturating_sub(self.buf.len());
        if data.len() > room {
            self.exceeded = true;
            return Err(io::Error::other("decompressed size limit exceeded"));
        }
        self.buf
            .try_reserve(data.len())
            .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        lzma_rs::xz_compress(&mut &data[..], &mut out).unwrap();
        out
    }

    #[test]
    fn detects_by_magic_only() {
        assert_eq!(Compression::detect(&xz(b"x")), Some(Compression::Xz));
        assert_eq!(Compression::detect(&gzip(b"x")), Some(Compression::Gzip));
        assert_eq!(
            Compression::detect(&[0x28, 0xB5, 0x2F, 0xFD, 0]),
            Some(Compression::Zstd)
        );
        assert_eq!(Compression::detect(b"\x7fELF"), None);
        assert_eq!(Compression::detect(b""), None);
    }

    #[test]
    fn round_trips_gzip_and_xz() {
        let data = b"hello module".repeat(100);
        assert_eq!(
            decompress(&gzip(&data), Compression::Gzip, DEFAULT_LIMIT).unwrap(),
            data
        );
        assert_eq!(
            decompress(&xz(&data), Compression::Xz, DEFAULT_LIMIT).unwrap(),
            data
        );
    }

    #[test]
    fn cap_is_enforced_while_streaming() {
        let data = vec![0u8; 1 << 20];
        for (format, packed) in [
            (Compression::Gzip, gzip(&data)),
            (Compression::Xz, xz(&data)),
        ] {
            let err = decompress(&packed, format, 1000).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("{format} stream decompresses to more than 1000 bytes")
            );
            // Exactly at the limit is fine.
            assert_eq!(decompress(&packed, format, 1 << 20).unwrap().len(), 1 << 20);
        }
    }

    #[test]
    fn garbage_after_a_valid_header_is_corrupt() {
        let mut bad = XZ_MAGIC.to_vec();
        bad.extend_from_slice(&[0xAA; 64]);
        let err = decompress(&bad, Compression::Xz, DEFAULT_LIMIT).unwrap_err();
        assert!(matches!(
            err,
            DecompressError::Corrupt {
                format: Compression::Xz,
                ..
            }
        ));
        let mut bad = ZSTD_MAGIC.to_vec();
        bad.extend_from_slice(&[0xAA; 64]);
        let err = decompress(&bad, Compression::Zstd, DEFAULT_LIMIT).unwrap_err();
        assert!(matches!(
            err,
            DecompressError::Corrupt {
                format: Compression::Zstd,
                ..
            }
        ));
    }
}

//! Decompression of `.ko.xz`, `.ko.zst` and `.ko.gz` modules into memory, with a hard cap on
//! the output size enforced while streaming: a lying or hostile stream ends in an error, never
//! in an out-of-memory abort.
//!
//! This module owns only "which format is this" (by magic bytes, never by file name) and
//! "inflate it, at most N bytes". It knows nothing about ELF or kernel modules, and it does
//! no file I/O: callers hand it bytes.
//!
//! Memory is bounded twice: per stream by the caller's limit, and for the whole process by a
//! [`Budget`] of bytes in flight that every decompression takes its share from before it
//! allocates, so that many threads inflating hostile streams at once hold at most
//! [`DEFAULT_BUDGET`] between them, whatever the number of cores. A share is sized from what
//! the stream's own framing says before anything is decoded: an xz stream's LZMA2 chunk
//! headers give its exact size (the decoder holds each chunk to its header), so one that
//! inflates past the limit is refused without decoding it; a zstd stream's block headers
//! bound its size; a gzip stream's trailer states it. A stream that outgrows its share takes
//! more if the budget has it, else gives everything back and starts again with a share of
//! the whole limit, waiting for it while holding nothing (so that no two can wait for each
//! other).

use std::fmt;
use std::io::{self, Read, Write};

/// The decompressed size above which a module is rejected: the largest real modules are a
/// few tens of MiB with debug info, so 256 MiB is generous and still bounded.
pub const DEFAULT_LIMIT: usize = 256 * 1024 * 1024;

/// The bytes of decompressed data (and decoder state) all threads together may hold: room
/// for one stream at the limit with the dictionary its decoder fills, and some to spare.
pub const DEFAULT_BUDGET: usize = 2 * DEFAULT_LIMIT + (16 << 20);

/// The process's budget, shared by every decompression that does not bring its own.
static GLOBAL_BUDGET: Budget = Budget::new(DEFAULT_BUDGET);

const XZ_MAGIC: &[u8] = &[0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xB5, 0x2F, 0xFD];
const GZIP_MAGIC: &[u8] = &[0x1F, 0x8B];

pub use crate::modfile::Compression;

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
    Corrupt {
        format: Compression,
        detail: Corruption,
    },
    /// The stream inflates to more than the limit.
    #[error("{format} stream decompresses to more than {limit} bytes")]
    TooLarge { format: Compression, limit: usize },
}

/// What is wrong with a stream kmx could not inflate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// The framing ends before it says it does.
    #[error("truncated stream")]
    Truncated,
    /// An xz stream's LZMA2 chunk starts with a control byte the format does not have.
    #[error("LZMA2 invalid status {0}")]
    Lzma2Status(u8),
    /// A zstd file of no bytes.
    #[error("empty stream")]
    Empty,
    /// The output's expected size could not be allocated.
    #[error("out of memory")]
    OutOfMemory,
    /// The decoder's own words (liblzma, ruzstd, flate2).
    #[error("{0}")]
    Decoder(String),
}

impl Corruption {
    fn decoder(e: impl fmt::Display) -> Corruption {
        Corruption::Decoder(e.to_string())
    }
}

/// Bytes in flight shared by the decompressions that run at once (see the module docs).
#[derive(Debug)]
pub struct Budget {
    total: usize,
    state: std::sync::Mutex<Held>,
    freed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct Held {
    now: usize,
    peak: usize,
    /// Streams waiting in [`Budget::take`] (what a test waits for instead of sleeping).
    waiting: usize,
}

impl Budget {
    pub const fn new(total: usize) -> Budget {
        Budget {
            total,
            state: std::sync::Mutex::new(Held {
                now: 0,
                peak: 0,
                waiting: 0,
            }),
            freed: std::sync::Condvar::new(),
        }
    }

    /// The most bytes ever held at once.
    pub fn peak(&self) -> usize {
        self.state.lock().map(|h| h.peak).unwrap_or(0)
    }

    /// Take `n` bytes (at most the whole budget, so that one stream can always run),
    /// waiting until they are free. Called only while holding nothing of the budget.
    fn take(&self, n: usize) -> Share<'_> {
        let n = n.min(self.total);
        let Ok(mut held) = self.state.lock() else {
            return Share { budget: self, n: 0 };
        };
        while held.now + n > self.total {
            held.waiting += 1;
            held = match self.freed.wait(held) {
                Ok(h) => h,
                Err(_) => return Share { budget: self, n: 0 },
            };
            held.waiting -= 1;
        }
        held.now += n;
        held.peak = held.peak.max(held.now);
        Share { budget: self, n }
    }

    /// Add `n` bytes to `share` if they are free now; never waits.
    fn try_grow(&self, share: &mut Share, n: usize) -> bool {
        let Ok(mut held) = self.state.lock() else {
            return false;
        };
        if held.now + n > self.total {
            return false;
        }
        held.now += n;
        held.peak = held.peak.max(held.now);
        share.n += n;
        true
    }

    fn give(&self, n: usize) {
        if n == 0 {
            return;
        }
        if let Ok(mut held) = self.state.lock() {
            held.now = held.now.saturating_sub(n);
        }
        self.freed.notify_all();
    }
}

/// Bytes of a [`Budget`] one decompression holds; given back when dropped.
struct Share<'a> {
    budget: &'a Budget,
    n: usize,
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        self.budget.give(self.n);
    }
}

/// Decompressed bytes that still count against the budget they were inflated within, until
/// dropped: a caller that goes on to read them keeps its share meanwhile.
pub struct Inflated<'a> {
    data: Buf,
    _share: Share<'a>,
}

impl std::ops::Deref for Inflated<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.data.as_slice()
    }
}

/// Inflate `data`, stored as `format`, to at most `limit` bytes.
pub fn decompress(
    data: &[u8],
    format: Compression,
    limit: usize,
) -> Result<Vec<u8>, DecompressError> {
    decompress_within(data, format, limit, &GLOBAL_BUDGET).map(|i| i.to_vec())
}

/// [`decompress`], the result holding its share of the process's budget until dropped.
pub fn decompress_held(
    data: &[u8],
    format: Compression,
    limit: usize,
) -> Result<Inflated<'static>, DecompressError> {
    decompress_within(data, format, limit, &GLOBAL_BUDGET)
}

/// [`decompress_held`], taking memory from `budget` instead of the process's.
pub fn decompress_within<'a>(
    data: &[u8],
    format: Compression,
    limit: usize,
    budget: &'a Budget,
) -> Result<Inflated<'a>, DecompressError> {
    let (out, result) = inflate(data, format, limit, true, budget)?;
    // The cap is checked first: a decoder that stops because the writer refused more data
    // reports that as its own I/O error, which would otherwise read as "corrupt".
    if out.exceeded {
        return Err(DecompressError::TooLarge { format, limit });
    }
    result.map_err(|detail| DecompressError::Corrupt { format, detail })?;
    let CappedWriter { buf, mut share, .. } = out;
    // What the decoder held is free again; the output keeps what it uses.
    let keep = buf.held();
    let spare = share.n.saturating_sub(keep);
    share.n -= spare;
    budget.give(spare);
    Ok(Inflated {
        data: buf,
        _share: share,
    })
}

/// Inflate the stream at the start of `data`, keeping what it produced when data that is
/// not part of the stream follows it (a kernel image's payload is followed by the rest of
/// the image). Fails only when nothing came out, or the output passed `limit`.
pub fn decompress_prefix(
    data: &[u8],
    format: Compression,
    limit: usize,
) -> Result<Vec<u8>, DecompressError> {
    let (out, result) = inflate(data, format, limit, false, &GLOBAL_BUDGET)?;
    if out.exceeded {
        return Err(DecompressError::TooLarge { format, limit });
    }
    match result {
        Err(detail) if out.buf.len() == 0 => Err(DecompressError::Corrupt { format, detail }),
        _ => Ok(out.buf.as_slice().to_vec()),
    }
}

/// What a stream's framing says about its size before it is decoded.
struct Estimate {
    /// The bytes it is expected to inflate to (exact for xz, an upper bound for zstd, the
    /// stated size for gzip), at most the limit.
    size: usize,
    /// Memory the decoder holds besides the output: an xz decoder's dictionary, which it
    /// fills up to the stream's size at most.
    decoder: usize,
}

/// Run the decoder of `format` over `data` into a writer capped at `limit`, within a share
/// of `budget`. `whole`: the data is one file (gzip members and zstd frames may follow each
/// other); otherwise only the first stream counts.
fn inflate<'a>(
    data: &[u8],
    format: Compression,
    limit: usize,
    whole: bool,
    budget: &'a Budget,
) -> Result<(CappedWriter<'a>, Result<(), Corruption>), DecompressError> {
    let estimate = match format {
        Compression::Xz => {
            let size =
                xz_size(data).map_err(|detail| DecompressError::Corrupt { format, detail })?;
            if size > limit as u64 {
                return Err(DecompressError::TooLarge { format, limit });
            }
            let size = size as usize;
            Estimate {
                size,
                decoder: size,
            }
        }
        Compression::Zstd => Estimate {
            size: zstd_bound(data, whole).map_or(limit, |b| b.min(limit as u64) as usize),
            decoder: 0,
        },
        Compression::Gzip => Estimate {
            size: if whole { gzip_stated(data) } else { None }.map_or(limit, |n| n.min(limit)),
            decoder: 0,
        },
    };
    let share = budget.take(estimate.size + estimate.decoder);
    let (out, result) = inflate_once(data, format, limit, whole, share, estimate);
    if !out.starved {
        return Ok((out, result));
    }
    // The stream outgrew its estimate and the budget had no more to spare: give everything
    // back, then wait for a share of the whole limit and start again.
    drop(out);
    let estimate = Estimate {
        size: limit,
        decoder: if format == Compression::Xz { limit } else { 0 },
    };
    let share = budget.take(estimate.size + estimate.decoder);
    Ok(inflate_once(data, format, limit, whole, share, estimate))
}

fn inflate_once<'a>(
    data: &[u8],
    format: Compression,
    limit: usize,
    whole: bool,
    share: Share<'a>,
    estimate: Estimate,
) -> (CappedWriter<'a>, Result<(), Corruption>) {
    // The expected size up front: no doubling (and copying) on the way there. A large one
    // is mapped for the whole limit (pages are only used as they are written, and given
    // back to the system as soon as it is dropped: a run of bombs does not leave the
    // allocator holding hundreds of MB).
    let buf = if estimate.size >= MAP_FROM {
        memmap2::MmapMut::map_anon(limit)
            .ok()
            .map(|map| Buf::Map { map, len: 0 })
    } else {
        None
    };
    let mut out = CappedWriter {
        buf: buf.unwrap_or(Buf::Heap(Vec::new())),
        limit,
        exceeded: false,
        owned: estimate.size,
        share,
        starved: false,
    };
    if let Buf::Heap(v) = &mut out.buf
        && v.try_reserve_exact(estimate.size).is_err()
    {
        return (out, Err(Corruption::OutOfMemory));
    }
    let result = match format {
        Compression::Xz => xz_stream(data, whole, &mut out),
        Compression::Zstd if whole => zstd_frames(data, &mut out),
        Compression::Zstd => {
            let mut input = data;
            ruzstd::decoding::StreamingDecoder::new(&mut input)
                .map_err(Corruption::decoder)
                .and_then(|mut d| copy(&mut d, &mut out).map_err(Corruption::decoder))
        }
        Compression::Gzip if whole => {
            let mut decoder = flate2::read::MultiGzDecoder::new(data);
            copy(&mut decoder, &mut out).map_err(Corruption::decoder)
        }
        Compression::Gzip => {
            let mut decoder = flate2::read::GzDecoder::new(data);
            copy(&mut decoder, &mut out).map_err(Corruption::decoder)
        }
    };
    (out, result.map(|_| ()))
}

/// The most memory liblzma may take to decode one xz stream (its dictionary above all: 64 MiB
/// for `xz -9`, 1 MiB for the kernel's own `.ko.xz`); a stream that asks for more is refused
/// before its dictionary is allocated. Only as much of the dictionary as the stream fills is
/// ever touched, so what a stream holds is counted as its output's size again
/// ([`Estimate::decoder`]).
const XZ_MEMLIMIT: u64 = 128 << 20;

/// Decode the xz stream in `data` with liblzma (as kmod does), into `out`. `whole`: streams
/// may follow each other (with padding), as kmod reads a module; otherwise the first one
/// counts.
fn xz_stream(data: &[u8], whole: bool, out: &mut CappedWriter) -> Result<(), Corruption> {
    let flags = if whole {
        liblzma::stream::CONCATENATED
    } else {
        0
    };
    let stream = liblzma::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, flags)
        .map_err(Corruption::decoder)?;
    let mut decoder = liblzma::write::XzDecoder::new_stream(out, stream);
    decoder.write_all(data).map_err(Corruption::decoder)?;
    decoder.finish().map(|_| ()).map_err(Corruption::decoder)
}

/// The exact size an xz stream inflates to, from its LZMA2 chunk headers, which the decoder
/// holds each chunk to: read without decoding anything. An error for framing the decoder
/// would refuse too (truncation, a bad chunk control byte).
fn xz_size(data: &[u8]) -> Result<u64, Corruption> {
    let truncated = || Corruption::Truncated;
    let flags = data.get(7).ok_or_else(truncated)?;
    let check_len = match flags & 0x0F {
        0 => 0,
        1..=3 => 4,
        4..=6 => 8,
        7..=9 => 16,
        10..=12 => 32,
        _ => 64,
    };
    let mut at = 12usize;
    let mut total = 0u64;
    loop {
        let size_byte = *data.get(at).ok_or_else(truncated)?;
        if size_byte == 0 {
            // The index: every block has been counted.
            return Ok(total);
        }
        let block_start = at;
        at += (usize::from(size_byte) + 1) * 4;
        // LZMA2 chunks until the end marker.
        loop {
            let control = *data.get(at).ok_or_else(truncated)?;
            at += 1;
            let be16 = |i: usize| -> Result<u64, Corruption> {
                let b = data.get(i..i + 2).ok_or_else(truncated)?;
                Ok(u64::from(u16::from_be_bytes([b[0], b[1]])))
            };
            match control {
                0x00 => break,
                0x01 | 0x02 => {
                    let size = be16(at)? + 1;
                    total += size;
                    at += 2 + size as usize;
                }
                0x80..=0xFF => {
                    total += ((u64::from(control & 0x1F) << 16) | be16(at)?) + 1;
                    let packed = be16(at + 2)? + 1;
                    let props = usize::from(control >= 0xC0);
                    at += 4 + props + packed as usize;
                }
                other => return Err(Corruption::Lzma2Status(other)),
            }
        }
        // Block padding to a multiple of four, then the check.
        at += (4 - (at - block_start) % 4) % 4;
        at += check_len;
    }
}

/// An upper bound of what a zstd stream inflates to, from its block headers (raw and RLE
/// blocks say their size; a compressed block regenerates at most 128 KiB). `None` when the
/// framing cannot be read (the decoder then says why, within the limit).
fn zstd_bound(data: &[u8], whole: bool) -> Option<u64> {
    const BLOCK_MAX: u64 = 128 << 10;
    let mut at = 0usize;
    let mut total = 0u64;
    while at < data.len() {
        let magic = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?);
        if magic & 0xFFFF_FFF0 == 0x184D_2A50 {
            // A skippable frame.
            let len = u32::from_le_bytes(data.get(at + 4..at + 8)?.try_into().ok()?);
            at += 8 + len as usize;
            continue;
        }
        if magic != 0xFD2F_B528 {
            return None;
        }
        let fhd = *data.get(at + 4)?;
        let single_segment = fhd & 0x20 != 0;
        let checksum = fhd & 0x04 != 0;
        let dict_len = [0, 1, 2, 4][usize::from(fhd & 0x03)];
        let fcs_len = match fhd >> 6 {
            0 => usize::from(single_segment),
            1 => 2,
            2 => 4,
            _ => 8,
        };
        at += 5 + usize::from(!single_segment) + dict_len + fcs_len;
        loop {
            let h = data.get(at..at + 3)?;
            let header = u32::from(h[0]) | (u32::from(h[1]) << 8) | (u32::from(h[2]) << 16);
            let last = header & 1 != 0;
            let size = u64::from(header >> 3);
            at += 3;
            match (header >> 1) & 3 {
                0 => {
                    total += size;
                    at += size as usize;
                }
                1 => {
                    total += size;
                    at += 1;
                }
                2 => {
                    total += BLOCK_MAX;
                    at += size as usize;
                }
                _ => return None,
            }
            if last {
                break;
            }
        }
        if checksum {
            at += 4;
        }
        if !whole {
            break;
        }
    }
    Some(total)
}

/// The size a gzip stream's trailer states (ISIZE, modulo 2^32): exact for the one member
/// a compressed module has. Only an estimate: the output is capped anyway.
fn gzip_stated(data: &[u8]) -> Option<usize> {
    let tail = data.len().checked_sub(4).and_then(|at| data.get(at..))?;
    usize::try_from(u32::from_le_bytes(tail.try_into().ok()?)).ok()
}

/// Decode every frame of a zstd stream (the `zstd` tool writes one; concatenations are legal).
fn zstd_frames(data: &[u8], out: &mut CappedWriter) -> Result<(), Corruption> {
    let mut input = data;
    if input.is_empty() {
        return Err(Corruption::Empty);
    }
    while !input.is_empty() {
        let mut decoder =
            ruzstd::decoding::StreamingDecoder::new(&mut input).map_err(Corruption::decoder)?;
        copy(&mut decoder, out).map_err(Corruption::decoder)?;
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

/// Outputs expected to be at least this large are mapped, not allocated.
const MAP_FROM: usize = 8 << 20;

/// Decompressed bytes: on the heap, or in an anonymous map as large as the limit.
enum Buf {
    Heap(Vec<u8>),
    Map { map: memmap2::MmapMut, len: usize },
}

impl Buf {
    fn len(&self) -> usize {
        match self {
            Buf::Heap(v) => v.len(),
            Buf::Map { len, .. } => *len,
        }
    }

    /// The bytes this buffer holds in memory.
    fn held(&self) -> usize {
        match self {
            Buf::Heap(v) => v.capacity(),
            Buf::Map { len, .. } => *len,
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Buf::Heap(v) => v,
            Buf::Map { map, len } => map.get(..*len).unwrap_or_default(),
        }
    }
}

/// A writer that refuses to grow past `limit` and remembers that it refused; it uses at
/// most `owned` bytes, its part of its share of the budget, taking more when the budget has
/// room, else refusing (`starved`), so that the stream is tried again with a share of the
/// whole limit.
struct CappedWriter<'a> {
    buf: Buf,
    limit: usize,
    exceeded: bool,
    owned: usize,
    share: Share<'a>,
    starved: bool,
}

impl Write for CappedWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let len = self.buf.len();
        let room = self.limit.saturating_sub(len);
        if data.len() > room {
            self.exceeded = true;
            return Err(io::Error::other("decompressed size limit exceeded"));
        }
        let needed = len + data.len();
        if needed > self.owned {
            // Double, as a Vec would, but never past the limit, and only with the budget's
            // consent.
            let target = needed.max(self.owned * 2).min(self.limit);
            let budget = self.share.budget;
            if !budget.try_grow(&mut self.share, target - self.owned) {
                self.starved = true;
                return Err(io::Error::other("decompression memory budget exhausted"));
            }
            self.owned = target;
            if let Buf::Heap(v) = &mut self.buf {
                v.try_reserve_exact(target - len)
                    .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
            }
        }
        match &mut self.buf {
            Buf::Heap(v) => v.extend_from_slice(data),
            Buf::Map { map, len } => {
                map.get_mut(*len..needed)
                    .ok_or_else(|| io::Error::other("decompressed size limit exceeded"))?
                    .copy_from_slice(data);
                *len = needed;
            }
        }
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

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/modules/amd64")
            .join(name);
        std::fs::read(path).unwrap()
    }

    #[test]
    fn xz_and_zstd_sizes_are_read_from_the_framing() {
        let text = b"module text with some repetition ".repeat(5000);
        for data in [&b""[..], b"x", &text, &vec![0u8; 3 << 20]] {
            assert_eq!(xz_size(&xz(data)).unwrap(), data.len() as u64);
            let bound = zstd_bound(&zstd(data), true).unwrap();
            assert!(bound >= data.len() as u64, "{bound} < {}", data.len());
            assert_eq!(gzip_stated(&gzip(data)), Some(data.len()));
        }
        // What the xz tool and the kernel's build write (CRC32 check, 1 MiB dictionary).
        let plain = decompress(&fixture("hello.ko.xz"), Compression::Xz, DEFAULT_LIMIT).unwrap();
        assert_eq!(
            xz_size(&fixture("hello.ko.xz")).unwrap(),
            plain.len() as u64
        );
        let bound = zstd_bound(&fixture("hello.ko.zst"), true).unwrap();
        assert!(bound >= plain.len() as u64);
        // Truncated framing is corrupt, not a size.
        let packed = xz(&text);
        assert!(xz_size(&packed[..packed.len() / 2]).is_err());
    }

    /// Issue 11: a decompression bomb took 440-560 MB per file, more with more cores. An xz
    /// bomb is now refused from its chunk headers, before anything is decoded or allocated.
    #[test]
    fn an_xz_bomb_is_refused_before_decoding() {
        let budget = Budget::new(64 << 20);
        let bomb = xz(&vec![0u8; 8 << 20]);
        let err = decompress_within(&bomb, Compression::Xz, 1 << 20, &budget)
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "xz stream decompresses to more than 1048576 bytes"
        );
        assert_eq!(budget.peak(), 0);
    }

    /// Issue 11: the memory all threads hold for decompression is bounded by the budget,
    /// whatever the number of threads: bombs and good streams of every format at once.
    #[test]
    fn memory_in_flight_is_bounded_whatever_the_threads() {
        let limit = 1 << 20;
        let budget = Budget::new(3 << 20);
        let good = b"a good module ".repeat(50_000);
        let bombs = [
            (Compression::Gzip, gzip(&vec![0u8; 6 << 20])),
            (Compression::Zstd, zstd(&vec![0u8; 6 << 20])),
            (Compression::Xz, xz(&vec![0u8; 6 << 20])),
        ];
        let goods = [
            (Compression::Gzip, gzip(&good)),
            (Compression::Zstd, zstd(&good)),
            (Compression::Xz, xz(&good)),
        ];
        std::thread::scope(|scope| {
            for t in 0..12 {
                let (budget, bombs, goods, good) = (&budget, &bombs, &goods, &good);
                scope.spawn(move || {
                    for round in 0..3 {
                        let (format, bomb) = &bombs[(t + round) % 3];
                        let err = decompress_within(bomb, *format, limit, budget)
                            .err()
                            .unwrap();
                        assert!(matches!(err, DecompressError::TooLarge { .. }), "{err}");
                        let (format, packed) = &goods[(t + round) % 3];
                        let out = decompress_within(packed, *format, limit, budget).unwrap();
                        assert_eq!(&out[..], &good[..]);
                    }
                });
            }
        });
        assert!(budget.peak() > 0);
        assert!(budget.peak() <= 3 << 20, "peak {}", budget.peak());
    }

    /// A stream larger than its trailer says (several gzip members, or a lying trailer)
    /// while the budget is taken waits for a share of the whole limit, then succeeds.
    #[test]
    fn a_stream_that_outgrows_its_share_waits_for_the_whole_limit() {
        let limit = 1 << 20;
        let budget = Budget::new(limit + 4096);
        let data = vec![7u8; 300_000];
        let mut packed = gzip(&data);
        let n = packed.len();
        packed[n - 4..].copy_from_slice(&1000u32.to_le_bytes());
        let held = budget.take(limit);
        std::thread::scope(|scope| {
            let worker = scope.spawn(|| {
                decompress_within(&packed, Compression::Gzip, limit, &budget).map(|o| o.len())
            });
            // It waits for the budget: the test sees it waiting (no sleep, no race).
            let started = std::time::Instant::now();
            while budget.state.lock().unwrap().waiting == 0 {
                assert!(
                    !worker.is_finished(),
                    "it finished without waiting for the budget"
                );
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(300),
                    "it never waited for the budget"
                );
                std::thread::yield_now();
            }
            assert!(!worker.is_finished(), "it should wait for the budget");
            drop(held);
            // The lying trailer makes flate2 report a corrupt stream once it is all read:
            // what matters is that it was read whole, within the budget.
            let result = worker.join().unwrap();
            assert!(
                matches!(result, Err(DecompressError::Corrupt { .. })),
                "{result:?}"
            );
        });
        assert!(budget.peak() <= limit + 4096);
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

    /// Streams as kmod reads a module: one after another, with stream padding between them.
    /// A stream whose dictionary asks for more than [`XZ_MEMLIMIT`] (4 GiB here, in a block
    /// header otherwise valid) is refused by the decoder, and the same stream with its own
    /// dictionary decodes.
    #[test]
    fn xz_streams_follow_each_other_and_a_huge_dictionary_is_refused() {
        let (a, b) = (b"first ".repeat(300), b"second ".repeat(300));
        let mut two = xz(&a);
        two.extend_from_slice(&[0; 4]);
        two.extend_from_slice(&xz(&b));
        assert_eq!(
            decompress(&two, Compression::Xz, DEFAULT_LIMIT).unwrap(),
            [a.as_slice(), b.as_slice()].concat()
        );
        // The block header starts after the 12-byte stream header: its size, its flags, the
        // sizes its flags announce, then the LZMA2 filter (0x21, one byte of properties: the
        // dictionary size) and, last, the header's CRC32.
        let packed = xz(&a);
        let len = (usize::from(packed[12]) + 1) * 4;
        let flags = packed[13];
        let mut at = 14;
        for present in [flags & 0x40 != 0, flags & 0x80 != 0] {
            while present && packed[at] & 0x80 != 0 {
                at += 1;
            }
            at += usize::from(present);
        }
        assert_eq!(packed[at..at + 2], [0x21, 0x01], "not an LZMA2 filter");
        let with_dictionary = |code: u8| {
            let mut packed = packed.clone();
            packed[at + 2] = code;
            let mut crc = flate2::Crc::new();
            crc.update(&packed[12..12 + len - 4]);
            packed[12 + len - 4..12 + len].copy_from_slice(&crc.sum().to_le_bytes());
            packed
        };
        assert_eq!(
            decompress(
                &with_dictionary(packed[at + 2]),
                Compression::Xz,
                DEFAULT_LIMIT
            )
            .unwrap(),
            a
        );
        match decompress(&with_dictionary(40), Compression::Xz, DEFAULT_LIMIT) {
            Err(DecompressError::Corrupt {
                detail: Corruption::Decoder(words),
                ..
            }) => assert!(words.contains("emory"), "{words}"),
            other => panic!("{other:?}"),
        }
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

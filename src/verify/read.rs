//! Reading a module from a file or from bytes: open it without blocking, read a small file
//! whole, a larger one in the pieces the parser needs or mapped, decompress a compressed one
//! (what that found is kept by content, [`super::memo`]), then parse it
//! ([`super::module`]). The parser below knows the format and nothing of files or the memo.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use memmap2::MmapOptions;

use super::decompress::{self, Compression};
use super::module::{Module, ReadError, parse_uncompressed, read_sparse};

/// Files up to this size are read whole (one copy is cheaper than mmap + faults + munmap);
/// larger ones are mapped, so that only the pages of the sections needed are touched.
const READ_LIMIT: u64 = 64 << 10;

/// Larger files, up to this size, are read in pieces: the sections the reader needs, at
/// their offsets in a per-thread buffer (see [`read_sparse`]); beyond it, and to digest a
/// whole file, they are mapped.
const SPARSE_LIMIT: u64 = 4 << 20;

thread_local! {
    /// The buffer [`Module::read`] reads small files into, reused by each thread.
    static READ_BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    /// The buffer [`read_sparse`] reads sections into, reused by each thread.
    static SPARSE_BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Open a file to read it without ever blocking in open(2): a FIFO with no writer would
/// otherwise hang the whole run. The file is opened non-blocking; [`blocking_reads`] switches
/// a file that is not a regular one back to blocking reads, after which such a FIFO reads as
/// empty and a pipe with a writer (`<(xzcat m.ko.xz)`) reads as usual. A regular file's
/// reads never block on O_NONBLOCK, so it is left as opened (two fewer system calls a file).
fn open_never_blocking(path: &Path) -> Result<File, ReadError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| ReadError::Io { op: "open", source })
}

/// Clear O_NONBLOCK on `file` (see [`open_never_blocking`]).
fn blocking_reads(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own; only the O_NONBLOCK status flag changes.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

/// Append up to `len` bytes of `file` to `data`, reading straight into its spare capacity:
/// one `read` for a whole small file, where `read_to_end` starts at 8 KiB and doubles, then
/// reads once more to find the end. Fewer bytes when the file is shorter than `len`.
fn read_into(file: &File, data: &mut Vec<u8>, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    data.try_reserve(len)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
    let end = data.len() + len;
    while data.len() < end {
        let missing = end - data.len();
        let spare = data.spare_capacity_mut();
        let want = missing.min(spare.len());
        // SAFETY: `spare` is writable memory of at least `want` bytes owned by `data`; read(2)
        // writes at most `want` bytes there, and exactly the `n` it reports are then marked
        // initialised.
        let n = unsafe { libc::read(file.as_raw_fd(), spare.as_mut_ptr().cast(), want) };
        match n {
            0 => break,
            n if n > 0 => unsafe { data.set_len(data.len() + n as usize) },
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

impl Module {
    /// Read the module at `path`. Plain files are mapped, not read, so only the pages of the
    /// header, section table and needed sections are touched; compressed files are
    /// decompressed into memory, at most [`decompress::DEFAULT_LIMIT`] bytes.
    ///
    /// Safe to call from many threads at once: it shares no state.
    pub fn read(path: &Path) -> Result<Module, ReadError> {
        Module::read_with(path, true)
    }

    /// [`Module::read`], computing the digest of the signed bytes (a signature's
    /// [`SignedMessage::content_digest`], which touches every page of the file) only when
    /// `digest` is true.
    pub fn read_with(path: &Path, digest: bool) -> Result<Module, ReadError> {
        Module::read_stat(path, digest).map(|(module, _)| module)
    }

    /// [`Module::read_with`], also returning the metadata of the file as it was opened
    /// (what a cache keyed by file identity needs, without a second `stat` by path).
    pub fn read_stat(path: &Path, digest: bool) -> Result<(Module, std::fs::Metadata), ReadError> {
        let file = open_never_blocking(path)?;
        let meta = file
            .metadata()
            .map_err(|source| ReadError::Io { op: "stat", source })?;
        let module = Module::read_file(&file, &meta, digest)?;
        Ok((module, meta))
    }

    fn read_file(file: &File, meta: &std::fs::Metadata, digest: bool) -> Result<Module, ReadError> {
        if !meta.is_file() {
            // A pipe or device cannot be mapped: read it, capped like decompression.
            blocking_reads(file);
            let mut data = Vec::new();
            let limit = decompress::DEFAULT_LIMIT;
            file.take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
                .read_to_end(&mut data)
                .map_err(|source| ReadError::Io { op: "read", source })?;
            if data.len() > limit {
                return Err(ReadError::TooLarge { limit });
            }
            return Module::parse_with(&data, digest);
        }
        if meta.len() == 0 {
            return Err(ReadError::Empty);
        }
        if meta.len() <= READ_LIMIT {
            // Small files are read into a per-thread buffer: one read is cheaper than
            // mmap + page faults + munmap (whose TLB shootdowns stall every other thread).
            // The read is bounded by the size just stat'ed, with room reserved for it, so
            // that it takes one system call (no second read to find the end).
            return READ_BUFFER.with(|buffer| {
                let mut data = buffer.take();
                data.clear();
                let len = meta.len();
                let result = read_into(file, &mut data, len as usize)
                    .map_err(|source| ReadError::Io { op: "read", source })
                    .and_then(|_| Module::parse_with(&data, digest));
                if data.capacity() <= 2 * READ_LIMIT as usize {
                    buffer.replace(data);
                }
                result
            });
        }
        if !digest
            && meta.len() <= SPARSE_LIMIT
            && let Some(result) = SPARSE_BUFFER.with(|buffer| {
                let mut data = buffer.take();
                let result = read_sparse(file, meta.len() as usize, &mut data)
                    .map(|len| Module::parse_with(data.get(..len).unwrap_or_default(), false));
                buffer.replace(data);
                result
            })
        {
            return result;
        }
        // SAFETY: the map is read-only and private to this call. Like every mmap reader
        // (kmod included), a concurrent truncation of the file by another process can raise
        // SIGBUS; modules are not rewritten in place while kmx verifies them.
        // The length is the one just stat'ed (memmap2 would stat the file again).
        let len =
            usize::try_from(meta.len()).map_err(|_| ReadError::TooLarge { limit: usize::MAX })?;
        let map = unsafe { MmapOptions::new().len(len).map(file) }
            .map_err(|source| ReadError::Io { op: "map", source })?;
        Module::parse_with(&map, digest)
    }

    /// Parse a module held in memory (plain or compressed, signed or not).
    pub fn parse(bytes: &[u8]) -> Result<Module, ReadError> {
        Module::parse_with(bytes, true)
    }

    /// [`Module::parse`], with the signed bytes' digest only when `digest` is true.
    pub fn parse_with(bytes: &[u8], digest: bool) -> Result<Module, ReadError> {
        let read = |format| {
            let data = decompress::decompress_held(bytes, format, decompress::DEFAULT_LIMIT)?;
            let mut module = parse_uncompressed(&data, digest)?;
            module.compression = Some(format);
            Ok(module)
        };
        match Compression::detect(bytes) {
            // Kept by content ([`super::memo`]) when the digest is not wanted.
            Some(format) if !digest => super::memo::module(bytes, || read(format)),
            Some(format) => read(format),
            None => parse_uncompressed(bytes, digest),
        }
    }
}

//! The module reader: turns the bytes of a `.ko` (plain, `.xz`, `.zst` or `.gz`; signed or
//! not) into a [`Module`]: ELF identity, `.modinfo`, modversions, symbols, appended signature.
//!
//! It validates the file up front, the way kmod's libkmod-elf.c and the kernel's loader do
//! (bad magic, bad class or byte order, not ET_REL, section table or a section outside the
//! file, missing `.modinfo` are each their own [`ReadError`]), then reads only the header, the
//! section table, the section name table and the few sections it needs. Every offset is
//! bounds-checked with checked arithmetic: no input makes it panic, hang or allocate more
//! than the file (or the capped decompressed data) holds. It must not judge whether a module
//! loads on a kernel (that is the checks' job), print, or know about any other file.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use goblin::container::{Container, Ctx, Endian as GoblinEndian};
use goblin::elf::Elf;
use goblin::elf::header::{self, ET_REL};
use goblin::elf::section_header::{SHN_UNDEF, SHT_NOBITS, SHT_SYMTAB, SectionHeader};
use goblin::elf::sym::{STB_WEAK, STT_SECTION, Sym};
use memmap2::MmapOptions;
use serde::Serialize;

pub use super::decompress::Compression;
use super::decompress::{self, DecompressError};
use crate::config::arch::{ElfClass, ElfIdentity, Endian, machine};

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

/// The magic string that ends a module with an appended signature.
pub const SIGNATURE_MAGIC: &[u8] = b"~Module signature appended~\n";
/// `sizeof(struct module_signature)`.
const SIGNATURE_INFO_LEN: usize = 12;
/// Bytes per `__versions` record on every architecture: `{unsigned long crc; char name[..]}`.
const VERSION_RECORD_LEN: usize = 64;
/// Prefix of the symbols that EXPORT_SYMBOL leaves in a module's `.symtab`.
const KSYMTAB_PREFIX: &str = "__ksymtab_";

/// Why a module could not be read. The messages say what is wrong; the caller adds the file
/// (see [`ReadError::into_error`]).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot {op}: {source}")]
    Io {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("the input is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("not an ELF file: the file is empty")]
    Empty,
    #[error("not an ELF file: bad magic bytes")]
    NotElf,
    #[error("not an ELF file: {len} bytes is shorter than an ELF header ({need} bytes)")]
    TooShort { len: usize, need: usize },
    #[error("unsupported ELF class {0} (expected 1 for ELF32 or 2 for ELF64)")]
    BadClass(u8),
    #[error("unsupported ELF data encoding {0} (expected 1 for little-endian or 2 for big-endian)")]
    BadEncoding(u8),
    #[error("malformed ELF header: {0}")]
    BadHeader(String),
    #[error("not a kernel module: ELF type is {0}")]
    NotRelocatable(String),
    #[error("not a kernel module: the ELF has no section header table")]
    NoSections,
    #[error("section header entry size is {found} bytes, expected {expected}")]
    BadSectionEntrySize { found: u16, expected: u16 },
    #[error(
        "section header table ({count} entries at offset {offset}) extends past the end of the file ({len} bytes)"
    )]
    SectionTableOutOfBounds { offset: u64, count: u16, len: usize },
    #[error("section name table index {index} is out of range ({count} sections)")]
    BadNameTableIndex { index: u16, count: u16 },
    #[error("section name table (section {index}) is empty or not NUL-terminated")]
    BadNameTable { index: u16 },
    #[error("section {index} has name offset {offset} outside the section name table")]
    BadSectionName { index: usize, offset: usize },
    #[error(
        "section {index} ({name}) at offset {offset} with size {size} extends past the end of the file ({len} bytes)"
    )]
    SectionOutOfBounds {
        index: usize,
        name: String,
        offset: u64,
        size: u64,
        len: usize,
    },
    #[error("not a kernel module: no .modinfo section")]
    NoModinfo,
    #[error("__versions size {0} is not a multiple of 64")]
    VersionsSize(u64),
    #[error("__versions entry {0} has a name that is not NUL-terminated")]
    VersionsNameUnterminated(usize),
    #[error("{present} is present without {missing}")]
    ExtVersionsIncomplete {
        present: &'static str,
        missing: &'static str,
    },
    #[error("__version_ext_crcs size {0} is not a multiple of 4")]
    ExtCrcsSize(u64),
    #[error("__version_ext_names does not end with a NUL byte")]
    ExtNamesUnterminated,
    #[error("__version_ext_crcs has {crcs} entries but __version_ext_names has {names} names")]
    ExtCountMismatch { crcs: usize, names: usize },
    #[error("malformed .symtab: {0}")]
    Symtab(String),
    #[error(transparent)]
    Decompress(#[from] DecompressError),
    #[error("malformed module signature: {0}")]
    Signature(String),
}

impl ReadError {
    /// The crate's error for this failure on `path`.
    pub fn into_error(self, path: &Path) -> crate::Error {
        match self {
            ReadError::Io { .. } => crate::Error::env(self.to_string()).at(path),
            ReadError::Empty | ReadError::NotElf | ReadError::TooShort { .. } => {
                crate::Error::failed(self.to_string())
                    .at(path)
                    .hint("kernel modules are ELF relocatable files (.ko, .ko.xz, .ko.zst, .ko.gz)")
            }
            _ => crate::Error::failed(self.to_string()).at(path),
        }
    }
}

/// One `__versions` (or extended modversions) entry: a symbol the module imports and the CRC
/// of its prototype the module was built against.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct SymbolVersion {
    pub name: String,
    pub crc: u32,
}

/// Where [`Module::versions`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionsFormat {
    /// No modversions: the module was built without CONFIG_MODVERSIONS.
    None,
    /// The classic fixed-size `__versions` records.
    Classic,
    /// `__version_ext_crcs` + `__version_ext_names` (CONFIG_EXTENDED_MODVERSIONS, ~6.14+),
    /// which the loader prefers over `__versions` when present.
    Extended,
}

/// The appended signature, described the way `modinfo` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Signature {
    /// For PKCS#7: the common name of the signer certificate's issuer (`modinfo -F signer`).
    pub signer: String,
    /// The key identifier as colon-separated upper-case hex pairs, as `modinfo -F sig_key`
    /// prints it (for PKCS#7: the signer certificate's serial number).
    pub key_id: String,
    /// Digest algorithm, e.g. `sha256` (`modinfo -F sig_hashalgo`).
    pub hash_algo: String,
    /// `PKCS#7`, `X509` or `PGP` (`modinfo -F sig_id`).
    pub id_type: String,
    /// For PKCS#7: what checking the signature needs (not shown, not serialized).
    #[serde(skip)]
    pub message: Option<Box<SignedMessage>>,
}

/// The parts of a PKCS#7 module signature the kernel's `pkcs7_verify` uses, and the digest
/// of the signed bytes (the module before its signature), computed while the file was in
/// memory so that checking it needs no second read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SignedMessage {
    /// The signer's issuer Name, DER-encoded as in the certificate (tag included).
    pub issuer: Vec<u8>,
    /// The signer's serial number: the INTEGER's content bytes.
    pub serial: Vec<u8>,
    /// A CMS subjectKeyIdentifier signer id instead of issuer and serial.
    pub subject_key_id: Option<Vec<u8>>,
    /// Digest algorithm OID (content bytes).
    pub digest_oid: Vec<u8>,
    /// Signature algorithm OID (content bytes), e.g. rsaEncryption.
    pub signature_oid: Vec<u8>,
    /// The signed attributes re-tagged as a SET (what is signed when they are present).
    pub signed_attrs: Option<Vec<u8>>,
    /// The messageDigest attribute, when signed attributes are present.
    pub message_digest: Option<Vec<u8>>,
    pub signature: Vec<u8>,
    /// Certificates carried in the message (DER), usually none for module signatures.
    pub certificates: Vec<Vec<u8>>,
    /// The digest of the signed module bytes with `digest_oid`; `None` when kmx does not
    /// implement that digest.
    pub content_digest: Option<Vec<u8>>,
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

/// Read into `data`, at their own offsets, exactly the parts of a plain ELF module of `len`
/// bytes that the reader looks at without a digest: the ELF header, the section table, the
/// section names, every section the reader may look up by name or type (.modinfo, the
/// modversions sections, .ARM.attributes, each SHT_SYMTAB and the string table it links)
/// and the appended signature. Over a whole tree this reads about a tenth of the bytes of
/// the large modules, in a few `pread`s each, where mapping them cost a `munmap` (and its
/// TLB shootdown on every other core) per file.
///
/// Returns the length of the view (`len`); `None` when the file is not a plain ELF whose
/// layout reads as expected (compressed, malformed, a signature past the tail): the caller
/// then maps the whole file, whose reader gives the precise error. The bytes between the
/// parts read are stale (the buffer is reused, not cleared): the reader never looks there,
/// because the parts are chosen by the same names and types it uses.
fn read_sparse(file: &File, len: usize, data: &mut Vec<u8>) -> Option<usize> {
    use std::os::unix::fs::FileExt;
    const TAIL: usize = 4096;
    if data.len() < len {
        // Grown once to the largest file a thread reads; its contents are then reused.
        data.try_reserve(len - data.len()).ok()?;
        data.resize(len, 0);
    }
    let view = data.get_mut(..len)?;
    let read_at = |view: &mut [u8], start: usize, end: usize| -> Option<()> {
        file.read_exact_at(view.get_mut(start..end)?, start as u64)
            .ok()
    };
    let head = len.min(header::header64::SIZEOF_EHDR);
    read_at(view, 0, head)?;
    if Compression::detect(view.get(..head)?).is_some() {
        return None;
    }
    let (_, ctx) = identify(view.get(..head)?).ok()?;
    let header = Elf::parse_header(view.get(..head)?).ok()?;
    let entsize = SectionHeader::size(ctx);
    let shoff = usize::try_from(header.e_shoff).ok()?;
    let table_end = shoff.checked_add(usize::from(header.e_shnum).checked_mul(entsize)?)?;
    if header.e_shnum == 0 || usize::from(header.e_shentsize) != entsize || table_end > len {
        return None;
    }
    read_at(view, shoff, table_end)?;
    let headers = SectionHeader::parse(view, shoff, usize::from(header.e_shnum), ctx).ok()?;
    let range = |sh: &SectionHeader| -> Option<(usize, usize)> {
        if sh.sh_type == SHT_NOBITS {
            return Some((0, 0));
        }
        section_range(sh).filter(|&(_, end)| end <= len)
    };
    let names = headers.get(usize::from(header.e_shstrndx))?;
    let (names_start, names_end) = range(names)?;
    read_at(view, names_start, names_end)?;
    let mut wanted = Vec::new();
    for (index, sh) in headers.iter().enumerate() {
        let name = cstr_at(view.get(names_start..names_end)?, sh.sh_name).unwrap_or_default();
        let by_name = matches!(
            name,
            b".modinfo"
                | b"__versions"
                | b"__version_ext_crcs"
                | b"__version_ext_names"
                | b".ARM.attributes"
        );
        if index != 0 && (by_name || sh.sh_type == SHT_SYMTAB) {
            wanted.push(range(sh)?);
        }
        if index != 0 && sh.sh_type == SHT_SYMTAB {
            let link = headers.get(usize::try_from(sh.sh_link).ok()?)?;
            wanted.push(range(link)?);
        }
    }
    // The signature: its descriptor and magic end the file; what it covers must lie
    // within the tail read.
    let tail = len.saturating_sub(TAIL).max(table_end);
    wanted.push((tail, len));
    wanted.sort_unstable();
    let mut done = 0usize;
    for (start, end) in wanted {
        let start = start.max(done.min(end));
        if start < end {
            read_at(view, start, end)?;
        }
        done = done.max(end);
    }
    if let Some(before) = view.strip_suffix(SIGNATURE_MAGIC) {
        let info = before.len().checked_sub(SIGNATURE_INFO_LEN)?;
        let d = before.get(info..)?;
        let sig_len = usize::try_from(u32::from_be_bytes([d[8], d[9], d[10], d[11]])).ok()?;
        let start = info
            .checked_sub(sig_len)?
            .checked_sub(usize::from(d[3]))?
            .checked_sub(usize::from(d[4]))?;
        if start < tail {
            return None;
        }
    }
    Some(len)
}

/// Everything kmx needs to know about one kernel module file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Module {
    pub identity: ElfIdentity,
    pub e_flags: u32,
    /// `.modinfo` key/value pairs in file order; keys repeat (`alias`, `parm`).
    pub modinfo: Modinfo,
    pub versions: Vec<SymbolVersion>,
    pub versions_format: VersionsFormat,
    /// `.gnu.linkonce.this_module` is present (the kernel refuses a module without it).
    pub has_this_module: bool,
    /// Undefined (imported) symbols from `.symtab`, in table order; weak undefined symbols,
    /// which may stay unresolved, are not listed.
    pub undefined: Vec<String>,
    /// Symbols the module exports (EXPORT_SYMBOL*), found like modpost does: the
    /// `__ksymtab_<name>` symbols in `.symtab`.
    pub exported: Vec<String>,
    pub signature: Option<Signature>,
    /// For EM_ARM: Tag_CPU_arch from the "aeabi" subsection of `.ARM.attributes`
    /// (10 = ARMv7, 6/7 = ARMv6, 3/4/5 = ARMv4T/v5T/v5TE, ...). `None` elsewhere, or when the
    /// section is missing or unreadable (the kernel ignores it, so it is not an error).
    pub arm_cpu_arch: Option<u8>,
    /// How the file was stored, when it was compressed.
    pub compression: Option<Compression>,
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

    /// The first value of `key` in `.modinfo`.
    pub fn modinfo_get(&self, key: &str) -> Option<&str> {
        self.modinfo.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Every value of `key` in `.modinfo`, in file order.
    pub fn modinfo_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.modinfo
            .iter()
            .filter(move |(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// The `vermagic` string, exactly (trailing space included).
    pub fn vermagic(&self) -> Option<&str> {
        self.modinfo_get("vermagic")
    }

    /// The module's name (`name=` in `.modinfo`, set by modpost).
    pub fn name(&self) -> Option<&str> {
        self.modinfo_get("name")
    }

    /// The modules this one depends on (`depends=`, comma-separated; empty means none).
    pub fn depends(&self) -> Vec<String> {
        self.modinfo_get("depends")
            .map(|d| {
                d.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Split off the signature (if any), then parse the ELF before it.
fn parse_uncompressed(data: &[u8], digest: bool) -> Result<Module, ReadError> {
    let (elf, signature) = split_signature(data, digest)?;
    let mut module = parse_elf(elf)?;
    module.signature = signature;
    Ok(module)
}

// ---------------------------------------------------------------------------------------------
// ELF

/// The validated section table and the bytes it describes.
struct Sections<'a> {
    data: &'a [u8],
    ctx: Ctx,
    headers: Vec<SectionHeader>,
    names: Vec<&'a [u8]>,
}

impl<'a> Sections<'a> {
    /// The first section called `name`.
    fn find(&self, name: &str) -> Option<&SectionHeader> {
        self.names
            .iter()
            .position(|n| *n == name.as_bytes())
            .and_then(|i| self.headers.get(i))
    }

    /// The bytes of a section (empty for SHT_NOBITS). Bounds were checked up front; the
    /// lookup is still checked so that a logic error cannot panic.
    fn bytes(&self, sh: &SectionHeader) -> &'a [u8] {
        if sh.sh_type == SHT_NOBITS {
            return &[];
        }
        section_range(sh)
            .and_then(|(start, end)| self.data.get(start..end))
            .unwrap_or_default()
    }
}

fn section_range(sh: &SectionHeader) -> Option<(usize, usize)> {
    let start = usize::try_from(sh.sh_offset).ok()?;
    let size = usize::try_from(sh.sh_size).ok()?;
    Some((start, start.checked_add(size)?))
}

/// The NUL-terminated string at `offset` in `table`, without the NUL; `None` if `offset` is
/// outside the table or the string runs off its end.
fn cstr_at(table: &[u8], offset: usize) -> Option<&[u8]> {
    let tail = table.get(offset..)?;
    let end = tail.iter().position(|&b| b == 0)?;
    tail.get(..end)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn parse_elf(data: &[u8]) -> Result<Module, ReadError> {
    let (identity, ctx) = identify(data)?;
    let header = Elf::parse_header(data).map_err(|e| ReadError::BadHeader(e.to_string()))?;
    if header.e_type != ET_REL {
        let name = match header::et_to_str(header.e_type) {
            "UNKNOWN_ET" => format!("{:#x}", header.e_type),
            known => known.to_string(),
        };
        return Err(ReadError::NotRelocatable(name));
    }
    let identity = ElfIdentity {
        machine: header.e_machine,
        ..identity
    };
    let sections = read_sections(data, ctx, &header)?;

    let modinfo_sh = sections.find(".modinfo").ok_or(ReadError::NoModinfo)?;
    let modinfo = parse_modinfo(sections.bytes(modinfo_sh));
    let (versions, versions_format) = read_versions(&sections, identity.class)?;
    let (undefined, exported) = read_symbols(&sections)?;
    let arm_cpu_arch = if identity.machine == machine::EM_ARM {
        sections
            .find(".ARM.attributes")
            .and_then(|sh| arm_cpu_arch(sections.bytes(sh), identity.endian))
    } else {
        None
    };

    Ok(Module {
        identity,
        e_flags: header.e_flags,
        modinfo,
        versions,
        versions_format,
        has_this_module: sections.find(".gnu.linkonce.this_module").is_some(),
        undefined,
        exported,
        signature: None,
        arm_cpu_arch,
        compression: None,
    })
}

/// Check `e_ident` ourselves, so that each problem gets its own error, before goblin reads
/// the header.
fn identify(data: &[u8]) -> Result<(ElfIdentity, Ctx), ReadError> {
    if data.is_empty() {
        return Err(ReadError::Empty);
    }
    if !data.starts_with(header::ELFMAG) {
        return Err(ReadError::NotElf);
    }
    let (Some(&class), Some(&encoding)) = (data.get(header::EI_CLASS), data.get(header::EI_DATA))
    else {
        return Err(ReadError::TooShort {
            len: data.len(),
            need: header::SIZEOF_IDENT,
        });
    };
    let (class, container, need) = match class {
        header::ELFCLASS32 => (
            ElfClass::Elf32,
            Container::Little,
            header::header32::SIZEOF_EHDR,
        ),
        header::ELFCLASS64 => (
            ElfClass::Elf64,
            Container::Big,
            header::header64::SIZEOF_EHDR,
        ),
        other => return Err(ReadError::BadClass(other)),
    };
    let (endian, goblin_endian) = match encoding {
        header::ELFDATA2LSB => (Endian::Little, GoblinEndian::Little),
        header::ELFDATA2MSB => (Endian::Big, GoblinEndian::Big),
        other => return Err(ReadError::BadEncoding(other)),
    };
    if data.len() < need {
        return Err(ReadError::TooShort {
            len: data.len(),
            need,
        });
    }
    let identity = ElfIdentity {
        class,
        endian,
        machine: 0,
    };
    Ok((identity, Ctx::new(container, goblin_endian)))
}

fn read_sections<'a>(
    data: &'a [u8],
    ctx: Ctx,
    header: &header::Header,
) -> Result<Sections<'a>, ReadError> {
    let expected = u16::try_from(SectionHeader::size(ctx)).unwrap_or(u16::MAX);
    if header.e_shnum == 0 || header.e_shoff == 0 {
        // Extended numbering (e_shnum 0, count in section 0) never occurs in modules.
        return Err(ReadError::NoSections);
    }
    if header.e_shentsize != expected {
        return Err(ReadError::BadSectionEntrySize {
            found: header.e_shentsize,
            expected,
        });
    }
    let out_of_bounds = ReadError::SectionTableOutOfBounds {
        offset: header.e_shoff,
        count: header.e_shnum,
        len: data.len(),
    };
    let table_end = u64::from(header.e_shnum)
        .checked_mul(u64::from(expected))
        .and_then(|size| size.checked_add(header.e_shoff));
    match table_end {
        Some(end) if end <= data.len() as u64 => {}
        _ => return Err(out_of_bounds),
    }
    let shoff = usize::try_from(header.e_shoff).map_err(|_| ReadError::NoSections)?;
    let headers = SectionHeader::parse(data, shoff, usize::from(header.e_shnum), ctx)
        .map_err(|e| ReadError::BadHeader(e.to_string()))?;

    let in_bounds = |sh: &SectionHeader| {
        sh.sh_type == SHT_NOBITS || section_range(sh).is_some_and(|(_, end)| end <= data.len())
    };
    let out_of_file =
        |index: usize, name: &[u8], sh: &SectionHeader| ReadError::SectionOutOfBounds {
            index,
            name: lossy(name),
            offset: sh.sh_offset,
            size: sh.sh_size,
            len: data.len(),
        };

    // The section name table first: every other check names the section it is about.
    let strndx = header.e_shstrndx;
    let shstrtab_sh = headers
        .get(usize::from(strndx))
        .filter(|_| strndx != 0)
        .ok_or(ReadError::BadNameTableIndex {
            index: strndx,
            count: header.e_shnum,
        })?;
    if !in_bounds(shstrtab_sh) {
        return Err(out_of_file(
            usize::from(strndx),
            b"section names",
            shstrtab_sh,
        ));
    }
    let shstrtab = section_range(shstrtab_sh)
        .and_then(|(start, end)| data.get(start..end))
        .filter(|_| shstrtab_sh.sh_type != SHT_NOBITS)
        .unwrap_or_default();
    if shstrtab.last() != Some(&0) {
        return Err(ReadError::BadNameTable { index: strndx });
    }

    let mut names = Vec::with_capacity(headers.len());
    for (index, sh) in headers.iter().enumerate() {
        let name = if index == 0 {
            &[][..]
        } else {
            cstr_at(shstrtab, sh.sh_name).ok_or(ReadError::BadSectionName {
                index,
                offset: sh.sh_name,
            })?
        };
        if index != 0 && !in_bounds(sh) {
            return Err(out_of_file(index, name, sh));
        }
        names.push(name);
    }
    Ok(Sections {
        data,
        ctx,
        headers,
        names,
    })
}

/// `.modinfo`'s `key=value` strings in file order, held as one string and the offsets of
/// each entry: a module has tens of entries (hundreds with a device table's aliases), and
/// two allocations per entry were a good part of reading a whole module tree.
#[derive(Debug, Clone, Default)]
pub struct Modinfo {
    text: String,
    /// Per entry: where its key starts, where its key ends (its `=`, or the end of an entry
    /// without one), and where its value ends.
    entries: Vec<(u32, u32, u32)>,
}

impl Modinfo {
    /// The text and the (key start, `=`, value end) offsets, as [`super::memo`] keeps them.
    pub(crate) fn parts(&self) -> (&str, &[(u32, u32, u32)]) {
        (&self.text, &self.entries)
    }

    /// [`Modinfo::parts`] back; `None` when an offset falls outside the text.
    pub(crate) fn from_parts(text: String, entries: Vec<(u32, u32, u32)>) -> Option<Modinfo> {
        let len = text.len() as u32;
        entries
            .iter()
            .all(|&(a, b, c)| a <= b && b <= len && c <= len)
            .then_some(Modinfo { text, entries })
    }

    /// The `(key, value)` pairs in file order; the value is empty for an entry without `=`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.entries.iter().map(|&(start, eq, end)| {
            let (start, eq, end) = (start as usize, eq as usize, end as usize);
            let key = self.text.get(start..eq).unwrap_or_default();
            let value = self.text.get((eq + 1).min(end)..end).unwrap_or_default();
            (key, value)
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Equal when the entries are (whatever padding the sections had).
impl PartialEq for Modinfo {
    fn eq(&self, other: &Modinfo) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Modinfo {}

impl Serialize for Modinfo {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

/// `.modinfo` strings, as kmod reads them: NUL-separated, runs of NULs (alignment padding)
/// skipped, and a last string without its NUL accepted. Bytes that are not UTF-8 are
/// replaced (U+FFFD), as each entry on its own would be: NUL is never part of a sequence.
fn parse_modinfo(bytes: &[u8]) -> Modinfo {
    let text = String::from_utf8_lossy(bytes).into_owned();
    // Offsets fit in u32: a section is bounded by the (capped) file, and a text too long
    // for them keeps the entries that fit.
    let mut entries = Vec::new();
    let mut at = 0usize;
    for entry in text.split('\0') {
        let start = at;
        let end = start + entry.len();
        at = end + 1;
        if entry.is_empty() {
            continue;
        }
        let eq = entry.find('=').map_or(end, |i| start + i);
        match (u32::try_from(start), u32::try_from(eq), u32::try_from(end)) {
            (Ok(s), Ok(e), Ok(n)) => entries.push((s, e, n)),
            _ => break,
        }
    }
    Modinfo { text, entries }
}

fn read_versions(
    sections: &Sections,
    class: ElfClass,
) -> Result<(Vec<SymbolVersion>, VersionsFormat), ReadError> {
    let little = sections.ctx.le.is_little();
    let ext_crcs = sections.find("__version_ext_crcs");
    let ext_names = sections.find("__version_ext_names");
    match (ext_crcs, ext_names) {
        (Some(crcs), Some(names)) => {
            let versions = read_ext_versions(
                sections.bytes(crcs),
                crcs.sh_size,
                sections.bytes(names),
                little,
            )?;
            return Ok((versions, VersionsFormat::Extended));
        }
        (Some(_), None) => {
            return Err(ReadError::ExtVersionsIncomplete {
                present: "__version_ext_crcs",
                missing: "__version_ext_names",
            });
        }
        (None, Some(_)) => {
            return Err(ReadError::ExtVersionsIncomplete {
                present: "__version_ext_names",
                missing: "__version_ext_crcs",
            });
        }
        (None, None) => {}
    }
    let Some(sh) = sections.find("__versions") else {
        return Ok((Vec::new(), VersionsFormat::None));
    };
    let bytes = sections.bytes(sh);
    if !sh.sh_size.is_multiple_of(VERSION_RECORD_LEN as u64) {
        return Err(ReadError::VersionsSize(sh.sh_size));
    }
    let crc_len = match class {
        ElfClass::Elf32 => 4,
        ElfClass::Elf64 => 8,
    };
    let mut versions = Vec::with_capacity(bytes.len() / VERSION_RECORD_LEN);
    for (index, record) in bytes.chunks_exact(VERSION_RECORD_LEN).enumerate() {
        let (crc_bytes, name) = record.split_at(crc_len);
        // The CRC is an unsigned long holding a 32-bit value: its low 32 bits.
        let crc = if little {
            read_u32(crc_bytes, 0, true)
        } else {
            read_u32(crc_bytes, crc_len - 4, false)
        };
        let name = cstr_at(name, 0).ok_or(ReadError::VersionsNameUnterminated(index))?;
        // As kmod does: PPC64 ELFv1 dot-symbols are listed without the dot.
        let name = name.strip_prefix(b".").unwrap_or(name);
        versions.push(SymbolVersion {
            name: lossy(name),
            crc: crc.unwrap_or(0),
        });
    }
    Ok((versions, VersionsFormat::Classic))
}

fn read_ext_versions(
    crcs: &[u8],
    crcs_size: u64,
    names: &[u8],
    little: bool,
) -> Result<Vec<SymbolVersion>, ReadError> {
    if !crcs_size.is_multiple_of(4) {
        return Err(ReadError::ExtCrcsSize(crcs_size));
    }
    if !names.is_empty() && names.last() != Some(&0) {
        return Err(ReadError::ExtNamesUnterminated);
    }
    let crc_count = crcs.len() / 4;
    let name_list: Vec<&[u8]> = match names.split_last() {
        Some((_, body)) => body.split(|&b| b == 0).collect(),
        None => Vec::new(),
    };
    if crc_count != name_list.len() {
        return Err(ReadError::ExtCountMismatch {
            crcs: crc_count,
            names: name_list.len(),
        });
    }
    Ok(crcs
        .chunks_exact(4)
        .zip(name_list)
        .map(|(crc, name)| SymbolVersion {
            name: lossy(name),
            crc: read_u32(crc, 0, little).unwrap_or(0),
        })
        .collect())
}

fn read_u32(bytes: &[u8], at: usize, little: bool) -> Option<u32> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(if little {
        u32::from_le_bytes(raw)
    } else {
        u32::from_be_bytes(raw)
    })
}

/// Undefined and exported symbols from `.symtab` (the first SHT_SYMTAB section) and the
/// string table its `sh_link` names. A module without `.symtab` has neither.
fn read_symbols(sections: &Sections) -> Result<(Vec<String>, Vec<String>), ReadError> {
    let Some((index, symtab)) = sections
        .headers
        .iter()
        .enumerate()
        .find(|(_, sh)| sh.sh_type == SHT_SYMTAB)
    else {
        return Ok((Vec::new(), Vec::new()));
    };
    let entsize = Sym::size(sections.ctx.container);
    if symtab.sh_entsize != entsize as u64 {
        return Err(ReadError::Symtab(format!(
            "entry size is {}, expected {entsize}",
            symtab.sh_entsize
        )));
    }
    let bytes = sections.bytes(symtab);
    if !bytes.len().is_multiple_of(entsize) {
        return Err(ReadError::Symtab(format!(
            "size {} is not a multiple of the entry size {entsize}",
            bytes.len()
        )));
    }
    let strtab = usize::try_from(symtab.sh_link)
        .ok()
        .filter(|&link| link != 0 && link != index)
        .and_then(|link| sections.headers.get(link))
        .ok_or_else(|| {
            ReadError::Symtab(format!("string table index {} is invalid", symtab.sh_link))
        })?;
    let strings = sections.bytes(strtab);
    let little = sections.ctx.le.is_little();
    let is64 = sections.ctx.container.is_big();
    let u16_at = |b: &[u8], at: usize| -> u16 {
        let raw = [
            b.get(at).copied().unwrap_or(0),
            b.get(at + 1).copied().unwrap_or(0),
        ];
        if little {
            u16::from_le_bytes(raw)
        } else {
            u16::from_be_bytes(raw)
        }
    };

    // Each entry is read in place (no table of parsed symbols is built): st_name, st_info
    // and st_shndx are all this needs. Elf32_Sym: name@0 info@12 shndx@14; Elf64_Sym:
    // name@0 info@4 shndx@6.
    let (info_at, shndx_at) = if is64 { (4, 6) } else { (12, 14) };
    let mut undefined = Vec::new();
    let mut exported = Vec::new();
    for (i, sym) in bytes.chunks_exact(entsize).enumerate() {
        let st_name = read_u32(sym, 0, little).unwrap_or(0) as usize;
        if st_name == 0 {
            continue;
        }
        let st_info = sym.get(info_at).copied().unwrap_or(0);
        let st_shndx = u16_at(sym, shndx_at);
        let name = cstr_at(strings, st_name).ok_or_else(|| {
            ReadError::Symtab(format!(
                "symbol {i} has name offset {st_name} outside its string table"
            ))
        })?;
        if name.is_empty() {
            continue;
        }
        if u32::from(st_shndx) == SHN_UNDEF {
            // Weak undefined symbols may stay unresolved (the loader leaves them 0, modpost
            // does not report them): they are not imports.
            if st_info >> 4 != STB_WEAK {
                undefined.push(lossy(name));
            }
        } else if st_info & 0xF != STT_SECTION
            && let Some(export) = name.strip_prefix(KSYMTAB_PREFIX.as_bytes())
            && !export.is_empty()
        {
            exported.push(lossy(export));
        }
    }
    Ok((undefined, exported))
}

/// Tag_CPU_arch (tag 6) from the "aeabi" vendor subsection's file attributes. `None` when
/// the section is absent, malformed, or does not say.
fn arm_cpu_arch(section: &[u8], endian: Endian) -> Option<u8> {
    const FORMAT_VERSION: u8 = b'A';
    const TAG_FILE: u8 = 1;
    const TAG_CPU_ARCH: u64 = 6;
    let little = endian == Endian::Little;
    let (&version, mut rest) = section.split_first()?;
    if version != FORMAT_VERSION {
        return None;
    }
    // Subsections: u32 length (including itself), vendor name, then sub-subsections.
    while rest.len() >= 4 {
        let len = usize::try_from(read_u32(rest, 0, little)?).ok()?;
        let sub = rest.get(..len).filter(|_| len >= 4)?;
        rest = rest.get(len..)?;
        let body = sub.get(4..)?;
        let vendor = cstr_at(body, 0)?;
        if vendor != b"aeabi" {
            continue;
        }
        let mut subs = body.get(vendor.len().checked_add(1)?..)?;
        // Sub-subsections: tag byte, u32 size (including tag and size), attributes.
        while subs.len() >= 5 {
            let tag = *subs.first()?;
            let size = usize::try_from(read_u32(subs, 1, little)?).ok()?;
            let attrs = subs.get(5..size).filter(|_| size >= 5)?;
            subs = subs.get(size..)?;
            if tag == TAG_FILE {
                return find_arm_attribute(attrs, TAG_CPU_ARCH).and_then(|v| u8::try_from(v).ok());
            }
        }
    }
    None
}

/// Walk `tag value` pairs (ULEB128 tags; values ULEB128 or NUL-terminated strings per the
/// ARM ABI's rules) until `wanted`.
fn find_arm_attribute(mut attrs: &[u8], wanted: u64) -> Option<u64> {
    while !attrs.is_empty() {
        let tag = read_uleb(&mut attrs)?;
        // Tag_CPU_raw_name (4), Tag_CPU_name (5), Tag_also_compatible_with (65),
        // Tag_conformance (67) and unknown odd tags above 32 carry strings;
        // Tag_compatibility (32) carries a number then a string.
        let string_only = matches!(tag, 4 | 5 | 65 | 67) || (tag > 32 && tag % 2 == 1);
        if string_only {
            let s = cstr_at(attrs, 0)?;
            attrs = attrs.get(s.len().checked_add(1)?..)?;
            continue;
        }
        let value = read_uleb(&mut attrs)?;
        if tag == wanted {
            return Some(value);
        }
        if tag == 32 {
            let s = cstr_at(attrs, 0)?;
            attrs = attrs.get(s.len().checked_add(1)?..)?;
        }
    }
    None
}

fn read_uleb(bytes: &mut &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Appended signature (include/linux/module_signature.h, kmod's libkmod-signature.c)
//
// [ module ][ signer ][ key id ][ signature ][ struct module_signature ][ SIGNATURE_MAGIC ]

const ID_TYPES: [&str; 3] = ["PGP", "X509", "PKCS#7"];
const ID_PKCS7: u8 = 2;
const HASH_ALGOS: [&str; 9] = [
    "md4", "md5", "sha1", "rmd160", "sha256", "sha384", "sha512", "sha224", "sm3",
];

/// Split `data` into the ELF and its signature. No magic at the end means "not signed".
fn split_signature(data: &[u8], digest: bool) -> Result<(&[u8], Option<Signature>), ReadError> {
    let Some(before_magic) = data.strip_suffix(SIGNATURE_MAGIC) else {
        return Ok((data, None));
    };
    let bad = |msg: String| ReadError::Signature(msg);
    let info_start = before_magic
        .len()
        .checked_sub(SIGNATURE_INFO_LEN)
        .ok_or_else(|| {
            bad(format!(
                "the file ends with the signature magic but has only {} bytes before it",
                before_magic.len()
            ))
        })?;
    let (rest, info) = before_magic.split_at(info_start);
    let [
        algo,
        hash,
        id_type,
        signer_len,
        key_id_len,
        _,
        _,
        _,
        l0,
        l1,
        l2,
        l3,
    ] = <[u8; SIGNATURE_INFO_LEN]>::try_from(info).map_err(|_| bad("short descriptor".into()))?;
    let sig_len = u32::from_be_bytes([l0, l1, l2, l3]);
    let id_name = ID_TYPES
        .get(usize::from(id_type))
        .ok_or_else(|| bad(format!("unknown key identifier type {id_type}")))?;
    if sig_len == 0 {
        return Err(bad("signature length is 0".into()));
    }
    let sig_len = usize::try_from(sig_len).map_err(|_| bad("signature too long".into()))?;
    let total = sig_len
        .checked_add(usize::from(signer_len))
        .and_then(|n| n.checked_add(usize::from(key_id_len)))
        .filter(|&n| n <= rest.len())
        .ok_or_else(|| {
            bad(format!(
                "signature ({sig_len} bytes), signer ({signer_len}) and key id ({key_id_len}) do not fit in the {} bytes before the descriptor",
                rest.len()
            ))
        })?;
    let module_len = rest.len() - total;
    let (module, trailer) = rest.split_at(module_len);
    let (signer, trailer) = trailer.split_at(usize::from(signer_len));
    let (key_id, sig) = trailer.split_at(usize::from(key_id_len));

    let signature = if id_type == ID_PKCS7 {
        let info = pkcs7::signer_info(sig).map_err(|e| bad(format!("PKCS#7: {e}")))?;
        let mut message = info.message;
        if digest {
            message.content_digest = super::signing::digest(&message.digest_oid, module);
        }
        Signature {
            signer: info.signer,
            key_id: hex_colons(&info.key_id),
            hash_algo: info.hash_algo,
            id_type: id_name.to_string(),
            message: Some(Box::new(message)),
        }
    } else {
        if usize::from(algo) >= 2 {
            return Err(bad(format!("unknown public-key algorithm {algo}")));
        }
        let hash_algo = HASH_ALGOS
            .get(usize::from(hash))
            .ok_or_else(|| bad(format!("unknown hash algorithm {hash}")))?;
        Signature {
            signer: lossy(signer),
            key_id: hex_colons(key_id),
            hash_algo: hash_algo.to_string(),
            id_type: id_name.to_string(),
            message: None,
        }
    };
    Ok((module, Some(signature)))
}

fn hex_colons(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, &b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xF)]));
    }
    out
}

/// A minimal DER reader for the one thing kmx needs from a module's PKCS#7 signature: the
/// first SignerInfo's issuer common name, serial number and digest algorithm (what kmod's
/// `modinfo` shows). Definite lengths only (DER; the kernel's sign-file writes DER).
pub(crate) mod pkcs7 {
    use std::fmt;

    use super::SignedMessage;

    pub struct SignerInfo {
        pub signer: String,
        pub key_id: Vec<u8>,
        pub hash_algo: String,
        pub message: SignedMessage,
    }

    #[derive(Debug)]
    pub struct DerError(pub &'static str);

    impl fmt::Display for DerError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const INTEGER: u8 = 0x02;
    const OID: u8 = 0x06;
    const OCTET_STRING: u8 = 0x04;
    const CONTEXT_0: u8 = 0xA0;
    const CONTEXT_0_PRIMITIVE: u8 = 0x80;
    const CONTEXT_1: u8 = 0xA1;
    /// 1.2.840.113549.1.7.2
    const OID_SIGNED_DATA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x02];
    /// 2.5.4.3
    const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    /// 1.2.840.113549.1.9.4
    const OID_MESSAGE_DIGEST: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x04];

    /// One TLV read from the front of a buffer.
    struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        fn is_empty(&self) -> bool {
            self.0.is_empty()
        }

        fn peek_tag(&self) -> Option<u8> {
            self.0.first().copied()
        }

        /// Read any element: its tag and contents.
        fn any(&mut self) -> Result<(u8, &'a [u8]), DerError> {
            self.any_whole().map(|(tag, contents, _)| (tag, contents))
        }

        /// Read any element: its tag, contents and the whole encoding (tag and length too).
        fn any_whole(&mut self) -> Result<(u8, &'a [u8], &'a [u8]), DerError> {
            let start = self.0;
            let (&tag, rest) = self.0.split_first().ok_or(DerError("truncated element"))?;
            if tag & 0x1F == 0x1F {
                return Err(DerError("high tag numbers are not supported"));
            }
            let (&first, mut rest) = rest.split_first().ok_or(DerError("truncated length"))?;
            let len = if first < 0x80 {
                usize::from(first)
            } else if first == 0x80 {
                return Err(DerError("indefinite length (BER) is not supported"));
            } else {
                let n = usize::from(first & 0x7F);
                if n > 4 {
                    return Err(DerError("length field too long"));
                }
                let (bytes, tail) = rest
                    .split_at_checked(n)
                    .ok_or(DerError("truncated length"))?;
                rest = tail;
                bytes
                    .iter()
                    .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
            };
            let (contents, tail) = rest
                .split_at_checked(len)
                .ok_or(DerError("element extends past its container"))?;
            self.0 = tail;
            let whole = start
                .get(..start.len() - tail.len())
                .ok_or(DerError("element extends past its container"))?;
            Ok((tag, contents, whole))
        }

        /// Read an element that must have tag `tag`.
        fn element(&mut self, tag: u8, what: &'static str) -> Result<Reader<'a>, DerError> {
            let (found, contents) = self.any()?;
            if found != tag {
                return Err(DerError(what));
            }
            Ok(Reader(contents))
        }
    }

    /// The two INTEGERs of a DER `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }`,
    /// as unsigned big-endian bytes (leading zeros stripped); `None` when it is not one, or
    /// an integer is negative.
    pub fn ecdsa_sig_value(der: &[u8]) -> Option<(&[u8], &[u8])> {
        fn unsigned(int: &[u8]) -> Option<&[u8]> {
            if int.first()? & 0x80 != 0 {
                return None;
            }
            let start = int.iter().position(|&b| b != 0).unwrap_or(int.len());
            Some(&int[start..])
        }
        let mut outer = Reader(der);
        let mut seq = outer.element(SEQUENCE, "ECDSA-Sig-Value").ok()?;
        let r = seq.element(INTEGER, "r").ok()?;
        let s = seq.element(INTEGER, "s").ok()?;
        (seq.is_empty() && outer.is_empty()).then_some(())?;
        Some((unsigned(r.0)?, unsigned(s.0)?))
    }

    pub fn signer_info(der: &[u8]) -> Result<SignerInfo, DerError> {
        let mut content_info = Reader(der).element(SEQUENCE, "ContentInfo is not a SEQUENCE")?;
        let oid = content_info.element(OID, "ContentInfo has no content type")?;
        if oid.0 != OID_SIGNED_DATA {
            return Err(DerError("content type is not signedData"));
        }
        let mut explicit = content_info.element(CONTEXT_0, "signedData content is missing")?;
        let mut signed_data = explicit.element(SEQUENCE, "SignedData is not a SEQUENCE")?;
        signed_data.element(INTEGER, "SignedData has no version")?;
        signed_data.element(SET, "SignedData has no digestAlgorithms")?;
        signed_data.element(SEQUENCE, "SignedData has no contentInfo")?;
        // Optional certificates [0] and crls [1], then signerInfos.
        let mut certificates = Vec::new();
        while matches!(signed_data.peek_tag(), Some(CONTEXT_0 | CONTEXT_1)) {
            let (tag, contents) = signed_data.any()?;
            if tag == CONTEXT_0 {
                let mut certs = Reader(contents);
                while !certs.is_empty() {
                    let (_, _, whole) = certs.any_whole()?;
                    certificates.push(whole.to_vec());
                }
            }
        }
        let mut signer_infos = signed_data.element(SET, "SignedData has no signerInfos")?;
        let mut signer = signer_infos.element(SEQUENCE, "no SignerInfo")?;
        signer.element(INTEGER, "SignerInfo has no version")?;
        let (sid_tag, sid) = signer.any()?;
        let mut issuer_der = Vec::new();
        let mut serial_bytes = Vec::new();
        let mut subject_key_id = None;
        let (name, key_id) = match sid_tag {
            SEQUENCE => {
                let mut issuer_and_serial = Reader(sid);
                let (tag, issuer, whole) = issuer_and_serial.any_whole()?;
                if tag != SEQUENCE {
                    return Err(DerError("issuer is not a Name"));
                }
                let serial = issuer_and_serial.element(INTEGER, "no serial number")?;
                issuer_der = whole.to_vec();
                serial_bytes = serial.0.to_vec();
                (common_name(Reader(issuer))?, strip_leading_zeros(serial.0))
            }
            // CMS subjectKeyIdentifier [0]: no issuer to name; the identifier is the key id.
            CONTEXT_0_PRIMITIVE => {
                subject_key_id = Some(sid.to_vec());
                (String::new(), sid.to_vec())
            }
            _ => return Err(DerError("SignerInfo has no signer identifier")),
        };
        let mut digest_algorithm = signer.element(SEQUENCE, "SignerInfo has no digestAlgorithm")?;
        let oid = digest_algorithm.element(OID, "digestAlgorithm has no OID")?;
        // Signed attributes [0] IMPLICIT SET OF Attribute: signed as a SET.
        let mut signed_attrs = None;
        let mut message_digest = None;
        if signer.peek_tag() == Some(CONTEXT_0) {
            let (_, contents, whole) = signer.any_whole()?;
            let mut set = whole.to_vec();
            if let Some(first) = set.first_mut() {
                *first = SET;
            }
            signed_attrs = Some(set);
            let mut attrs = Reader(contents);
            while !attrs.is_empty() {
                let mut attr = attrs.element(SEQUENCE, "signed attribute is not a SEQUENCE")?;
                let kind = attr.element(OID, "signed attribute has no type")?;
                let mut values = attr.element(SET, "signed attribute has no values")?;
                if kind.0 == OID_MESSAGE_DIGEST {
                    let value =
                        values.element(OCTET_STRING, "messageDigest is not an OCTET STRING")?;
                    message_digest = Some(value.0.to_vec());
                }
            }
        }
        // The encrypted digest must be there too, or this is not a signature.
        let mut signature_algorithm =
            signer.element(SEQUENCE, "SignerInfo has no signature algorithm")?;
        let signature_oid = signature_algorithm.element(OID, "signature algorithm has no OID")?;
        let signature = signer.element(OCTET_STRING, "SignerInfo has no signature")?;
        Ok(SignerInfo {
            signer: name,
            key_id,
            hash_algo: digest_name(oid.0),
            message: SignedMessage {
                issuer: issuer_der,
                serial: serial_bytes,
                subject_key_id,
                digest_oid: oid.0.to_vec(),
                signature_oid: signature_oid.0.to_vec(),
                signed_attrs,
                message_digest,
                signature: signature.0.to_vec(),
                certificates,
                content_digest: None,
            },
        })
    }

    /// The first commonName in a Name (SEQUENCE OF SET OF {OID, value}); empty if none,
    /// like kmod.
    fn common_name(mut name: Reader) -> Result<String, DerError> {
        while !name.is_empty() {
            let mut rdn = name.element(SET, "Name entry is not a SET")?;
            while !rdn.is_empty() {
                let mut attr = rdn.element(SEQUENCE, "Name attribute is not a SEQUENCE")?;
                let oid = attr.element(OID, "Name attribute has no type")?;
                let (_, value) = attr.any()?;
                if oid.0 == OID_COMMON_NAME {
                    return Ok(String::from_utf8_lossy(value).into_owned());
                }
            }
        }
        Ok(String::new())
    }

    /// An INTEGER's magnitude as OpenSSL's BN_bn2bin gives it (what kmod prints).
    fn strip_leading_zeros(bytes: &[u8]) -> Vec<u8> {
        let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        bytes.get(start..).unwrap_or_default().to_vec()
    }

    /// OpenSSL's short name for the digest OIDs module signing uses, else the dotted OID.
    fn digest_name(oid: &[u8]) -> String {
        const NIST_HASH: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02];
        let name = match oid {
            [0x2B, 0x0E, 0x03, 0x02, 0x1A] => Some("sha1"),
            [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x02, 0x05] => Some("md5"),
            [0x2A, 0x81, 0x1C, 0xCF, 0x55, 0x01, 0x83, 0x11] => Some("sm3"),
            _ => match oid.strip_prefix(NIST_HASH) {
                Some([1]) => Some("sha256"),
                Some([2]) => Some("sha384"),
                Some([3]) => Some("sha512"),
                Some([4]) => Some("sha224"),
                Some([8]) => Some("sha3-256"),
                Some([9]) => Some("sha3-384"),
                Some([10]) => Some("sha3-512"),
                _ => None,
            },
        };
        name.map(str::to_string).unwrap_or_else(|| dotted(oid))
    }

    fn dotted(oid: &[u8]) -> String {
        let mut arcs: Vec<u64> = Vec::new();
        let mut value: u64 = 0;
        for &b in oid {
            value = value
                .saturating_mul(128)
                .saturating_add(u64::from(b & 0x7F));
            if b & 0x80 == 0 {
                if arcs.is_empty() {
                    let first = (value / 40).min(2);
                    arcs.push(first);
                    arcs.push(value - first * 40);
                } else {
                    arcs.push(value);
                }
                value = 0;
            }
        }
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn names_digests_like_openssl() {
            assert_eq!(
                digest_name(&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 1]),
                "sha256"
            );
            assert_eq!(digest_name(&[0x2B, 0x0E, 0x03, 0x02, 0x1A]), "sha1");
            assert_eq!(digest_name(&[0x2A, 0x03]), "1.2.3");
        }

        #[test]
        fn rejects_lengths_past_the_buffer() {
            let err = signer_info(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF])
                .err()
                .unwrap();
            assert_eq!(err.to_string(), "element extends past its container");
            let err = signer_info(&[0x30, 0x80]).err().unwrap();
            assert_eq!(err.to_string(), "indefinite length (BER) is not supported");
        }
    }
}

impl fmt::Display for VersionsFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VersionsFormat::None => "none",
            VersionsFormat::Classic => "__versions",
            VersionsFormat::Extended => "extended (__version_ext_crcs)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sparse read of large files gives the module the whole file gives, though the
    /// buffer it reuses holds another file's bytes where it does not read; and it leaves
    /// to the whole-file reader what it cannot read that way (its errors are the reader's).
    #[test]
    fn sparse_reads_see_what_the_whole_file_shows() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut compared = 0;
        for dir in [
            "modules/amd64",
            "modules/arm64",
            "modules/armhf",
            "modules/i386",
            "broken",
        ] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                let whole = std::fs::read(&path).unwrap();
                let file = File::open(&path).unwrap();
                let mut stale = vec![0xA5u8; whole.len() + 100];
                match read_sparse(&file, whole.len(), &mut stale) {
                    Some(len) => {
                        let sparse = Module::parse_with(&stale[..len], false);
                        let plain = Module::parse_with(&whole, false);
                        assert_eq!(
                            format!("{sparse:?}"),
                            format!("{plain:?}"),
                            "{}",
                            path.display()
                        );
                        compared += 1;
                    }
                    None => assert!(
                        Compression::detect(&whole).is_some()
                            || Module::parse_with(&whole, false).is_err(),
                        "{} should have been read sparsely",
                        path.display()
                    ),
                }
            }
        }
        assert!(compared >= 8, "{compared}");
    }

    #[test]
    fn modinfo_skips_padding_and_keeps_order_and_repeats() {
        let raw = b"\0\0license=GPL\0alias=a\0\0\0alias=b\0flag\0vermagic=6.1 x ";
        let got = parse_modinfo(raw);
        let want = [
            ("license", "GPL"),
            ("alias", "a"),
            ("alias", "b"),
            ("flag", ""),
            ("vermagic", "6.1 x "),
        ];
        assert_eq!(got.iter().collect::<Vec<_>>(), want);
        // Values keep any further '='; bytes that are not UTF-8 are replaced per entry.
        let got = parse_modinfo(b"parm=a=b:int\0k=\xff\xfe\0=v\0");
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            [("parm", "a=b:int"), ("k", "\u{fffd}\u{fffd}"), ("", "v")]
        );
        assert!(parse_modinfo(b"").is_empty());
        assert!(parse_modinfo(b"\0\0").is_empty());
    }

    #[test]
    fn extended_versions_pair_crcs_with_names() {
        let crcs = [0x78, 0x56, 0x34, 0x12, 0x01, 0, 0, 0];
        let got = read_ext_versions(&crcs, 8, b"module_layout\0_printk\0", true).unwrap();
        assert_eq!(
            got,
            [
                SymbolVersion {
                    name: "module_layout".into(),
                    crc: 0x1234_5678
                },
                SymbolVersion {
                    name: "_printk".into(),
                    crc: 1
                },
            ]
        );
        let big = read_ext_versions(&crcs, 8, b"a\0b\0", false).unwrap();
        assert_eq!(big[0].crc, 0x7856_3412);
        assert!(read_ext_versions(&[], 0, b"", true).unwrap().is_empty());
    }

    #[test]
    fn extended_versions_errors() {
        let crcs = [0u8; 8];
        let err = |r: Result<Vec<SymbolVersion>, ReadError>| r.unwrap_err().to_string();
        assert_eq!(
            err(read_ext_versions(&crcs, 8, b"a\0", true)),
            "__version_ext_crcs has 2 entries but __version_ext_names has 1 names"
        );
        assert_eq!(
            err(read_ext_versions(&crcs[..6], 6, b"a\0", true)),
            "__version_ext_crcs size 6 is not a multiple of 4"
        );
        assert_eq!(
            err(read_ext_versions(&crcs, 8, b"a\0b", true)),
            "__version_ext_names does not end with a NUL byte"
        );
    }

    #[test]
    fn arm_attributes_tag_cpu_arch() {
        // "A", subsection {len, "aeabi\0", File{tag 1, size, Tag_CPU_name "7-A", Tag_CPU_arch 10}}
        let attrs: &[u8] = &[5, b'7', b'-', b'A', 0, 6, 10, 7, 0x41];
        let mut file = vec![1u8];
        file.extend_from_slice(&(5 + attrs.len() as u32).to_le_bytes());
        file.extend_from_slice(attrs);
        let mut sub = Vec::new();
        sub.extend_from_slice(&(4 + 6 + file.len() as u32).to_le_bytes());
        sub.extend_from_slice(b"aeabi\0");
        sub.extend_from_slice(&file);
        let mut section = vec![b'A'];
        section.extend_from_slice(&sub);
        assert_eq!(arm_cpu_arch(&section, Endian::Little), Some(10));
        // Malformed or foreign: None, never a panic.
        assert_eq!(
            arm_cpu_arch(&section[..section.len() - 3], Endian::Little),
            None
        );
        assert_eq!(arm_cpu_arch(b"B", Endian::Little), None);
        assert_eq!(
            arm_cpu_arch(&[b'A', 0xFF, 0xFF, 0xFF, 0xFF], Endian::Little),
            None
        );
        assert_eq!(arm_cpu_arch(&[b'A', 0, 0, 0, 0], Endian::Little), None);
    }

    #[test]
    fn legacy_x509_signature_uses_the_descriptor_fields() {
        let mut file = b"ELF...".to_vec();
        file.extend_from_slice(b"signer");
        file.extend_from_slice(&[0xAB, 0x01]);
        file.extend_from_slice(&[0x55; 3]);
        // algo RSA, hash sha256, id X509, signer_len 6, key_id_len 2, pad, sig_len 3 (BE)
        file.extend_from_slice(&[1, 4, 1, 6, 2, 0, 0, 0, 0, 0, 0, 3]);
        file.extend_from_slice(SIGNATURE_MAGIC);
        let (module, sig) = split_signature(&file, true).unwrap();
        assert_eq!(module, b"ELF...");
        assert_eq!(
            sig,
            Some(Signature {
                signer: "signer".into(),
                key_id: "AB:01".into(),
                hash_algo: "sha256".into(),
                id_type: "X509".into(),
                message: None,
            })
        );
    }

    #[test]
    fn signature_descriptor_errors() {
        let with = |info: [u8; 12]| {
            let mut f = vec![0u8; 32];
            f.extend_from_slice(&info);
            f.extend_from_slice(SIGNATURE_MAGIC);
            split_signature(&f, true).unwrap_err().to_string()
        };
        assert_eq!(
            with([0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            "malformed module signature: unknown key identifier type 3"
        );
        assert_eq!(
            with([0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            "malformed module signature: signature length is 0"
        );
        assert_eq!(
            with([0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 4]),
            "malformed module signature: PKCS#7: ContentInfo is not a SEQUENCE"
        );
        assert_eq!(
            with([0, 9, 1, 0, 0, 0, 0, 0, 0, 0, 0, 4]),
            "malformed module signature: unknown hash algorithm 9"
        );
    }

    #[test]
    fn unsigned_data_is_returned_whole() {
        let (module, sig) = split_signature(b"\x7fELF", true).unwrap();
        assert_eq!(module, b"\x7fELF");
        assert_eq!(sig, None);
    }
}

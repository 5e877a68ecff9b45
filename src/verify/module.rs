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
use std::path::Path;

use goblin::container::{Container, Ctx, Endian as GoblinEndian};
use goblin::elf::Elf;
use goblin::elf::header::{self, ET_REL};
use goblin::elf::section_header::{SHN_UNDEF, SHT_NOBITS, SHT_SYMTAB, SectionHeader};
use goblin::elf::sym::{STB_WEAK, STT_SECTION, Sym};
use serde::Serialize;

pub use super::decompress::Compression;
use super::decompress::DecompressError;
use super::pkcs7;
pub use super::pkcs7::SignedMessage;
use crate::config::arch::{ElfClass, ElfIdentity, Endian, machine};

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
pub(super) fn read_sparse(file: &File, len: usize, data: &mut Vec<u8>) -> Option<usize> {
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
pub(super) fn parse_uncompressed(data: &[u8], digest: bool) -> Result<Module, ReadError> {
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

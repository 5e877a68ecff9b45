//! What a kernel module file carries that several layers name: the compression it is
//! stored in and its vermagic. Types only, with their text forms; no I/O. They live on the
//! ground floor so that the state store (below [`crate::kernel`] and [`crate::verify`])
//! can keep them in its records. Which format a stream is, by its magic bytes, is
//! [`crate::verify::decompress`]'s (`Compression::detect`); composing the vermagic a
//! kernel configuration produces is [`crate::kernel::vermagic`]'s.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A compression format a module file may be stored in (CONFIG_MODULE_COMPRESS_*).
/// Its JSON and [`Display`](fmt::Display) name is the format's (`xz`, `zstd`, `gzip`);
/// installed files and the state store use the file suffix ([`Compression::extension`]).
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
    const ALL: [Compression; 3] = [Compression::Xz, Compression::Zstd, Compression::Gzip];

    /// The suffix installed modules get: `.ko.xz` etc.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Gzip => "gz",
            Compression::Xz => "xz",
            Compression::Zstd => "zst",
        }
    }

    /// The format whose suffix is `ext` (`gz`, `xz`, `zst`).
    pub fn from_extension(ext: &str) -> Option<Compression> {
        Compression::ALL.into_iter().find(|c| c.extension() == ext)
    }
}

/// `Option<Compression>` as its file suffix or `null`, the state store's form
/// (`#[serde(with = "modfile::by_extension")]`).
pub mod by_extension {
    use super::Compression;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(c: &Option<Compression>, s: S) -> Result<S::Ok, S::Error> {
        match c {
            Some(c) => s.serialize_some(c.extension()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Compression>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(ext) => Compression::from_extension(&ext).map(Some).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown module compression `{ext}` (expected gz, xz or zst)"
                ))
            }),
        }
    }
}

/// A vermagic string split at its first space: `release + " " + flags`. `flags` is kept
/// byte for byte (x86 and arm strings end in a space, arm64 ones do not). Its JSON form is
/// the whole string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Vermagic {
    pub release: String,
    pub flags: String,
}

impl Vermagic {
    /// Split a vermagic string at its first space. `None` when there is no space or no
    /// release before it.
    pub fn parse(s: &str) -> Option<Vermagic> {
        let (release, flags) = s.split_once(' ')?;
        (!release.is_empty()).then(|| Vermagic {
            release: release.to_string(),
            flags: flags.to_string(),
        })
    }

    /// The flag tokens ("SMP", "preempt", "aarch64", ...), order and spacing dropped.
    pub fn tokens(&self) -> BTreeSet<&str> {
        self.flags.split_whitespace().collect()
    }
}

impl fmt::Display for Vermagic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.release, self.flags)
    }
}

impl Serialize for Vermagic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Vermagic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Vermagic, D::Error> {
        let s = String::deserialize(d)?;
        Vermagic::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "vermagic {s:?} is not a kernel release, a space and flags"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compression_reads_back_from_its_suffix_and_nothing_else() {
        for c in Compression::ALL {
            assert_eq!(Compression::from_extension(c.extension()), Some(c));
        }
        assert_eq!(Compression::Zstd.extension(), "zst");
        assert_eq!(Compression::Zstd.to_string(), "zstd");
        // The format's name is not its suffix: `zstd` and `gzip` are no file suffix.
        for bad in ["zstd", "gzip", "", "XZ", "bz2"] {
            assert_eq!(Compression::from_extension(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_vermagic_is_one_json_string_that_round_trips() {
        // x86's ends in a space, arm64's does not: both kept byte for byte.
        for text in [
            "6.1.0-50-amd64 SMP preempt mod_unload modversions ",
            "6.1.0-50-arm64 SMP preempt mod_unload modversions aarch64",
            "6.1.0 ",
        ] {
            let v = Vermagic::parse(text).unwrap();
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(json, serde_json::to_string(text).unwrap());
            assert_eq!(serde_json::from_str::<Vermagic>(&json).unwrap(), v);
            assert_eq!(v.to_string(), text);
        }
        for bad in ["\"6.1.0\"", "\" SMP\"", "\"\"", "3"] {
            assert!(serde_json::from_str::<Vermagic>(bad).is_err(), "{bad}");
        }
    }
}

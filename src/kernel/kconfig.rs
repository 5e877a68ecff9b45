//! A kernel `.config` as data: which `CONFIG_` symbols are set and to what. It owns parsing
//! the file format (`CONFIG_X=y|m|"str"|123`, `# CONFIG_X is not set`) and naming the kernel
//! ARCH a configuration is for; it does not interpret what any option means beyond that.

use std::collections::HashMap;
use std::path::Path;

use crate::{Error, Result};

/// The hint for a KDIR that lacks a file every prepared build tree has.
pub(crate) const NOT_PREPARED: &str = "this is not a prepared kernel build tree: run `make modules_prepare` in it, or fetch one with `kmx kernels fetch`";

/// The set options of a kernel configuration. Options that are "not set" are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KConfig {
    values: HashMap<String, String>,
}

impl KConfig {
    /// Parse `.config` text. Lines that are not assignments (comments, blanks, stray text)
    /// are ignored, as kconfig itself does.
    pub fn parse(text: &str) -> KConfig {
        let values = text
            .lines()
            .filter_map(|line| {
                let (name, value) = line.trim().split_once('=')?;
                if !name.starts_with("CONFIG_") {
                    return None;
                }
                Some((name.to_string(), unquote(value)))
            })
            .collect();
        KConfig { values }
    }

    /// Read and parse the `.config` at `path`.
    pub fn load(path: &Path) -> Result<KConfig> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(KConfig::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::env("not found").at(path).hint(NOT_PREPARED))
            }
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    /// The value of `name` (e.g. `"CONFIG_SMP"`), string values without their quotes.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// True when `name` is `y` or `m`.
    pub fn enabled(&self, name: &str) -> bool {
        matches!(self.get(name), Some("y" | "m"))
    }

    /// True when `name` is `y` (built in).
    pub fn builtin(&self, name: &str) -> bool {
        self.get(name) == Some("y")
    }

    /// The kernel's ARCH name for this configuration (`x86`, `arm`, `arm64`, ...), from the
    /// architecture's own top-level symbol. `None` for an architecture kmx does not know.
    pub fn kernel_arch(&self) -> Option<&'static str> {
        const ARCHES: &[(&str, &str)] = &[
            ("CONFIG_X86", "x86"),
            ("CONFIG_ARM64", "arm64"),
            ("CONFIG_ARM", "arm"),
            ("CONFIG_PPC", "powerpc"),
            ("CONFIG_RISCV", "riscv"),
            ("CONFIG_MIPS", "mips"),
            ("CONFIG_S390", "s390"),
            ("CONFIG_LOONGARCH", "loongarch"),
            ("CONFIG_SUPERH", "sh"),
            ("CONFIG_IA64", "ia64"),
        ];
        ARCHES
            .iter()
            .find(|(symbol, _)| self.builtin(symbol))
            .map(|&(_, arch)| arch)
    }
}

/// Strip kconfig's quotes and `\"` / `\\` escapes from a string value; other values as is.
fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return value.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "#\n# Automatically generated file; DO NOT EDIT.\n\nCONFIG_SMP=y\nCONFIG_EXT4_FS=m\n# CONFIG_MODULE_SIG_FORCE is not set\nCONFIG_MODULE_SIG_HASH=\"sha256\"\nCONFIG_CC_VERSION_TEXT=\"gcc \\\"x\\\" 12\"\nCONFIG_NR_CPUS=8192\nCONFIG_X86=y\n";

    #[test]
    fn values_flags_and_strings() {
        let c = KConfig::parse(TEXT);
        assert_eq!(c.get("CONFIG_MODULE_SIG_HASH"), Some("sha256"));
        assert_eq!(c.get("CONFIG_CC_VERSION_TEXT"), Some("gcc \"x\" 12"));
        assert_eq!(c.get("CONFIG_NR_CPUS"), Some("8192"));
        assert_eq!(c.get("CONFIG_MODULE_SIG_FORCE"), None);
        assert!(c.enabled("CONFIG_EXT4_FS") && !c.builtin("CONFIG_EXT4_FS"));
        assert!(c.enabled("CONFIG_SMP") && c.builtin("CONFIG_SMP"));
        assert!(!c.enabled("CONFIG_MODULE_SIG_FORCE"));
        assert_eq!(c.kernel_arch(), Some("x86"));
    }

    #[test]
    fn missing_file_names_it_and_says_what_to_do() {
        let e = KConfig::load(Path::new("/nonexistent/kdir/.config")).unwrap_err();
        assert_eq!(
            crate::error::render(&e),
            format!("error: /nonexistent/kdir/.config: not found\n  hint: {NOT_PREPARED}")
        );
    }
}

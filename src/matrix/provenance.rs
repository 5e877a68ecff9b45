//! Provenance: what went into a cell and what came out, as a record anyone can check.
//!
//! [`Inputs`] are everything the cell's fingerprint covers (see [`super::fingerprint`]), kept
//! readable: the source tree's digest, the kernel tree's identity, the compiler and its
//! version, the make line and variables, the environment that reaches the build, the
//! manifest as evaluated, the dependencies' fingerprints. The fingerprint is the hash of
//! exactly these. A finished cell's directory holds `provenance.json` ([`Provenance`]: the
//! inputs and the sha256 of every output), and the report carries it per cell;
//! `kmx provenance check` rebuilds a cell from it and says whether the bytes match.
//!
//! Paths that differ between two builds of the same inputs (the output directory, the
//! source's location) are recorded for the reader but are not inputs: a cell builds at the
//! same paths inside its namespace wherever they are on the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Fingerprint, sha256};
use crate::error::{Error, Result};

/// The provenance format and its version (`docs/schemas/kmx.provenance-1.json`): the
/// version is bumped when a field changes meaning. Records written before the format was
/// named say `"schema": 1`, the same format.
pub const SCHEMA: &str = "kmx.provenance/1";

/// The name of the record in a cell's directory.
pub const FILE: &str = "provenance.json";

/// Environment variables that reach every build step and can change what it produces.
pub const ENVIRONMENT: &[&str] = &[
    "SOURCE_DATE_EPOCH",
    "KBUILD_BUILD_TIMESTAMP",
    "KBUILD_BUILD_USER",
    "KBUILD_BUILD_HOST",
];

/// What decides a cell's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    pub source: SourceInput,
    pub kernel: KernelInput,
    /// The toolchain's target triple.
    pub toolchain: String,
    pub compiler: CompilerInput,
    /// The make command line, with the cell's directories as `<work>` and `<source>`.
    pub make: String,
    /// The variables kmx gives every make (ARCH, CROSS_COMPILE, CC, KERNELRELEASE, ...).
    pub vars: BTreeMap<String, String>,
    /// The variables of [`ENVIRONMENT`] that were set.
    pub environment: BTreeMap<String, String>,
    /// sha256 of the manifest as evaluated for this cell (every directive and default).
    pub manifest_sha256: String,
    /// Whether the cell built in its private namespace (at DKMS's fixed paths).
    pub namespace: bool,
    /// The cells it was built after (BUILD_DEPENDS), by module and fingerprint.
    pub dependencies: Vec<Dependency>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInput {
    /// Where the source was (for the reader; not an input).
    pub dir: PathBuf,
    /// Every file's relative path, mode and bytes, hashed ([`crate::digest::source_tree`]).
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInput {
    pub release: String,
    pub vermagic: String,
    /// Where the tree was (for the reader; not an input).
    pub kdir: PathBuf,
    /// The tree's identity: `.config`, `Module.symvers`, Makefile, host tools
    /// ([`super::fingerprint::kernel_tree`]).
    pub identity: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompilerInput {
    pub path: PathBuf,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub module: String,
    pub fingerprint: String,
}

impl Inputs {
    /// The cell's fingerprint: one hash over every input (and kmx's version).
    pub fn fingerprint(&self) -> String {
        let mut fp = Fingerprint::new();
        fp.field("source", self.source.sha256.as_bytes())
            .field("manifest", self.manifest_sha256.as_bytes())
            .field("tree", self.kernel.identity.as_bytes())
            .field("toolchain", self.toolchain.as_bytes())
            .field("compiler", self.compiler.path.to_string_lossy().as_bytes())
            .field("compiler-version", self.compiler.version.as_bytes())
            .field("make", self.make.as_bytes())
            .field("namespace", [u8::from(self.namespace)].as_slice());
        for (k, v) in self.vars.iter().chain(&self.environment) {
            fp.field(k, v.as_bytes());
        }
        for d in &self.dependencies {
            fp.field("dep", d.fingerprint.as_bytes());
        }
        fp.finish()
    }
}

/// The environment of [`ENVIRONMENT`] as this process has it.
pub fn environment() -> BTreeMap<String, String> {
    ENVIRONMENT
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// sha256 of a manifest's text form.
pub fn manifest_digest(text: &str) -> String {
    sha256(text.as_bytes())
}

/// `provenance.json`: one cell's inputs and outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// [`SCHEMA`].
    pub schema: String,
    /// The kmx that built it.
    pub kmx: String,
    pub module: String,
    pub version: String,
    pub target: String,
    pub kernel: String,
    pub fingerprint: String,
    pub inputs: Inputs,
    /// Every module the cell produced, by file name, with its sha256.
    pub outputs: Vec<Output>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub file: String,
    pub sha256: String,
}

impl Provenance {
    /// Read a record, refusing another schema.
    pub fn load(path: &Path) -> Result<Provenance> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        let not_a_record = |why: String| {
            Error::config(path, format!("not a kmx provenance record: {why}"))
                .hint("give the provenance.json of a built cell (OUT/<module>/<version>/<kernel>/<target>/)")
        };
        let mut record: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| not_a_record(e.to_string()))?;
        if record.get("schema").is_none() {
            return Err(not_a_record("no `schema` field".into()));
        }
        // `1`: the same format, written before it was named.
        if record["schema"] == 1 {
            record["schema"] = SCHEMA.into();
        }
        if record["schema"] != SCHEMA {
            return Err(Error::config(
                path,
                format!(
                    "provenance schema {} (this kmx reads {SCHEMA})",
                    record["schema"]
                ),
            )
            .hint("check it with the kmx version that wrote it (its `kmx` field)"));
        }
        serde_json::from_value(record)
            .map_err(|e| Error::config(path, format!("cannot read this provenance record: {e}")))
    }

    /// Write it into `dir`, atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::env(format!("cannot serialize {FILE}: {e}")))?;
        crate::state::write_atomic(&dir.join(FILE), &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            source: SourceInput {
                dir: "/src/hello".into(),
                sha256: "aa".into(),
            },
            kernel: KernelInput {
                release: "6.1.0-50-arm64".into(),
                vermagic: "6.1.0-50-arm64 SMP mod_unload modversions aarch64".into(),
                kdir: "/trees/arm64".into(),
                identity: "bb".into(),
            },
            toolchain: "aarch64-unknown-linux-gnu".into(),
            compiler: CompilerInput {
                path: "/usr/bin/aarch64-linux-gnu-gcc-12".into(),
                version: "gcc 12.2.0".into(),
            },
            make: "make -C <kdir> M=<work> modules".into(),
            vars: BTreeMap::from([("ARCH".into(), "arm64".into())]),
            environment: BTreeMap::new(),
            manifest_sha256: "cc".into(),
            namespace: true,
            dependencies: Vec::new(),
        }
    }

    #[test]
    fn the_fingerprint_follows_inputs_but_not_locations() {
        let a = inputs();
        let mut moved = a.clone();
        moved.source.dir = "/elsewhere/hello".into();
        moved.kernel.kdir = "/other/home/trees/arm64".into();
        assert_eq!(a.fingerprint(), moved.fingerprint());
        let mut dated = a.clone();
        dated
            .environment
            .insert("SOURCE_DATE_EPOCH".into(), "1700000000".into());
        assert_ne!(a.fingerprint(), dated.fingerprint());
        let mut other = a.clone();
        other.source.sha256 = "ab".into();
        assert_ne!(a.fingerprint(), other.fingerprint());
    }

    #[test]
    fn another_schema_is_refused_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(FILE);
        std::fs::write(&path, r#"{"schema": 9}"#).unwrap();
        let err = Provenance::load(&path).expect_err("schema 9");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: provenance schema 9 (this kmx reads kmx.provenance/1)",
                path.display()
            )
        );
        // A record written before the format was named (`"schema": 1`) is this format.
        let record = Provenance {
            schema: SCHEMA.into(),
            kmx: "0.1.0".into(),
            module: "hello".into(),
            version: "1.0".into(),
            target: "arm64".into(),
            kernel: "6.1.0-50-arm64".into(),
            fingerprint: inputs().fingerprint(),
            inputs: inputs(),
            outputs: Vec::new(),
        };
        record.write(tmp.path()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""schema": "kmx.provenance/1""#), "{text}");
        let legacy = text.replace(r#""schema": "kmx.provenance/1""#, r#""schema": 1"#);
        std::fs::write(&path, legacy).unwrap();
        assert_eq!(Provenance::load(&path).unwrap(), record);
        std::fs::write(&path, "not json").unwrap();
        let err = Provenance::load(&path).expect_err("garbage");
        assert!(
            err.to_string().contains("not a kmx provenance record"),
            "{err}"
        );
    }
}

//! Verification: the one module reader (ELF header, `.modinfo`, `__versions`, signature) and
//! the checks that say whether a module will load on a kernel.

pub mod built;
pub mod certs;
pub mod checks;
pub mod compat;
pub mod decompress;
pub mod memo;
pub mod module;
pub mod signing;

pub use checks::{Check, CheckKind, Status};
pub use decompress::Compression;
pub use module::{Module, ReadError, Signature, SymbolVersion, VersionsFormat};

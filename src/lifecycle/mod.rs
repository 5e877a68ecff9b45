//! The lifecycle's domain, DKMS's words (`add`, `install`, `status`, ...) over kmx's state
//! store: [`prepare`] makes registered modules ready to install (building what is missing or
//! stale), [`status`] reads the store into status lines. The commands in
//! `src/commands/lifecycle.rs` parse, lock, call these and [`crate::install`], and print.

pub mod prepare;
pub mod status;

//! kmx's home directory and the stores kept in it. Every write is atomic
//! ([`home::write_atomic`]).

pub mod cache;
pub mod home;

pub use home::{Home, write_atomic};

//! kmx's home directory and the stores kept in it: the lifecycle store ([`store`]) of
//! registered sources, built cells and installs. Every write is atomic
//! ([`home::write_atomic`]).

pub mod cache;
pub mod durations;
pub mod home;
pub mod store;
pub mod tmp;

pub use home::{Home, replace_dir, write_atomic, write_atomic_mode};
pub use store::Store;

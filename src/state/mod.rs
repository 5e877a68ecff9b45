//! kmx's home directory and the stores kept in it.

//! The command line: clap derive only, no I/O.

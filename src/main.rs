//! The kmx binary: parse the command line, run, print errors, exit with the right code.
//! Everything else lives in the library.

// Reading thousands of modules in parallel makes many small, short-lived allocations;
// mimalloc's thread-local free lists serve them without glibc malloc's locking.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // The run's clock: the summary's time covers planning too.
    kmx::matrix::pipeline::run_started();
    // Before anything opens a file: the descriptors MAKEFLAGS names are still make's.
    kmx::matrix::jobserver::capture_from_env();
    let cli = kmx::cli::parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let code = match kmx::commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("{}", kmx::error::render(&err));
            err.code()
        }
    };
    std::process::exit(code);
}

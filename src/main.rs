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
    // Asked for JSON (`--json`, `--message-format json`): an error is a JSON document on
    // stdout too (`kmx.error/1`), for the program reading it.
    // (args_os: an argument that is not UTF-8, a path, must not make this panic.)
    let json = std::env::args_os().collect::<Vec<_>>().windows(2).any(|w| {
        w[1] == "--json"
            || w[1] == "--message-format=json"
            || (w[0] == "--message-format" && w[1] == "json")
    });
    let code = match kmx::commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("{}", kmx::error::render(&err));
            if json {
                let doc = serde_json::json!({
                    "schema": "kmx.error/1",
                    "error": kmx::error::Problem::from(&err),
                    "exit_code": err.code(),
                });
                println!("{doc}");
            }
            err.code()
        }
    };
    std::process::exit(code);
}

//! The `fila` command. See `fila --help` and the README.

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: fila_pipeline::cli::MiMalloc = fila_pipeline::cli::MiMalloc;

fn main() -> ExitCode {
    fila_pipeline::cli::main()
}

//! The `bifs` binary: the command line (clap, progress bars, exit codes). The engine lives in
//! the library, which the tests and fuzz targets link without any of this.
#![deny(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

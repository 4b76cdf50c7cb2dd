//! The `bifs` binary: the command line (clap, progress bars, exit codes). The engine lives in
//! the workspace's crates (`crates/`), which the tests and fuzz targets link without any of
//! this.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

//! The `sagefed` binary: the command line and the commands that only the binary has (`up`,
//! its seed scenarios, `bench`). Everything else is the `sage_federation` library.

mod bench;
mod cli;
mod demo;
mod up;

fn main() -> std::process::ExitCode {
    cli::main()
}

fn main() -> std::process::ExitCode {
    sage_federation::cli::main()
}

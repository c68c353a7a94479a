fn main() -> std::process::ExitCode {
    picie::cli::main()
}

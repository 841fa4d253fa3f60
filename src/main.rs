//! The `wgbroker` binary: parse the command line, run the command, exit with its code.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    wgbroker::cli::main()
}

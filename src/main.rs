//! The `wgbroker` binary: parse the command line, run the command, exit with its code.

/// mimalloc, with large blocks (tunnel socket buffers) in their own page mappings so that their
/// untouched pages cost nothing and freed ones go back to the kernel at once (see the module).
#[global_allocator]
static GLOBAL: wgbroker::runtime::alloc::BrokerAlloc = wgbroker::runtime::alloc::BrokerAlloc;

fn main() -> std::process::ExitCode {
    wgbroker::cli::main()
}

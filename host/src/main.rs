//! The `concord` command: runs a node and talks to one.

mod cli;

// The request path allocates many small, short-lived buffers on several
// threads; mimalloc's thread-local free lists beat glibc's arenas there
// (measured in docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}

//! The `concord` command: runs a node and talks to one.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

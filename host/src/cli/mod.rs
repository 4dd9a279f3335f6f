//! The `concord` command line.
//!
//! Every client command takes `--endpoint HOST:PORT` (or `CONCORD_ENDPOINT`),
//! prints results for people by default and as JSON with `--json`, and on
//! failure prints one line to stderr and exits non-zero.

mod bench;
mod bucket;
mod cluster;
mod dev;
mod floor;
mod kv;
mod output;
mod plugin;
mod scaffold;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Default endpoint of client commands.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:7379";

#[derive(Parser)]
#[command(
    name = "concord",
    version,
    about = "Concord: a Dynamo-style key-value store with WebAssembly conflict resolvers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a client command connects.
#[derive(clap::Args, Clone)]
pub struct Target {
    /// Node to talk to (any node serves any key).
    #[arg(long, env = "CONCORD_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Print JSON for scripts instead of text for people.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve(serve::ServeArgs),
    /// Run a local cluster of several nodes, to try things out.
    Dev(dev::DevArgs),
    /// Write a value.
    Put(kv::PutArgs),
    /// Read a key: every sibling and the context to write back with.
    Get(kv::GetArgs),
    /// Delete a key (writes a tombstone).
    Delete(kv::DeleteArgs),
    /// Show or change bucket properties.
    #[command(subcommand)]
    Bucket(bucket::BucketCommand),
    /// Cluster membership.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Deploy, list, test and verify WebAssembly plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Load-test a running cluster with YCSB-style workloads.
    Bench(bench::BenchArgs),
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_) | Command::Dev(_)) {
        // Like other command-line tools, end quietly when the reader of our
        // output goes away (`concord get ... | head -1`) instead of
        // panicking. Not for servers: a client hanging up on a socket must
        // never kill the node.
        #[cfg(unix)]
        // SAFETY: sets a signal disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Dev(args) => dev::run(args),
        Command::Bench(args) => bench::runtime(&args).and_then(|rt| rt.block_on(bench::run(args))),
        command => client_runtime().and_then(|rt| {
            rt.block_on(async move {
                match command {
                    Command::Put(a) => kv::put(a).await,
                    Command::Get(a) => kv::get(a).await,
                    Command::Delete(a) => kv::delete(a).await,
                    Command::Bucket(c) => bucket::run(c).await,
                    Command::Cluster(c) => cluster::run(c).await,
                    Command::Plugin(c) => plugin::run(c).await,
                    Command::Serve(_) | Command::Dev(_) | Command::Bench(_) => unreachable!("handled above"),
                }
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Connects to the endpoint of a client command.
pub async fn connect(target: &Target) -> anyhow::Result<concord_client::Client> {
    Ok(concord_client::Client::connect(&target.endpoint).await?)
}

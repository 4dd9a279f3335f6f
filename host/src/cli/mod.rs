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
    #[command(flatten)]
    pub access: Access,
    /// Send the request straight to a replica of its key (token-aware),
    /// instead of letting the node forward it. It first fetches the ring,
    /// so for one request it saves nothing; `concord bench` does it by
    /// default.
    #[arg(long)]
    pub token_aware: bool,
}

/// How a client command proves itself to nodes that ask.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Access {
    /// Bearer token for nodes that require one.
    #[arg(long, env = "CONCORD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) of a node that serves TLS; connects over TLS.
    #[arg(long, env = "CONCORD_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
}

impl Access {
    /// The client's connection options.
    pub fn options(&self) -> anyhow::Result<concord_client::ConnectOptions> {
        let tls_ca_pem = match &self.tls_ca {
            Some(p) => {
                Some(std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read --tls-ca {}: {e}", p.display()))?)
            }
            None => None,
        };
        Ok(concord_client::ConnectOptions {
            token: self.token.clone(),
            tls_ca_pem,
            tls_domain: None,
            token_aware: false,
        })
    }
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
    /// Client tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a random client token: prints the token (give it to the
    /// client) and the entry to add under [[security.tokens]] on every
    /// node (it holds only the token's SHA-256).
    New {
        /// A name for logs and errors.
        #[arg(long)]
        name: String,
        /// Roles, comma separated: read (Get), write (Put, Delete), admin
        /// (buckets, plugins, cluster).
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
    },
}

fn new_token(name: &str, roles: &[String]) -> anyhow::Result<()> {
    if name.is_empty() || name.chars().any(|c| c == '"' || c.is_control()) {
        anyhow::bail!("--name must be non-empty, without quotes or control characters");
    }
    let roles = roles
        .iter()
        .map(|r| match r.trim() {
            "read" => Ok(concord::security::Role::Read),
            "write" => Ok(concord::security::Role::Write),
            "admin" => Ok(concord::security::Role::Admin),
            other => Err(anyhow::anyhow!("unknown role {other:?}; roles are read, write and admin")),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (token, entry) = concord::security::new_token(name, roles);
    let roles: Vec<String> = entry.roles.iter().map(|r| format!("{:?}", format!("{r:?}").to_lowercase())).collect();
    println!("token (give this to the client; it is not stored anywhere):\n  {token}\n");
    println!("add to every node's configuration:\n");
    println!(
        "[[security.tokens]]\nname = {:?}\nroles = [{}]\nsha256 = {:?}",
        entry.name,
        roles.join(", "),
        entry.sha256
    );
    Ok(())
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
        Command::Token(TokenCommand::New { name, roles }) => new_token(&name, &roles),
        command => client_runtime().and_then(|rt| {
            rt.block_on(async move {
                match command {
                    Command::Put(a) => kv::put(a).await,
                    Command::Get(a) => kv::get(a).await,
                    Command::Delete(a) => kv::delete(a).await,
                    Command::Bucket(c) => bucket::run(c).await,
                    Command::Cluster(c) => cluster::run(c).await,
                    Command::Plugin(c) => plugin::run(c).await,
                    Command::Serve(_) | Command::Dev(_) | Command::Bench(_) | Command::Token(_) => {
                        unreachable!("handled above")
                    }
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
    let options = concord_client::ConnectOptions { token_aware: target.token_aware, ..target.access.options()? };
    Ok(concord_client::Client::connect_with(&target.endpoint, &options).await?)
}

//! `concord bucket set | get | list`.

use concord_client::{BucketProps, SetBucketRequest};
use concord_proto::v1 as pb;
use serde_json::json;

use super::{Target, connect};

#[derive(clap::Subcommand)]
pub enum BucketCommand {
    /// Change properties; those not named stay as they are.
    Set(SetArgs),
    /// Show a bucket's properties (defaults if never set).
    Get {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// List configured buckets.
    List {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum When {
    Read,
    Write,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum OnFailure {
    Reject,
    Accept,
}

#[derive(clap::Args)]
pub struct SetArgs {
    name: String,
    /// Replicas per key.
    #[arg(long)]
    n: Option<u32>,
    /// Replicas a read waits for (0: majority of n).
    #[arg(long)]
    r: Option<u32>,
    /// Replicas a write waits for (0: majority of n).
    #[arg(long)]
    w: Option<u32>,
    /// Largest key + value in bytes.
    #[arg(long)]
    max_object_bytes: Option<u32>,
    /// Most siblings per key before a write must resolve them.
    #[arg(long)]
    max_siblings: Option<u32>,
    /// Resolver plugin NAME@VERSION ("" to clear).
    #[arg(long)]
    resolver: Option<String>,
    /// Shadow resolver NAME@VERSION, compared but never applied ("" to clear).
    #[arg(long)]
    shadow_resolver: Option<String>,
    /// Validator NAME@VERSION; repeat for several, in order.
    #[arg(long = "validator")]
    validators: Vec<String>,
    /// Remove every validator.
    #[arg(long, conflicts_with = "validators")]
    clear_validators: bool,
    /// When the resolver runs.
    #[arg(long, value_enum)]
    resolve_on: Option<When>,
    /// What a failing validator means for a write.
    #[arg(long, value_enum)]
    validator_failure: Option<OnFailure>,
    /// Let fallback nodes stand in for unreachable replicas (sloppy quorum):
    /// true or false.
    #[arg(long)]
    sloppy: Option<bool>,
    #[command(flatten)]
    target: Target,
}

pub async fn run(cmd: BucketCommand) -> anyhow::Result<()> {
    match cmd {
        BucketCommand::Set(a) => {
            let client = connect(&a.target).await?;
            let validators = if a.clear_validators {
                Some(pb::ValidatorList { validators: Vec::new() })
            } else if a.validators.is_empty() {
                None
            } else {
                Some(pb::ValidatorList { validators: a.validators })
            };
            let req = SetBucketRequest {
                name: a.name,
                n: a.n,
                r: a.r,
                w: a.w,
                max_object_bytes: a.max_object_bytes,
                max_siblings: a.max_siblings,
                resolver: a.resolver,
                shadow_resolver: a.shadow_resolver,
                validators,
                resolve_on: a.resolve_on.map(|w| match w {
                    When::Read => pb::ResolveOn::Read as i32,
                    When::Write => pb::ResolveOn::Write as i32,
                }),
                validator_failure: a.validator_failure.map(|f| match f {
                    OnFailure::Reject => pb::ValidatorFailure::Reject as i32,
                    OnFailure::Accept => pb::ValidatorFailure::Accept as i32,
                }),
                sloppy: a.sloppy,
            };
            print(&client.set_bucket(req).await?, a.target.json);
        }
        BucketCommand::Get { name, target } => {
            print(&connect(&target).await?.get_bucket(&name).await?, target.json);
        }
        BucketCommand::List { target } => {
            let buckets = connect(&target).await?.list_buckets().await?;
            if target.json {
                println!("{}", serde_json::Value::Array(buckets.iter().map(props_json).collect()));
            } else if buckets.is_empty() {
                println!("no configured buckets (every bucket uses the defaults)");
            } else {
                for b in &buckets {
                    print(b, false);
                }
            }
        }
    }
    Ok(())
}

fn props_json(p: &BucketProps) -> serde_json::Value {
    json!({
        "name": p.name,
        "n": p.n, "r": p.r, "w": p.w,
        "max_object_bytes": p.max_object_bytes,
        "max_siblings": p.max_siblings,
        "resolver": p.resolver,
        "shadow_resolver": p.shadow_resolver,
        "validators": p.validators,
        "resolve_on": if p.resolve_on == pb::ResolveOn::Write as i32 { "write" } else { "read" },
        "validator_failure": if p.validator_failure == pb::ValidatorFailure::Accept as i32 { "accept" } else { "reject" },
        "sloppy": p.sloppy,
        "configured": p.configured,
        "version": p.version,
    })
}

fn print(p: &BucketProps, as_json: bool) {
    if as_json {
        println!("{}", props_json(p));
        return;
    }
    let j = props_json(p);
    let none = |s: &str| if s.is_empty() { "none".to_owned() } else { s.to_owned() };
    println!("{}{}", p.name, if p.configured { "" } else { " (defaults)" });
    println!(
        "  n={} r={} w={} sloppy={}  max_object_bytes={} max_siblings={}",
        p.n, p.r, p.w, p.sloppy, p.max_object_bytes, p.max_siblings
    );
    println!(
        "  resolver={} shadow_resolver={} resolve_on={}",
        none(&p.resolver),
        none(&p.shadow_resolver),
        j["resolve_on"].as_str().unwrap_or_default()
    );
    println!(
        "  validators=[{}] validator_failure={}  version={}",
        p.validators.join(", "),
        j["validator_failure"].as_str().unwrap_or_default(),
        p.version
    );
}

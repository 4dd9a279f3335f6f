//! `concord put | get | delete`.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use concord_client::{Consistency, Context, ReadOptions, WriteOptions};
use serde_json::json;

use super::output::{show_bytes, show_time, sibling_json};
use super::{Target, connect};

/// A consistency level on the command line.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Level {
    One,
    Quorum,
    All,
    LocalQuorum,
}

impl From<Level> for Consistency {
    fn from(l: Level) -> Self {
        match l {
            Level::One => Consistency::One,
            Level::Quorum => Consistency::Quorum,
            Level::All => Consistency::All,
            Level::LocalQuorum => Consistency::LocalQuorum,
        }
    }
}

#[derive(clap::Args)]
pub struct PutArgs {
    bucket: String,
    key: String,
    /// The value; `-` reads standard input. A negative number is a value
    /// (`put b k -4000`); another value that starts with `-` goes after
    /// `--` (`put b k -- -x`).
    #[arg(required_unless_present = "file", conflicts_with = "file", allow_negative_numbers = true)]
    value: Option<String>,
    /// Read the value from a file.
    #[arg(long)]
    file: Option<PathBuf>,
    #[command(flatten)]
    write: WriteFlags,
    /// Print the siblings after the write.
    #[arg(long)]
    return_body: bool,
    #[command(flatten)]
    target: Target,
}

/// What put and delete share: the context and the write quorum.
#[derive(clap::Args)]
pub struct WriteFlags {
    /// Context token from a previous get: the write replaces the siblings it covers.
    #[arg(long)]
    context: Option<String>,
    /// Replicas that must acknowledge.
    #[arg(long, conflicts_with = "consistency")]
    w: Option<u32>,
    /// Named consistency level.
    #[arg(long, value_enum)]
    consistency: Option<Level>,
    /// Of the acknowledgements, how many must come from the key's own
    /// replicas (fallbacks never count).
    #[arg(long)]
    pw: Option<u32>,
    /// Let fallbacks stand in for replicas that are down (true or false;
    /// default: the bucket's setting).
    #[arg(long)]
    sloppy: Option<bool>,
}

#[derive(clap::Args)]
pub struct GetArgs {
    bucket: String,
    key: String,
    /// Replicas that must answer.
    #[arg(long, conflicts_with = "consistency")]
    r: Option<u32>,
    /// Named consistency level.
    #[arg(long, value_enum)]
    consistency: Option<Level>,
    /// Of the answers, how many must come from the key's own replicas.
    #[arg(long)]
    pr: Option<u32>,
    /// Let fallbacks answer for replicas that are down (true or false;
    /// default: the bucket's setting).
    #[arg(long)]
    sloppy: Option<bool>,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args)]
pub struct DeleteArgs {
    bucket: String,
    key: String,
    #[command(flatten)]
    write: WriteFlags,
    #[command(flatten)]
    target: Target,
}

fn context(token: Option<&str>) -> anyhow::Result<Context> {
    Ok(match token {
        Some(t) => Context::from_base64(t)?,
        None => Context::none(),
    })
}

impl WriteFlags {
    fn context(&self) -> anyhow::Result<Context> {
        context(self.context.as_deref())
    }

    fn options(&self, return_body: bool) -> WriteOptions {
        WriteOptions {
            w: self.w.unwrap_or(0),
            consistency: self.consistency.map(Into::into).unwrap_or_default(),
            pw: self.pw.unwrap_or(0),
            sloppy: self.sloppy,
            return_body,
            ..Default::default()
        }
    }
}

fn read_value(args: &PutArgs) -> anyhow::Result<Vec<u8>> {
    if let Some(path) = &args.file {
        return std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
    }
    match args.value.as_deref() {
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("cannot read standard input")?;
            Ok(buf)
        }
        Some(v) => Ok(v.as_bytes().to_vec()),
        None => bail!("give a VALUE, --file FILE, or - for standard input"),
    }
}

pub async fn put(args: PutArgs) -> anyhow::Result<()> {
    let value = read_value(&args)?;
    let ctx = args.write.context()?;
    let client = connect(&args.target).await?;
    let opts = args.write.options(args.return_body);
    let r = client.put_with(&args.bucket, args.key.as_bytes(), &value, &ctx, opts).await?;
    if args.target.json {
        println!(
            "{}",
            json!({
                "context": r.context.to_base64(),
                "sibling_count": r.sibling_count,
                "siblings": r.siblings.iter().map(sibling_json).collect::<Vec<_>>(),
                "acked_by": r.acked_by,
                "sloppy": r.sloppy,
                "fallbacks": fallbacks_json(&r.fallbacks),
                "resolved_by": r.resolved_by,
                "validated_by": r.validated_by,
            })
        );
    } else {
        println!("ok: {} sibling(s), acked by {}", r.sibling_count, acks(&r));
        for (i, s) in r.siblings.iter().enumerate() {
            print_sibling(i, s);
        }
        if let Some(by) = &r.resolved_by {
            println!("resolved by {by}");
        }
        println!("context: {}", r.context.to_base64());
    }
    Ok(())
}

/// `n1, n4 (fallback for n2)`.
fn acks(r: &concord_client::WriteResult) -> String {
    r.acked_by
        .iter()
        .map(|n| match r.fallbacks.iter().find(|(f, _)| f == n) {
            Some((_, replica)) => format!("{n} (fallback for {replica})"),
            None => n.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn fallbacks_json(f: &[(String, String)]) -> serde_json::Value {
    f.iter().map(|(node, replica)| json!({"node": node, "replica": replica})).collect()
}

fn print_sibling(i: usize, s: &concord_client::Sibling) {
    let what = if s.deleted { "(deleted)".to_owned() } else { show_bytes(&s.value) };
    println!("[{}] {what}", i + 1);
    println!("    written {} by {}", show_time(s.written_at_ms), s.writer);
}

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let client = connect(&args.target).await?;
    let opts = ReadOptions {
        r: args.r.unwrap_or(0),
        consistency: args.consistency.map(Into::into).unwrap_or_default(),
        pr: args.pr.unwrap_or(0),
        sloppy: args.sloppy,
        ..Default::default()
    };
    let r = client.get_with(&args.bucket, args.key.as_bytes(), opts).await?;
    if args.target.json {
        println!(
            "{}",
            json!({
                "found": r.found,
                "siblings": r.siblings.iter().map(sibling_json).collect::<Vec<_>>(),
                "context": r.context.to_base64(),
                "resolved_by": r.resolved_by,
                "replicas": r.replicas,
                "unresolved": r.unresolved.as_ref().map(|u| json!({
                    "plugin": u.plugin, "reason": u.reason, "message": u.message, "breaker_open": u.breaker_open,
                })),
            })
        );
        return Ok(());
    }
    if !r.found {
        println!("not found");
    } else if r.siblings.len() == 1 {
        println!("found");
    } else {
        println!("found {} siblings (concurrent writes; write back with the context to merge them)", r.siblings.len());
    }
    for (i, s) in r.siblings.iter().enumerate() {
        print_sibling(i, s);
    }
    if let Some(by) = &r.resolved_by {
        println!("resolved by {by}");
    }
    if let Some(u) = &r.unresolved {
        let breaker =
            if u.breaker_open { "; it is switched off for this bucket (rebind it to switch it back on)" } else { "" };
        println!("not resolved: {} {}: {}{breaker}", u.plugin, u.reason, u.message);
    }
    if !r.context.is_empty() {
        println!("context: {}", r.context.to_base64());
    }
    Ok(())
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let ctx = args.write.context()?;
    let client = connect(&args.target).await?;
    let opts = args.write.options(false);
    let r = client.delete_with(&args.bucket, args.key.as_bytes(), &ctx, opts).await?;
    if args.target.json {
        println!(
            "{}",
            json!({
                "context": r.context.to_base64(),
                "acked_by": r.acked_by,
                "sloppy": r.sloppy,
                "fallbacks": fallbacks_json(&r.fallbacks),
                "siblings": r.siblings.iter().map(sibling_json).collect::<Vec<_>>(),
            })
        );
    } else {
        println!("deleted, acked by {}", acks(&r));
        if !r.siblings.is_empty() {
            println!("concurrent writes remain beside the tombstone:");
        }
        for (i, s) in r.siblings.iter().enumerate() {
            print_sibling(i, s);
        }
        println!("context: {}", r.context.to_base64());
    }
    Ok(())
}

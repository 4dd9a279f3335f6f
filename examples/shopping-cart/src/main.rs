//! `shopping-cart --plugin cart.wasm [--endpoint HOST:PORT]`: see the crate docs.

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The cart resolver, built from plugins/cart.
    #[arg(long)]
    plugin: std::path::PathBuf,
    /// A Concord node.
    #[arg(long, env = "CONCORD_ENDPOINT", default_value = "127.0.0.1:7379")]
    endpoint: String,
    /// Whose cart.
    #[arg(long, default_value = "alice")]
    shopper: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let wasm = std::fs::read(&args.plugin)?;
    shopping_cart_example::reset(&args.endpoint, &args.shopper).await?;
    let out = shopping_cart_example::run(&args.endpoint, &wasm, &args.shopper).await?;
    println!("two sessions added items concurrently; the cart had {} siblings", out.siblings_before);
    println!("merged by {}:", out.resolved_by.as_deref().unwrap_or("nobody"));
    for (item, qty) in &out.items {
        println!("  {item} x{qty}");
    }
    Ok(())
}

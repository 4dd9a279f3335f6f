//! The Dynamo paper's shopping cart, on Concord.
//!
//! Two sessions of the same shopper (a phone and a laptop, say) read the
//! cart at the same moment, each add an item, and each write their copy
//! back with the context they read. Neither saw the other's write, so the
//! cart now has two siblings. The bucket's `cart` resolver (a WebAssembly
//! plugin) merges them: the shopper's next read sees both items, and no
//! "add to cart" is lost.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use concord_client::{Client, ClientError, SetBucketRequest};
use concord_proto::v1 as pb;
use serde_json::{Value, json};

/// Bucket the example uses.
pub const BUCKET: &str = "shopping-carts";

/// What the example ended with.
#[derive(Debug)]
pub struct Outcome {
    /// Items in the merged cart.
    pub items: BTreeMap<String, u64>,
    /// Siblings the cart had before it was resolved.
    pub siblings_before: usize,
    /// The plugin that merged them.
    pub resolved_by: Option<String>,
}

fn cart_items(value: &[u8]) -> anyhow::Result<BTreeMap<String, u64>> {
    let v: Value = serde_json::from_slice(value).context("a cart is JSON")?;
    let items = v["items"].as_object().context("a cart has items")?;
    Ok(items.iter().map(|(k, q)| (k.clone(), q.as_u64().unwrap_or(0))).collect())
}

/// One session: read the cart, add `item`, write it back.
async fn add_item(client: &Client, shopper: &str, read: &concord_client::GetResult, item: &str) -> anyhow::Result<u32> {
    let mut items = match read.values().first() {
        Some(v) => cart_items(v)?,
        None => BTreeMap::new(),
    };
    *items.entry(item.to_owned()).or_insert(0) += 1;
    let body = serde_json::to_vec(&json!({ "items": items }))?;
    // The write reports how many siblings the cart has afterwards.
    Ok(client.put(BUCKET, shopper.as_bytes(), &body, &read.context).await?.sibling_count)
}

/// Deploys the cart resolver from `cart_wasm` (unless already deployed),
/// binds it to the bucket, and plays two concurrent sessions for `shopper`.
pub async fn run(endpoint: &str, cart_wasm: &[u8], shopper: &str) -> anyhow::Result<Outcome> {
    let client = Client::connect(endpoint).await?;
    let deploy = pb::DeployPluginRequest {
        name: "cart".into(),
        version: "example".into(),
        wasm: cart_wasm.to_vec().into(),
        force: false,
        samples: vec![br#"{"items":{"apple":1}}"#.to_vec().into(), br#"{"items":{"pear":2}}"#.to_vec().into()],
        ..Default::default()
    };
    client.admin().deploy_plugin(deploy).await.map_err(ClientError::from).context("deploying the cart resolver")?;
    client
        .set_bucket(SetBucketRequest {
            name: BUCKET.into(),
            resolver: Some("cart@example".into()),
            ..Default::default()
        })
        .await?;

    // The shopper starts with one item in the cart.
    let start = client.get(BUCKET, shopper.as_bytes()).await?;
    add_item(&client, shopper, &start, "book").await?;

    // Both sessions read the same cart ...
    let phone = client.get(BUCKET, shopper.as_bytes()).await?;
    let laptop = client.get(BUCKET, shopper.as_bytes()).await?;
    // ... and both write back a copy with one more item, concurrently.
    let (a, b) =
        tokio::join!(add_item(&client, shopper, &phone, "headphones"), add_item(&client, shopper, &laptop, "charger"));
    let siblings_before = a?.max(b?) as usize;

    // The next read returns the carts merged by the resolver.
    let merged = client.get(BUCKET, shopper.as_bytes()).await?;
    let values = merged.values();
    let [value] = values.as_slice() else { bail!("expected one merged cart, got {} siblings", values.len()) };
    Ok(Outcome { items: cart_items(value)?, siblings_before, resolved_by: merged.resolved_by })
}

/// Starts from an empty cart for `shopper` (deletes it with its context).
pub async fn reset(endpoint: &str, shopper: &str) -> anyhow::Result<()> {
    let client = Client::connect(endpoint).await?;
    let read = client.get(BUCKET, shopper.as_bytes()).await?;
    if !read.context.is_empty() {
        client.delete(BUCKET, shopper.as_bytes(), &read.context).await?;
    }
    Ok(())
}

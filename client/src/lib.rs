//! A typed Rust client for Concord.
//!
//! ```no_run
//! # async fn demo() -> Result<(), concord_client::ClientError> {
//! use concord_client::{Client, Context};
//!
//! let client = Client::connect("127.0.0.1:7379").await?;
//! // A write without a context is concurrent with whatever is stored.
//! client.put("carts", b"alice", b"apples", &Context::none()).await?;
//! // A read returns every sibling plus a context covering them all ...
//! let read = client.get("carts", b"alice").await?;
//! let merged: Vec<u8> = read.siblings.iter().flat_map(|s| s.value.clone()).collect();
//! // ... and writing back with that context replaces exactly those siblings.
//! client.put("carts", b"alice", &merged, &read.context).await?;
//! # Ok(()) }
//! ```
//!
//! Errors come back as [`ClientError`], one variant per thing a caller may
//! want to react to; [`ClientError::SiblingLimit`] carries the siblings and
//! context needed to merge and retry.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use concord_proto::v1 as pb;
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub use concord_proto::v1::{BucketProps, ClusterStatusResponse, Consistency, PluginInfo, SetBucketRequest};
pub use route::{never_delivered, partition_of};

mod route;

/// Largest reply the client accepts.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// An opaque causal context: what a reader has seen. Pass the context of a
/// read to the next write of the same key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context(prost::bytes::Bytes);

impl Context {
    /// The empty context: a write with it is concurrent with everything.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether this is the empty context.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The raw token bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The token as URL-safe base64 (how the CLI prints it).
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.0)
    }

    /// Parses a token printed by [`Context::to_base64`].
    pub fn from_base64(s: &str) -> Result<Self, ClientError> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.trim())
            .map(|b| Self(b.into()))
            .map_err(|e| ClientError::InvalidArgument(format!("context is not valid base64: {e}")))
    }

    /// Wraps raw token bytes.
    pub fn from_bytes(b: impl Into<prost::bytes::Bytes>) -> Self {
        Self(b.into())
    }

    /// The context of a reply, in an allocation of its own: the decoded
    /// field points into the buffer the whole reply arrived in, which a
    /// caller keeping contexts (one per key, say) would otherwise keep
    /// alive, kilobytes for every few dozen bytes of token.
    fn from_reply(b: prost::bytes::Bytes) -> Self {
        Self(prost::bytes::Bytes::copy_from_slice(&b))
    }
}

/// One value of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sibling {
    /// The value (empty for a tombstone).
    pub value: Vec<u8>,
    /// Whether this is a delete's tombstone.
    pub deleted: bool,
    /// When the accepting replica took the write (informational).
    pub written_at_ms: u64,
    /// Node that accepted the write.
    pub writer: String,
}

impl From<pb::Sibling> for Sibling {
    fn from(s: pb::Sibling) -> Self {
        Self { value: s.value.to_vec(), deleted: s.deleted, written_at_ms: s.written_at_ms, writer: s.writer }
    }
}

/// The answer to a read.
#[derive(Clone, Debug)]
pub struct GetResult {
    /// True when at least one sibling holds a value.
    pub found: bool,
    /// Every sibling, tombstones included.
    pub siblings: Vec<Sibling>,
    /// Context covering all siblings; pass it to the next write.
    pub context: Context,
    /// `name@version` of the resolver that merged siblings, if any.
    pub resolved_by: Option<String>,
    /// Replicas whose answers were merged.
    pub replicas: Vec<String>,
    /// When the bucket binds a resolver but the siblings came back
    /// unresolved: which plugin and why.
    pub unresolved: Option<Unresolved>,
}

/// Why a bucket's resolver left siblings as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    /// `name@version` of the resolver.
    pub plugin: String,
    /// `timeout`, `fuel`, `memory`, `trap`, `malformed`, `oversized`,
    /// `unusable`, `switched-off`, `unavailable` or `keep-siblings`.
    pub reason: String,
    /// Details for people.
    pub message: String,
    /// Whether the plugin is switched off for the bucket.
    pub breaker_open: bool,
}

impl GetResult {
    /// Values of the live siblings.
    pub fn values(&self) -> Vec<&[u8]> {
        self.siblings.iter().filter(|s| !s.deleted).map(|s| s.value.as_slice()).collect()
    }
}

/// The answer to a put or delete.
#[derive(Clone, Debug)]
pub struct WriteResult {
    /// Context covering the new write and every sibling in `siblings`: a
    /// write with it replaces them all, so look at them first.
    pub context: Context,
    /// Siblings after the write: always when the write left more than one,
    /// otherwise only with [`WriteOptions::return_body`].
    pub siblings: Vec<Sibling>,
    /// Number of siblings after the write.
    pub sibling_count: u32,
    /// Replicas that acknowledged.
    pub acked_by: Vec<String>,
    /// Whether a fallback stood in for an unreachable replica.
    pub sloppy: bool,
    /// The acks in `acked_by` that came from fallbacks, as `(fallback,
    /// replica it stood in for)`: the fallback holds the write and hands it
    /// to the replica when that one is back.
    pub fallbacks: Vec<(String, String)>,
    /// Resolver that merged siblings at write time, if any.
    pub resolved_by: Option<String>,
    /// Validators that vetted the write.
    pub validated_by: Vec<String>,
}

/// Per-read options; the defaults use the bucket's settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadOptions {
    /// Named consistency level.
    pub consistency: Consistency,
    /// Explicit replica count (0: use `consistency`).
    pub r: u32,
    /// Primary replicas required.
    pub pr: u32,
    /// Deadline (server default when `None`).
    pub timeout: Option<Duration>,
    /// Whether fallbacks may answer for replicas that are down (`None`:
    /// the bucket's setting).
    pub sloppy: Option<bool>,
}

/// Per-write options; the defaults use the bucket's settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteOptions {
    /// Named consistency level.
    pub consistency: Consistency,
    /// Explicit replica count (0: use `consistency`).
    pub w: u32,
    /// Primary replicas required.
    pub pw: u32,
    /// Deadline (server default when `None`).
    pub timeout: Option<Duration>,
    /// Return the siblings after the write.
    pub return_body: bool,
    /// Whether fallbacks may stand in for replicas that are down (`None`:
    /// the bucket's setting).
    pub sloppy: Option<bool>,
}

/// What went wrong, by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not reach the endpoint.
    #[error("cannot connect to {endpoint}: {message}")]
    Connect {
        /// The address tried.
        endpoint: String,
        /// Why.
        message: String,
    },
    /// The request was wrong (or a validator rejected it); nothing was written.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Not enough replicas answered.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The deadline passed.
    #[error("deadline exceeded: {0}")]
    Timeout(String),
    /// The key has too many siblings; merge these and write back with
    /// `context`. When they are too large to send with an error, both are
    /// empty: read the key to get them.
    #[error("sibling limit of {limit} reached: merge the {} siblings and write back with the returned context", siblings.len())]
    SiblingLimit {
        /// The bucket's `max_siblings`.
        limit: u32,
        /// The stored siblings.
        siblings: Vec<Sibling>,
        /// Their causal context.
        context: Context,
    },
    /// An admin object (plugin, node) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The operation does not fit the cluster's state.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// Anything else the server reported.
    #[error("{code:?}: {message}")]
    Other {
        /// gRPC status code.
        code: tonic::Code,
        /// Server's message.
        message: String,
    },
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        let message = s.message().to_owned();
        match s.code() {
            tonic::Code::InvalidArgument => Self::InvalidArgument(message),
            tonic::Code::Unavailable => Self::Unavailable(message),
            tonic::Code::DeadlineExceeded => Self::Timeout(message),
            tonic::Code::NotFound => Self::NotFound(message),
            tonic::Code::FailedPrecondition => match pb::SiblingLimitExceeded::decode(s.details()) {
                Ok(d) if !s.details().is_empty() => Self::SiblingLimit {
                    limit: d.limit,
                    siblings: d.siblings.into_iter().map(Sibling::from).collect(),
                    context: Context::from_reply(d.context),
                },
                _ => Self::FailedPrecondition(message),
            },
            code => Self::Other { code, message },
        }
    }
}

/// How to reach a node: TLS and credentials.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// A bearer token, sent with every call (nodes configured with
    /// `security.tokens` require one).
    pub token: Option<String>,
    /// PEM of the CA that signed the nodes' certificates: connect over TLS
    /// and trust only that CA.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// The name the node's certificate must carry, when it differs from the
    /// endpoint's host.
    pub tls_domain: Option<String>,
    /// Send each get, put and delete straight to a live replica of its key,
    /// learning the ring from the node connected to (see [`Client`]). Needs
    /// the nodes' own (advertised) addresses to be reachable from the
    /// client and, with TLS, named in their certificates.
    pub token_aware: bool,
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A channel that presents the client's token.
pub type AuthChannel = InterceptedService<Channel, Bearer>;

/// A Kv client that presents the token.
type Kv = pb::kv_client::KvClient<AuthChannel>;

fn kv_client(channel: Channel, bearer: Bearer) -> Kv {
    // A key's siblings may add up to 16 MiB (a bucket's max_siblings ×
    // max_object_bytes), and up to 56 MiB after replicas that diverged are
    // merged; tonic's default limit on a reply is 4 MiB.
    pb::kv_client::KvClient::with_interceptor(channel, bearer).max_decoding_message_size(MAX_MESSAGE_BYTES)
}

/// A connection to a Concord cluster through one node (any node serves any
/// key).
///
/// With [`ConnectOptions::token_aware`], gets, puts and deletes go straight
/// to a live replica of their key instead (connecting to it as needed),
/// which saves the hop a node that is not a replica takes to forward a
/// write. A request to a replica that cannot be reached goes to the node
/// connected to instead. Admin calls always go to that node.
///
/// Cheap to clone: clones share the underlying HTTP/2 connections.
#[derive(Clone)]
pub struct Client {
    kv: Kv,
    admin: pb::admin_client::AdminClient<AuthChannel>,
    router: Option<Arc<route::Router>>,
}

/// The endpoint settings of a node at `endpoint`.
fn node_endpoint(endpoint: &str, options: &ConnectOptions) -> Result<Endpoint, ClientError> {
    let err = |message: String| ClientError::Connect { endpoint: endpoint.to_owned(), message };
    let mut builder = Endpoint::from_shared(endpoint_uri(endpoint, options.tls_ca_pem.is_some()))
        .map_err(|e| err(e.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if let Some(ca) = &options.tls_ca_pem {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some(d) = &options.tls_domain {
            tls = tls.domain_name(d.clone());
        }
        builder = builder.tls_config(tls).map_err(|e| err(format!("{e}{}", source_chain(&e))))?;
    }
    Ok(builder)
}

fn endpoint_uri(endpoint: &str, tls: bool) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

impl Client {
    /// Connects to `endpoint` (`host:port` or a URI), in plain text and
    /// without a token.
    pub async fn connect(endpoint: &str) -> Result<Self, ClientError> {
        Self::connect_with(endpoint, &ConnectOptions::default()).await
    }

    /// Connects to `endpoint` with `options`.
    pub async fn connect_with(endpoint: &str, options: &ConnectOptions) -> Result<Self, ClientError> {
        let err = |message: String| ClientError::Connect { endpoint: endpoint.to_owned(), message };
        let token = match &options.token {
            None => None,
            Some(t) => Some(
                format!("Bearer {}", t.trim())
                    .parse::<tonic::metadata::AsciiMetadataValue>()
                    .map_err(|_| err("the token has characters a header cannot carry".into()))?,
            ),
        };
        let channel =
            node_endpoint(endpoint, options)?.connect().await.map_err(|e| err(format!("{e}{}", source_chain(&e))))?;
        let mut client = Self::from_channel_with(channel, token.clone());
        if options.token_aware {
            let router = route::Router::new(client.kv.clone(), options.clone(), Bearer(token));
            // Without a table yet, requests go to this node; the next
            // request tries again.
            let _ = router.refresh().await;
            client.router = Some(router);
        }
        Ok(client)
    }

    /// Uses an existing channel.
    pub fn from_channel(channel: Channel) -> Self {
        Self::from_channel_with(channel, None)
    }

    fn from_channel_with(channel: Channel, token: Option<tonic::metadata::AsciiMetadataValue>) -> Self {
        let bearer = Bearer(token);
        Self {
            kv: kv_client(channel.clone(), bearer.clone()),
            admin: pb::admin_client::AdminClient::with_interceptor(channel, bearer)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            router: None,
        }
    }

    /// Sends a Kv call on `bucket`/`key`: to a replica of the key when
    /// routing, else (or when that replica cannot be reached) to the node
    /// connected to.
    async fn kv_call<T, F, Fut>(&self, bucket: &str, key: &[u8], call: F) -> Result<T, tonic::Status>
    where
        F: Fn(Kv) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let Some(router) = &self.router else { return call(self.kv.clone()).await.map(|r| r.into_inner()) };
        let (kv, address) = router.pick(bucket, key);
        match call(kv).await {
            Err(s) if never_delivered(&s) && address.is_some() => {
                router.unreachable(address.as_deref().unwrap_or_default());
                call(router.seed()).await.map(|r| r.into_inner())
            }
            r => r.map(|r| r.into_inner()),
        }
    }

    /// Reads a key with the bucket's default consistency.
    pub async fn get(&self, bucket: &str, key: &[u8]) -> Result<GetResult, ClientError> {
        self.get_with(bucket, key, ReadOptions::default()).await
    }

    /// Reads a key.
    pub async fn get_with(&self, bucket: &str, key: &[u8], opts: ReadOptions) -> Result<GetResult, ClientError> {
        let req = pb::GetRequest {
            bucket: bucket.to_owned(),
            key: key.to_vec().into(),
            options: Some(pb::ReadOptions {
                consistency: opts.consistency as i32,
                r: opts.r,
                pr: opts.pr,
                timeout_ms: timeout_ms(opts.timeout),
                sloppy: opts.sloppy,
            }),
        };
        let r = self
            .kv_call(bucket, key, |mut kv| {
                let req = req.clone();
                async move { kv.get(req).await }
            })
            .await?;
        Ok(GetResult {
            found: r.found,
            siblings: r.siblings.into_iter().map(Sibling::from).collect(),
            context: Context::from_reply(r.context),
            resolved_by: non_empty(r.resolved_by),
            replicas: r.replicas,
            unresolved: r.unresolved.map(|u| Unresolved {
                plugin: u.plugin,
                reason: u.reason,
                message: u.message,
                breaker_open: u.breaker_open,
            }),
        })
    }

    /// Writes a value with the bucket's default consistency.
    pub async fn put(
        &self,
        bucket: &str,
        key: &[u8],
        value: &[u8],
        context: &Context,
    ) -> Result<WriteResult, ClientError> {
        self.put_with(bucket, key, value, context, WriteOptions::default()).await
    }

    /// Writes a value.
    pub async fn put_with(
        &self,
        bucket: &str,
        key: &[u8],
        value: &[u8],
        context: &Context,
        opts: WriteOptions,
    ) -> Result<WriteResult, ClientError> {
        let req = pb::PutRequest {
            bucket: bucket.to_owned(),
            key: key.to_vec().into(),
            value: value.to_vec().into(),
            context: context.0.clone(),
            options: Some(write_options(opts)),
        };
        let r = self
            .kv_call(bucket, key, |mut kv| {
                let req = req.clone();
                async move { kv.put(req).await }
            })
            .await?;
        Ok(WriteResult {
            context: Context::from_reply(r.context),
            siblings: r.siblings.into_iter().map(Sibling::from).collect(),
            sibling_count: r.sibling_count,
            acked_by: r.acked_by,
            sloppy: r.sloppy,
            fallbacks: fallbacks(r.fallbacks),
            resolved_by: non_empty(r.resolved_by),
            validated_by: r.validated_by,
        })
    }

    /// Deletes a key (writes a tombstone superseding what `context` covers).
    pub async fn delete(&self, bucket: &str, key: &[u8], context: &Context) -> Result<WriteResult, ClientError> {
        self.delete_with(bucket, key, context, WriteOptions::default()).await
    }

    /// Deletes a key.
    pub async fn delete_with(
        &self,
        bucket: &str,
        key: &[u8],
        context: &Context,
        opts: WriteOptions,
    ) -> Result<WriteResult, ClientError> {
        let req = pb::DeleteRequest {
            bucket: bucket.to_owned(),
            key: key.to_vec().into(),
            context: context.0.clone(),
            options: Some(write_options(opts)),
        };
        let r = self
            .kv_call(bucket, key, |mut kv| {
                let req = req.clone();
                async move { kv.delete(req).await }
            })
            .await?;
        Ok(WriteResult {
            context: Context::from_reply(r.context),
            sibling_count: r.siblings.len().max(1) as u32,
            siblings: r.siblings.into_iter().map(Sibling::from).collect(),
            acked_by: r.acked_by,
            sloppy: r.sloppy,
            fallbacks: fallbacks(r.fallbacks),
            resolved_by: None,
            validated_by: Vec::new(),
        })
    }

    /// Changes bucket properties (unset fields stay as they are).
    pub async fn set_bucket(&self, req: SetBucketRequest) -> Result<BucketProps, ClientError> {
        Ok(self.admin.clone().set_bucket(req).await?.into_inner())
    }

    /// A bucket's properties (defaults for a bucket never configured).
    pub async fn get_bucket(&self, name: &str) -> Result<BucketProps, ClientError> {
        Ok(self.admin.clone().get_bucket(pb::GetBucketRequest { name: name.to_owned() }).await?.into_inner())
    }

    /// Every configured bucket.
    pub async fn list_buckets(&self) -> Result<Vec<BucketProps>, ClientError> {
        Ok(self.admin.clone().list_buckets(pb::ListBucketsRequest {}).await?.into_inner().buckets)
    }

    /// Membership and ring as the node sees it.
    pub async fn cluster_status(&self) -> Result<ClusterStatusResponse, ClientError> {
        Ok(self.admin.clone().cluster_status(pb::ClusterStatusRequest {}).await?.into_inner())
    }

    /// The raw admin client, for calls without a typed wrapper.
    pub fn admin(&self) -> pb::admin_client::AdminClient<AuthChannel> {
        self.admin.clone()
    }
}

fn write_options(o: WriteOptions) -> pb::WriteOptions {
    pb::WriteOptions {
        consistency: o.consistency as i32,
        w: o.w,
        pw: o.pw,
        timeout_ms: timeout_ms(o.timeout),
        return_body: o.return_body,
        sloppy: o.sloppy,
    }
}

fn fallbacks(f: Vec<pb::FallbackAck>) -> Vec<(String, String)> {
    f.into_iter().map(|f| (f.node, f.replica)).collect()
}

fn timeout_ms(t: Option<Duration>) -> u32 {
    t.map_or(0, |t| t.as_millis().clamp(1, u32::MAX as u128) as u32)
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

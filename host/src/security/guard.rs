//! Who may call what: bearer tokens with roles for clients, and the
//! cluster's credential (or a node certificate) for the Internal service.
//!
//! One tower layer in front of every service checks each call by its path
//! before the call is decoded:
//!
//! | service | who |
//! |---|---|
//! | `Kv/Get` | a token with the `read` role |
//! | `Kv/Put`, `Kv/Delete` | a token with the `write` role |
//! | `Kv/Route` | a token with any role |
//! | `Admin/*` | a token with the `admin` role (`ClusterSecret` also a node certificate) |
//! | `Internal/*` | members only: a node certificate, or the cluster secret's credential |
//! | health, reflection | anyone |
//!
//! With no tokens configured, Kv and Admin are open to anyone who can
//! reach the port, as they were before tokens existed; Internal never is.
//! Tokens are configured by their SHA-256 (`concord token new` makes one),
//! so the configuration file holds nothing a client could use.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::Keyring;
use crate::{Error, Result};

/// What a token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `Kv/Get`.
    Read,
    /// `Kv/Put` and `Kv/Delete`.
    Write,
    /// Buckets, plugins and cluster changes (`Admin/*`).
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// One configured token (`[[security.tokens]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and errors.
    pub name: String,
    /// What the token may do.
    pub roles: Vec<Role>,
    /// Hex SHA-256 of the token.
    pub sha256: String,
}

/// The prefix of tokens `concord token new` makes.
pub const TOKEN_PREFIX: &str = "cct_";

/// A new random token and its configuration entry.
pub fn new_token(name: &str, roles: Vec<Role>) -> (String, TokenConfig) {
    let mut bytes = [0u8; 24];
    rand::fill(&mut bytes);
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let sha256 = hex::encode(Sha256::digest(token.as_bytes()));
    (token, TokenConfig { name: name.to_owned(), roles, sha256 })
}

struct Token {
    name: String,
    roles: Vec<Role>,
    sha256: [u8; 32],
}

/// What a call needs.
#[derive(Debug, PartialEq, Eq)]
enum Need {
    Anyone,
    /// A token with any of these roles.
    Role(&'static [Role]),
    /// The Admin call that hands out the cluster secret: an admin, or a
    /// node certificate.
    AdminOrPeer,
    Peer,
}

/// The checks, shared by every connection.
pub struct Guard {
    keys: Arc<Keyring>,
    tokens: Vec<Token>,
}

impl Guard {
    /// A guard for `tokens` (checked here), with the cluster's `keys`.
    pub fn new(keys: Arc<Keyring>, tokens: &[TokenConfig]) -> Result<Self> {
        let mut out = Vec::with_capacity(tokens.len());
        for t in tokens {
            let sha256: [u8; 32] = hex::decode(&t.sha256).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| {
                Error::invalid(format!("security.tokens: {:?} has a sha256 that is not 64 hex digits", t.name))
            })?;
            if t.name.is_empty() || t.roles.is_empty() {
                return Err(Error::invalid("security.tokens: every token needs a name and at least one role"));
            }
            out.push(Token { name: t.name.clone(), roles: t.roles.clone(), sha256 });
        }
        Ok(Self { keys, tokens: out })
    }

    /// Whether client calls need a token.
    pub fn tokens_required(&self) -> bool {
        !self.tokens.is_empty()
    }

    fn need(path: &str) -> Need {
        match path {
            "/concord.v1.Kv/Get" => Need::Role(&[Role::Read]),
            "/concord.v1.Kv/Put" | "/concord.v1.Kv/Delete" => Need::Role(&[Role::Write]),
            "/concord.v1.Kv/Route" => Need::Role(&[Role::Read, Role::Write, Role::Admin]),
            "/concord.v1.Admin/ClusterSecret" => Need::AdminOrPeer,
            p if p.starts_with("/concord.v1.Admin/") => Need::Role(&[Role::Admin]),
            p if p.starts_with("/concord.v1.Internal/") => Need::Peer,
            // Unknown Kv methods still need a token when tokens are on.
            p if p.starts_with("/concord.v1.Kv/") => Need::Role(&[Role::Admin]),
            _ => Need::Anyone,
        }
    }

    /// Checks one call.
    fn check(&self, req: &http::Request<Body>) -> std::result::Result<(), tonic::Status> {
        let path = req.uri().path();
        let need = Self::need(path);
        let method = path.rsplit('/').next().unwrap_or(path);
        let peer_cert = || {
            req.extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.peer_certs())
                .is_some_and(|c| !c.is_empty())
        };
        match need {
            Need::Anyone => Ok(()),
            Need::Peer => {
                let credential = req.headers().get(crate::net::PEER_HEADER).map(|v| v.as_bytes());
                if peer_cert()
                    || credential.is_some_and(|v| crate::net::check_peer_credential(&self.keys, v, super::now_ms()))
                {
                    return Ok(());
                }
                Err(tonic::Status::unauthenticated(format!(
                    "{method} is part of the Internal service, which only Concord nodes of this cluster may call; \
                     clients use the Kv and Admin services"
                )))
            }
            Need::AdminOrPeer if peer_cert() => Ok(()),
            Need::AdminOrPeer => self.check_token(req, &[Role::Admin], method),
            Need::Role(role) => self.check_token(req, role, method),
        }
    }

    fn check_token(
        &self,
        req: &http::Request<Body>,
        roles: &[Role],
        method: &str,
    ) -> std::result::Result<(), tonic::Status> {
        if self.tokens.is_empty() {
            return Ok(());
        }
        let needed = match roles {
            [one] => format!("the {} role", one.as_str()),
            many => format!("one of the roles {}", many.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")),
        };
        let Some(value) = req.headers().get("authorization") else {
            return Err(tonic::Status::unauthenticated(format!(
                "{method} needs a bearer token with {needed}; pass --token (or CONCORD_TOKEN)"
            )));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| tonic::Status::unauthenticated("the authorization header must be `Bearer <token>`"))?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let Some(found) = self.tokens.iter().find(|t| t.sha256 == digest) else {
            return Err(tonic::Status::unauthenticated("the bearer token is not one this node accepts"));
        };
        if roles.iter().any(|r| found.roles.contains(r)) {
            return Ok(());
        }
        let has: Vec<&str> = found.roles.iter().map(|r| r.as_str()).collect();
        Err(tonic::Status::permission_denied(format!(
            "token {:?} has the roles [{}]; {method} needs {needed}",
            found.name,
            has.join(", ")
        )))
    }
}

/// The tower layer that applies a [`Guard`] to every call.
#[derive(Clone)]
pub struct GuardLayer(pub Arc<Guard>);

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded { inner, guard: Arc::clone(&self.0) }
    }
}

/// A service behind a [`Guard`].
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: Arc<Guard>,
}

impl<S> tower::Service<http::Request<Body>> for Guarded<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        futures::future::Either<futures::future::Ready<std::result::Result<Self::Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self.guard.check(&req) {
            Ok(()) => futures::future::Either::Right(self.inner.call(req)),
            Err(status) => {
                metrics::counter!("concord_requests_refused_total", "code" => code_label(status.code())).increment(1);
                futures::future::Either::Left(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}

fn code_label(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission_denied",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::KeySet;

    fn request(path: &str, headers: &[(&str, &str)]) -> http::Request<Body> {
        let mut b = http::Request::builder().uri(format!("http://node{path}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::default()).unwrap()
    }

    #[test]
    fn roles_allow_their_calls_and_nothing_else() {
        let keys = Arc::new(Keyring::in_memory(KeySet::generate()));
        let (reader, rc) = new_token("reader", vec![Role::Read]);
        let (writer, wc) = new_token("app", vec![Role::Read, Role::Write]);
        let (admin, ac) = new_token("ops", vec![Role::Admin]);
        let g = Guard::new(keys, &[rc, wc, ac]).unwrap();
        let bearer = |t: &str| format!("Bearer {t}");
        let code = |path: &str, token: Option<&str>| {
            let b = token.map(bearer);
            let headers: Vec<(&str, &str)> = b.iter().map(|v| ("authorization", v.as_str())).collect();
            g.check(&request(path, &headers)).err().map(|s| s.code())
        };
        use tonic::Code::{PermissionDenied, Unauthenticated};
        for (path, reader_ok, writer_ok, admin_ok) in [
            ("/concord.v1.Kv/Get", true, true, false),
            ("/concord.v1.Kv/Put", false, true, false),
            ("/concord.v1.Kv/Delete", false, true, false),
            ("/concord.v1.Kv/Route", true, true, true),
            ("/concord.v1.Admin/SetBucket", false, false, true),
            ("/concord.v1.Admin/ClusterStatus", false, false, true),
            ("/concord.v1.Admin/ClusterSecret", false, false, true),
        ] {
            assert_eq!(code(path, None), Some(Unauthenticated), "{path}");
            assert_eq!(code(path, Some("cct_wrong")), Some(Unauthenticated), "{path}");
            for (token, ok) in [(&reader, reader_ok), (&writer, writer_ok), (&admin, admin_ok)] {
                assert_eq!(code(path, Some(token)), (!ok).then_some(PermissionDenied), "{path}");
            }
        }
        assert_eq!(code("/grpc.health.v1.Health/Check", None), None);
        assert_eq!(code("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", None), None);
        // No token opens Internal.
        assert_eq!(code("/concord.v1.Internal/ReplicaWrite", Some(&admin)), Some(Unauthenticated));
    }

    #[test]
    fn internal_calls_need_the_cluster_credential() {
        let keys = Arc::new(Keyring::in_memory(KeySet::generate()));
        let g = Guard::new(Arc::clone(&keys), &[]).unwrap();
        let path = "/concord.v1.Internal/ReplicaWrite";
        assert_eq!(g.check(&request(path, &[])).unwrap_err().code(), tonic::Code::Unauthenticated);
        let other = Keyring::in_memory(KeySet::generate());
        let forged = crate::net::peer_credential(&other).unwrap().to_str().unwrap().to_owned();
        assert!(g.check(&request(path, &[(crate::net::PEER_HEADER, &forged)])).is_err());
        let good = crate::net::peer_credential(&keys).unwrap().to_str().unwrap().to_owned();
        assert!(g.check(&request(path, &[(crate::net::PEER_HEADER, &good)])).is_ok());
        for bad in ["", "1.", "x.00", "1.zz", "4294967295.00"] {
            assert!(g.check(&request(path, &[(crate::net::PEER_HEADER, bad)])).is_err(), "{bad:?}");
        }
        // Without tokens, clients reach Kv and Admin as before.
        assert!(g.check(&request("/concord.v1.Kv/Put", &[])).is_ok());
        assert!(!g.tokens_required());
    }

    #[test]
    fn bad_token_configuration_is_named() {
        let keys = Arc::new(Keyring::in_memory(KeySet::generate()));
        let bad = TokenConfig { name: "x".into(), roles: vec![Role::Read], sha256: "abc".into() };
        assert!(Guard::new(Arc::clone(&keys), &[bad]).err().unwrap().to_string().contains("64 hex"));
        let none = TokenConfig { name: "x".into(), roles: vec![], sha256: "00".repeat(32) };
        assert!(Guard::new(keys, &[none]).err().unwrap().to_string().contains("role"));
    }
}

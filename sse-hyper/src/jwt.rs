//! JWT verification as identity providers issue tokens: an HS256 secret, or the RS256, ES256 and
//! EdDSA keys of a JWKS (a file, or an `https://` URL), cached and refreshed when a token names
//! a key id the cache does not know (at most once per [`JwtKeys::MIN_REFRESH`], never per
//! request); `exp` required, `nbf`, `iss` and `aud` checked with a leeway; `crit` refused. And
//! [`EventGrant`]: event names a token's claim allows, with `*` wildcards.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Why a JWKS could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The file could not be read.
    #[error("cannot read the JWKS file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The URL could not be fetched, or answered with an error status.
    #[error("cannot fetch the JWKS from {url}: {message}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The document is not a JWKS.
    #[error("not a JWKS: {0}")]
    Parse(String),
    /// The CA certificate to trust is not PEM.
    #[error("not a PEM certificate: {0}")]
    Certificate(String),
    /// The JWKS holds no key this verifier can use (RS256, ES256 or EdDSA, for signatures).
    #[error("the JWKS holds no RS256, ES256 or EdDSA signing key")]
    NoUsableKey,
}

/// A verification key and the one algorithm a token signed with it may name.
#[derive(Clone)]
struct Key {
    key: DecodingKey,
    algorithm: Algorithm,
}

#[derive(Default)]
struct KeySet {
    by_id: HashMap<String, Key>,
    /// Keys without a `kid`: used for tokens without one.
    anonymous: Vec<Key>,
}

impl KeySet {
    /// The usable signing keys of `jwks`; keys of other types or uses are skipped.
    fn from_jwks(jwks: &JwkSet) -> Result<KeySet, JwksError> {
        let mut set = KeySet::default();
        for jwk in &jwks.keys {
            if matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            ) {
                continue;
            }
            let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
                (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                    if ec.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                (AlgorithmParameters::OctetKeyPair(_), None | Some(KeyAlgorithm::EdDSA)) => {
                    Algorithm::EdDSA
                }
                _ => continue,
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let key = Key { key, algorithm };
            match &jwk.common.key_id {
                Some(id) => {
                    set.by_id.insert(id.clone(), key);
                }
                None => set.anonymous.push(key),
            }
        }
        if set.by_id.is_empty() && set.anonymous.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(set)
    }

    fn find(&self, kid: Option<&str>, algorithm: Algorithm) -> Option<&Key> {
        match kid {
            Some(kid) => self.by_id.get(kid),
            None => {
                let mut matching = self.anonymous.iter().filter(|k| k.algorithm == algorithm);
                let key = matching.next()?;
                // Two keys could verify it: refuse rather than try them in turn.
                matching.next().is_none().then_some(key)
            }
        }
        .filter(|k| k.algorithm == algorithm)
    }
}

#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    /// A URL, and a CA to trust besides the usual roots.
    Url(String, Option<reqwest::Certificate>),
}

impl Source {
    async fn load(&self) -> Result<KeySet, JwksError> {
        let text = match self {
            Source::File(path) => {
                let file = path.clone();
                tokio::task::spawn_blocking(move || std::fs::read(file))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                    .map_err(|source| JwksError::File {
                        path: path.clone(),
                        source,
                    })?
            }
            Source::Url(url, ca) => fetch(url, ca.as_ref()).await?,
        };
        let jwks: JwkSet =
            serde_json::from_slice(&text).map_err(|e| JwksError::Parse(e.to_string()))?;
        KeySet::from_jwks(&jwks)
    }
}

/// Fetches a JWKS: `https://`, or `http://` (for a provider on loopback or a sidecar), with a
/// 10 s deadline and a 1 MiB cap.
async fn fetch(url: &str, ca: Option<&reqwest::Certificate>) -> Result<Vec<u8>, JwksError> {
    let failed = |message: String| JwksError::Fetch {
        url: url.to_owned(),
        message,
    };
    let mut client = reqwest::Client::builder();
    if let Some(ca) = ca {
        client = client.add_root_certificate(ca.clone());
    }
    let client = client
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let mut response = client
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("status {}", response.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(e.to_string()))? {
        body.extend_from_slice(&chunk);
        if body.len() > 1024 * 1024 {
            return Err(failed("the document is over 1 MiB".to_owned()));
        }
    }
    Ok(body)
}

/// The keys tokens are verified with: an HS256 secret, or a JWKS kept up to date.
#[derive(Clone)]
pub struct JwtKeys {
    inner: Arc<KeysInner>,
}

struct KeysInner {
    /// `None` for a fixed secret.
    source: Option<Source>,
    keys: RwLock<Arc<KeySet>>,
    /// When the set was last loaded (or tried); one load at a time.
    loaded: tokio::sync::Mutex<Instant>,
    refresh_every: Duration,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeys")
            .field("source", &self.inner.source)
            .finish_non_exhaustive()
    }
}

impl JwtKeys {
    /// A JWKS is loaded again at most this often when tokens name unknown key ids.
    pub const MIN_REFRESH: Duration = Duration::from_secs(10);

    /// Tokens signed with HS256 and `secret`.
    pub fn hs256(secret: impl AsRef<[u8]>) -> Self {
        let mut set = KeySet::default();
        set.anonymous.push(Key {
            key: DecodingKey::from_secret(secret.as_ref()),
            algorithm: Algorithm::HS256,
        });
        Self::with(None, set)
    }

    /// The keys of a JWKS document given as is (never loaded again).
    pub fn jwks_json(document: &[u8]) -> Result<Self, JwksError> {
        let jwks: JwkSet =
            serde_json::from_slice(document).map_err(|e| JwksError::Parse(e.to_string()))?;
        Ok(Self::with(None, KeySet::from_jwks(&jwks)?))
    }

    /// The keys of a JWKS file, read now; read again when a token names an unknown key id, and
    /// every 5 minutes.
    pub async fn jwks_file(path: impl Into<PathBuf>) -> Result<Self, JwksError> {
        let source = Source::File(path.into());
        let set = source.load().await?;
        Ok(Self::with(Some(source), set))
    }

    /// The keys of a JWKS at `url` (`https://…`; `http://` only for a local provider), fetched
    /// now; fetched again when a token names an unknown key id, and every 5 minutes.
    pub async fn jwks_url(url: impl Into<String>) -> Result<Self, JwksError> {
        Self::jwks_url_trusting(url, None).await
    }

    /// Like [`jwks_url`](Self::jwks_url), also trusting the CA certificate `ca_pem` (PEM) for the
    /// provider's TLS certificate: for a provider inside a company's own PKI.
    pub async fn jwks_url_trusting(
        url: impl Into<String>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, JwksError> {
        let ca = ca_pem
            .map(reqwest::Certificate::from_pem)
            .transpose()
            .map_err(|e| JwksError::Certificate(e.to_string()))?;
        let url = url.into();
        let parsed = reqwest::Url::parse(&url).map_err(|e| JwksError::Fetch {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let local = matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
        if parsed.scheme() != "https" && !(parsed.scheme() == "http" && local) {
            return Err(JwksError::Fetch {
                url,
                message: "use https:// (http:// only for a provider on loopback)".to_owned(),
            });
        }
        let source = Source::Url(url, ca);
        let set = source.load().await?;
        Ok(Self::with(Some(source), set))
    }

    fn with(source: Option<Source>, set: KeySet) -> Self {
        JwtKeys {
            inner: Arc::new(KeysInner {
                source,
                keys: RwLock::new(Arc::new(set)),
                loaded: tokio::sync::Mutex::new(Instant::now()),
                refresh_every: Duration::from_secs(300),
            }),
        }
    }

    fn current(&self) -> Arc<KeySet> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The key for a token's `kid` and `alg`, loading the JWKS again if the `kid` is unknown and
    /// the last load is older than [`MIN_REFRESH`](Self::MIN_REFRESH).
    async fn key(&self, kid: Option<&str>, algorithm: Algorithm) -> Option<Key> {
        let set = self.current();
        if let Some(key) = set.find(kid, algorithm) {
            self.refresh_in_background_if_old();
            return Some(key.clone());
        }
        let source = self.inner.source.as_ref()?;
        // No kid, or a known kid under another algorithm: loading again would not help.
        if kid.is_none_or(|kid| set.by_id.contains_key(kid)) {
            return None;
        }
        let mut loaded = self.inner.loaded.lock().await;
        // Loaded by another request while this one waited?
        if let Some(key) = self.current().find(kid, algorithm) {
            return Some(key.clone());
        }
        if loaded.elapsed() < Self::MIN_REFRESH {
            return None;
        }
        *loaded = Instant::now();
        self.reload(source).await;
        self.current().find(kid, algorithm).cloned()
    }

    async fn reload(&self, source: &Source) {
        match source.load().await {
            Ok(set) => {
                *self
                    .inner
                    .keys
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
            }
            // The keys known so far stay in use.
            Err(error) => tracing::warn!(%error, "could not load the JWKS again"),
        }
    }

    fn refresh_in_background_if_old(&self) {
        let Some(source) = self.inner.source.clone() else {
            return;
        };
        let Ok(mut loaded) = self.inner.loaded.try_lock() else {
            return;
        };
        if loaded.elapsed() < self.inner.refresh_every {
            return;
        }
        *loaded = Instant::now();
        drop(loaded);
        let keys = self.clone();
        tokio::spawn(async move { keys.reload(&source).await });
    }
}

/// A verified token's claims.
#[derive(Debug, Clone)]
pub struct Claims {
    /// Every claim of the token.
    pub all: Map<String, Value>,
}

impl Claims {
    /// The `sub` claim, if it is a non-empty string.
    pub fn subject(&self) -> Option<&str> {
        self.all
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }
}

/// Verifies tokens against [`JwtKeys`]: signature with the key's own algorithm, `exp` (required),
/// `nbf`, and `iss` and `aud` when set, with a leeway for clocks that differ (60 s by default).
#[derive(Debug, Clone)]
pub struct JwtVerifier {
    keys: JwtKeys,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Duration,
}

impl JwtVerifier {
    /// A verifier over `keys`, without `iss` or `aud` checks, with 60 s of leeway.
    pub fn new(keys: JwtKeys) -> Self {
        JwtVerifier {
            keys,
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: Duration::from_secs(60),
        }
    }

    /// Requires `iss` to be one of `issuers`.
    pub fn issuers(mut self, issuers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.issuers = issuers.into_iter().map(Into::into).collect();
        self
    }

    /// Requires `aud` to name one of `audiences`.
    pub fn audiences(mut self, audiences: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.audiences = audiences.into_iter().map(Into::into).collect();
        self
    }

    /// How far `exp` and `nbf` may be off.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Checks `token`; any failure is a `401` that says what was wrong.
    pub async fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let invalid = |what: String| ApiError::unauthorized(format!("invalid token: {what}"));
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
        if let Some(crit) = header.crit {
            return Err(invalid(format!(
                "critical header parameters {crit:?} are not understood"
            )));
        }
        let key = self
            .keys
            .key(header.kid.as_deref(), header.alg)
            .await
            .ok_or_else(|| {
                invalid(match &header.kid {
                    Some(kid) => format!("no {:?} key with id {kid:?}", header.alg),
                    None => format!("no {:?} key for a token without kid", header.alg),
                })
            })?;
        let mut validation = Validation::new(key.algorithm);
        validation.validate_nbf = true;
        validation.leeway = self.leeway.as_secs();
        if !self.issuers.is_empty() {
            validation.set_issuer(&self.issuers);
        }
        if self.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audiences);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Claims { all: data.claims })
    }
}

/// Event names a token allows, from one of its claims: a JSON array of names, or one string of
/// names separated by spaces (as OAuth scopes are). `*` in a name matches any run of characters:
/// `order-*` allows `order-update`, `*` allows everything (and a stream asking for `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventGrant {
    patterns: Vec<String>,
}

impl EventGrant {
    /// The grant in `claim` of `claims`; a token without the claim is granted nothing.
    pub fn from_claim(claims: &Claims, claim: &str) -> Self {
        let patterns = match claims.all.get(claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(text)) => text.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        EventGrant { patterns }
    }

    /// A grant of these patterns.
    pub fn new(patterns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        EventGrant {
            patterns: patterns.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether the grant allows the event name `name`.
    pub fn allows(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| wildcard_match(p, name))
    }

    /// Whether the grant allows every name (a stream asking for `*`).
    pub fn allows_all(&self) -> bool {
        self.patterns
            .iter()
            .any(|p| p.chars().all(|c| c == '*') && !p.is_empty())
    }
}

/// `*` matches any run of characters (none included); everything else matches itself. At worst
/// pattern length × name length steps (it backtracks only to the last `*`), so a hostile
/// pattern cannot make it slow.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("order-*", "order-update"));
        assert!(wildcard_match("order-*", "order-"));
        assert!(!wildcard_match("order-*", "orders"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a*b*c", "axxbyyc"));
        assert!(!wildcard_match("a*b*c", "axxbyy"));
        assert!(wildcard_match("news", "news"));
        assert!(!wildcard_match("news", "news2"));
        let hostile = "*a".repeat(200);
        assert!(!wildcard_match(&hostile, &"a".repeat(150)));
    }

    #[test]
    fn grants_from_claims() {
        let claims = Claims {
            all: serde_json::from_str(r#"{"events":["order-*","news"],"scope":"a b*"}"#)
                .expect("JSON"),
        };
        let grant = EventGrant::from_claim(&claims, "events");
        assert!(grant.allows("order-1") && grant.allows("news") && !grant.allows("other"));
        assert!(!grant.allows_all());
        let scope = EventGrant::from_claim(&claims, "scope");
        assert!(scope.allows("a") && scope.allows("b2") && !scope.allows("c"));
        assert_eq!(
            EventGrant::from_claim(&claims, "missing"),
            EventGrant::new(Vec::<String>::new())
        );
        assert!(EventGrant::new(["*"]).allows_all());
    }
}

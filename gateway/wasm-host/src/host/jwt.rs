//! `weir:policy/jwt`: token verification by the host with jsonwebtoken, against key sets from
//! the gateway config. jsonwebtoken's defaults are too loose for a gateway, so every check is
//! explicit here:
//! - the header is parsed first: `alg: none` and algorithms outside the allowed list are
//!   refused before any key is touched, and so is any `crit` header (we implement no extension);
//! - the allowed list is the plugin's pinned algorithms ∩ the algorithms of the key set's keys,
//!   so an HS256 token can never be checked against an RSA/EC public key (key confusion);
//! - `exp` is always required, `nbf` is validated, `iss`/`aud` are required when configured,
//!   leeway is whatever the plugin asked (0 by default), tokens over 16 KiB are refused.
//!
//! Key sets hold an HMAC secret, PEM public keys, a JWK/JWKS file and/or a JWKS URL. Remote
//! JWKS are cached 10 minutes, refetched on an unknown `kid` at most every 10 seconds, and the
//! last good keys are kept when a fetch fails.
//!
//! Verified tokens are cached (like Envoy's `jwt_cache_config`): API clients send the same token
//! on every request, and the signature and claim checks of an unchanged token against unchanged
//! keys and options give the same answer. Only the time checks (`exp`, `nbf`) can change; they
//! are redone on every hit, and any hit that is not clearly still valid goes through the full
//! verification again. An entry is tied to the remote key list it was verified with, so a JWKS
//! rotation invalidates it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::Value;

use crate::bindings::weir::policy::jwt::{Host, VerifyError, VerifyOptions};
use crate::error::RuntimeError;
use crate::host::http::HttpClient;
use crate::state::HostState;

/// Tokens longer than this are refused unparsed.
pub const MAX_TOKEN: usize = 16 * 1024;
const JWKS_TTL: Duration = Duration::from_secs(600);
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
const JWKS_MAX_BODY: usize = 1024 * 1024;
/// Verified-token cache bounds: tokens up to this size, this many entries in all and per token
/// (one per distinct verify options). The cache is emptied when full, so it holds at most
/// `CACHE_MAX_ENTRIES` tokens with their claims (each ≤ `CACHE_MAX_TOKEN` bytes).
const CACHE_MAX_TOKEN: usize = 2048;
const CACHE_MAX_ENTRIES: usize = 4096;
const CACHE_MAX_PER_TOKEN: usize = 8;

/// One `[key_sets.NAME]` table of the gateway config. Every source is optional; all keys found
/// are used together.
#[derive(Clone, Debug, Default)]
pub struct KeySetSpec {
    /// Shared secret for HS256/384/512 (raw bytes of the string); at least 32 bytes, as RFC 7518
    /// §3.2 requires (shorter secrets can be brute-forced from one token).
    pub hmac_secret: Option<String>,
    /// PEM public keys (RSA, EC or Ed25519), one per file.
    pub pem_files: Vec<PathBuf>,
    /// A JWK or a JWKS (`{"keys": [...]}`) file.
    pub jwks_file: Option<PathBuf>,
    /// JWKS endpoint, fetched on first use and cached.
    pub jwks_url: Option<String>,
}

struct KeyEntry {
    kid: Option<String>,
    algs: Vec<Algorithm>,
    key: DecodingKey,
}

const HMAC: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

fn key_from_pem(pem: &[u8]) -> Result<KeyEntry, String> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(KeyEntry {
            kid: None,
            algs: RSA.to_vec(),
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok(KeyEntry {
            kid: None,
            algs: vec![Algorithm::ES256, Algorithm::ES384],
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok(KeyEntry {
            kid: None,
            algs: vec![Algorithm::EdDSA],
            key,
        });
    }
    Err("not an RSA, EC or Ed25519 public key in PEM format".into())
}

fn key_from_jwk(jwk: &Jwk) -> Result<KeyEntry, String> {
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA.to_vec(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            ref c => return Err(format!("unsupported curve {c:?}")),
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        AlgorithmParameters::OctetKey(_) => HMAC.to_vec(),
    };
    // A JWK that names its algorithm is pinned to it.
    let algs = match jwk.common.key_algorithm {
        Some(ka) => {
            let alg = ka
                .to_string()
                .parse::<Algorithm>()
                .map_err(|_| format!("unsupported alg {ka}"))?;
            if !family.contains(&alg) {
                return Err(format!("alg {ka} does not match the key type"));
            }
            vec![alg]
        }
        None => family,
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok(KeyEntry {
        kid: jwk.common.key_id.clone(),
        algs,
        key,
    })
}

/// Parses a JWK or a JWKS; unusable keys are skipped (and logged), none at all is an error.
fn keys_from_jwks(text: &[u8], origin: &str) -> Result<Vec<KeyEntry>, String> {
    let value: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let jwks: Vec<Jwk> = if value.get("keys").is_some() {
        serde_json::from_value::<JwkSet>(value)
            .map_err(|e| format!("not a JWKS: {e}"))?
            .keys
    } else {
        vec![serde_json::from_value::<Jwk>(value).map_err(|e| format!("not a JWK: {e}"))?]
    };
    let mut out = Vec::new();
    for jwk in &jwks {
        match key_from_jwk(jwk) {
            Ok(k) => out.push(k),
            Err(e) => tracing::warn!(origin, kid = ?jwk.common.key_id, "JWK skipped: {e}"),
        }
    }
    if out.is_empty() {
        return Err("no usable key".into());
    }
    Ok(out)
}

#[derive(Default)]
struct RemoteState {
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

struct Remote {
    url: String,
    keys: RwLock<Arc<Vec<KeyEntry>>>,
    /// Serialises fetches (single flight) and holds their bookkeeping.
    state: tokio::sync::Mutex<RemoteState>,
}

struct KeySet {
    static_keys: Vec<KeyEntry>,
    /// Shared with the key sets of the next reload while the URL stays the same, so a reload
    /// keeps the fetched keys (and the fallback to them when the JWKS endpoint is down).
    remote: Option<Arc<Remote>>,
}

/// Every configured key set, by name.
pub(crate) struct KeySets {
    sets: HashMap<String, KeySet>,
    http: HttpClient,
    verified: Mutex<VerifiedCache>,
}

#[derive(Default)]
struct VerifiedCache {
    by_token: HashMap<Box<str>, Vec<Verified>>,
    /// Entries over every token.
    entries: usize,
}

/// A token that passed verification under `opts`, with what a later hit must re-check.
struct Verified {
    opts: VerifyOptions,
    claims: String,
    exp: u64,
    nbf: Option<u64>,
    /// The remote key list it was verified against (`None` for a set without `jwks_url`).
    remote_keys: Option<Arc<Vec<KeyEntry>>>,
}

fn same_options(a: &VerifyOptions, b: &VerifyOptions) -> bool {
    a.key_set == b.key_set
        && a.algorithms == b.algorithms
        && a.issuer == b.issuer
        && a.audience == b.audience
        && a.required_claims == b.required_claims
        && a.leeway_s == b.leeway_s
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl std::fmt::Debug for KeySets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySets")
            .field("names", &self.sets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeySets {
    /// Loads every file-based key now, so a bad key file fails at start, not on a request.
    /// A remote set whose name and URL are unchanged from `previous` keeps its fetched keys.
    pub(crate) fn load(
        specs: &HashMap<String, KeySetSpec>,
        http: HttpClient,
        previous: Option<&KeySets>,
    ) -> Result<Self, RuntimeError> {
        let mut sets = HashMap::new();
        for (name, spec) in specs {
            let err = |reason: String| RuntimeError::KeySet {
                name: name.clone(),
                reason,
            };
            let mut static_keys = Vec::new();
            if let Some(secret) = &spec.hmac_secret {
                if secret.len() < 32 {
                    return Err(err("hmac_secret must be at least 32 bytes".into()));
                }
                static_keys.push(KeyEntry {
                    kid: None,
                    algs: HMAC.to_vec(),
                    key: DecodingKey::from_secret(secret.as_bytes()),
                });
            }
            for path in &spec.pem_files {
                let pem =
                    std::fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
                static_keys
                    .push(key_from_pem(&pem).map_err(|e| err(format!("{}: {e}", path.display())))?);
            }
            if let Some(path) = &spec.jwks_file {
                let text =
                    std::fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
                let origin = path.display().to_string();
                static_keys.extend(
                    keys_from_jwks(&text, &origin).map_err(|e| err(format!("{origin}: {e}")))?,
                );
            }
            let remote = match &spec.jwks_url {
                Some(url) => {
                    url.parse::<http::Uri>()
                        .map_err(|e| err(format!("jwks_url: {e}")))?;
                    let kept = previous
                        .and_then(|p| p.sets.get(name))
                        .and_then(|s| s.remote.as_ref())
                        .filter(|r| r.url == *url)
                        .cloned();
                    Some(kept.unwrap_or_else(|| {
                        Arc::new(Remote {
                            url: url.clone(),
                            keys: RwLock::new(Arc::new(Vec::new())),
                            state: tokio::sync::Mutex::new(RemoteState::default()),
                        })
                    }))
                }
                None => None,
            };
            if static_keys.is_empty() && remote.is_none() {
                return Err(err(
                    "no keys: set hmac_secret, pem_files, jwks_file or jwks_url".into(),
                ));
            }
            sets.insert(
                name.clone(),
                KeySet {
                    static_keys,
                    remote,
                },
            );
        }
        Ok(KeySets {
            sets,
            http,
            verified: Mutex::new(VerifiedCache::default()),
        })
    }

    /// The cached claims of `token` if it was verified under the same options and keys and is
    /// still clearly inside its validity window.
    fn cached(
        &self,
        token: &str,
        opts: &VerifyOptions,
        remote: Option<&Arc<Vec<KeyEntry>>>,
    ) -> Option<String> {
        let cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let now = unix_now();
        cache
            .by_token
            .get(token)?
            .iter()
            .find(|v| {
                same_options(&v.opts, opts)
                    && match (&v.remote_keys, remote) {
                        (None, None) => true,
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        _ => false,
                    }
            })
            .filter(|v| v.exp > now && v.nbf.is_none_or(|n| n <= now))
            .map(|v| v.claims.clone())
    }

    fn remember(&self, token: &str, entry: Verified) {
        if token.len() > CACHE_MAX_TOKEN {
            return;
        }
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.entries >= CACHE_MAX_ENTRIES {
            cache.by_token.clear();
            cache.entries = 0;
        }
        let list = cache.by_token.entry(Box::from(token)).or_default();
        let before = list.len();
        list.retain(|v| !same_options(&v.opts, &entry.opts));
        if list.len() >= CACHE_MAX_PER_TOKEN {
            list.remove(0);
        }
        list.push(entry);
        let after = list.len();
        cache.entries = (cache.entries + after).saturating_sub(before);
    }

    /// Refreshes a remote JWKS if it is stale, or if `want_kid` is unknown and the last attempt
    /// is old enough. Failures keep the previous keys.
    async fn refresh(&self, remote: &Remote, want_kid: Option<&str>) {
        let stale = |s: &RemoteState| s.fetched_at.is_none_or(|t| t.elapsed() >= JWKS_TTL);
        let has_kid = |kid: &str| {
            remote
                .keys
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|k| k.kid.as_deref() == Some(kid))
        };
        let mut st = remote.state.lock().await;
        let recently_tried = st
            .last_attempt
            .is_some_and(|t| t.elapsed() < JWKS_MIN_REFETCH);
        let need = (stale(&st) || want_kid.is_some_and(|k| !has_kid(k))) && !recently_tried;
        if !need {
            return;
        }
        st.last_attempt = Some(Instant::now());
        let fetched = self
            .http
            .get(&remote.url, JWKS_TIMEOUT, JWKS_MAX_BODY)
            .await
            .and_then(|(status, body)| {
                if status != 200 {
                    return Err(format!("HTTP status {status}"));
                }
                keys_from_jwks(&body, &remote.url)
            });
        match fetched {
            Ok(keys) => {
                *remote.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                st.fetched_at = Some(Instant::now());
                st.last_error = None;
            }
            Err(e) => {
                tracing::warn!(url = %remote.url, "JWKS fetch failed, keeping previous keys: {e}");
                st.last_error = Some(e);
            }
        }
    }

    /// Verifies `token`; returns the claims as JSON text.
    pub(crate) async fn verify(
        &self,
        token: &str,
        opts: &VerifyOptions,
    ) -> Result<String, VerifyError> {
        if token.len() > MAX_TOKEN {
            return Err(VerifyError::Malformed(format!(
                "token longer than {MAX_TOKEN} bytes"
            )));
        }
        let set = self.sets.get(&opts.key_set).ok_or_else(|| {
            VerifyError::KeySetUnavailable(format!("no key set named `{}`", opts.key_set))
        })?;
        // Refused before any JWKS fetch: a plugin's `init` probes for a key set with it.
        if token.is_empty() {
            return Err(VerifyError::Malformed("empty token".into()));
        }
        // Fast path: a token verified before under the same options and keys.
        if let Some(remote) = &set.remote {
            self.refresh(remote, None).await;
        }
        let current = set
            .remote
            .as_ref()
            .map(|r| r.keys.read().unwrap_or_else(|e| e.into_inner()).clone());
        if let Some(claims) = self.cached(token, opts, current.as_ref()) {
            return Ok(claims);
        }
        let header = parse_header(token)?;

        let remote_keys = match &set.remote {
            Some(remote) => {
                self.refresh(remote, header.kid.as_deref()).await;
                let keys = remote
                    .keys
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if keys.is_empty() && set.static_keys.is_empty() {
                    let st = remote.state.lock().await;
                    let why = st
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "not fetched yet".into());
                    return Err(VerifyError::KeySetUnavailable(why));
                }
                keys
            }
            None => Arc::new(Vec::new()),
        };
        let all: Vec<&KeyEntry> = set.static_keys.iter().chain(remote_keys.iter()).collect();

        // Allowed = pinned (or every algorithm of the set) ∩ algorithms the set's keys support.
        let alg = header
            .alg
            .parse::<Algorithm>()
            .map_err(|_| VerifyError::AlgorithmNotAllowed(header.alg.clone()))?;
        let pinned: Vec<Algorithm> = opts
            .algorithms
            .iter()
            .map(|a| {
                a.parse::<Algorithm>().map_err(|_| {
                    VerifyError::Malformed(format!("unknown algorithm `{a}` in verify options"))
                })
            })
            .collect::<Result<_, _>>()?;
        if !pinned.is_empty() && !pinned.contains(&alg) {
            return Err(VerifyError::AlgorithmNotAllowed(header.alg));
        }
        if !all.iter().any(|k| k.algs.contains(&alg)) {
            return Err(VerifyError::AlgorithmNotAllowed(format!(
                "{} (no key of this type in key set `{}`)",
                header.alg, opts.key_set
            )));
        }
        let candidates: Vec<&KeyEntry> = all
            .iter()
            .copied()
            .filter(|k| k.algs.contains(&alg))
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(VerifyError::UnknownKey);
        }

        let validation = validation(alg, opts);
        let mut last = VerifyError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(
                token,
                &key.key,
                &validation,
            ) {
                Ok(data) => {
                    for claim in &opts.required_claims {
                        if !data.claims.contains_key(claim) {
                            return Err(VerifyError::InvalidClaim(format!("{claim}: missing")));
                        }
                    }
                    let claims = serde_json::to_string(&data.claims)
                        .map_err(|e| VerifyError::Malformed(e.to_string()))?;
                    // Cached only with integer times (the hit check compares them to now).
                    let nbf = data.claims.get("nbf");
                    if let Some(exp) = data.claims.get("exp").and_then(Value::as_u64)
                        && nbf.is_none_or(Value::is_u64)
                    {
                        let remote_keys = set.remote.as_ref().map(|_| remote_keys.clone());
                        self.remember(
                            token,
                            Verified {
                                opts: opts.clone(),
                                claims: claims.clone(),
                                exp,
                                nbf: nbf.and_then(Value::as_u64),
                                remote_keys,
                            },
                        );
                    }
                    return Ok(claims);
                }
                Err(e) => match map_error(e.kind(), &header.alg) {
                    // Try the next key: with several keys and no `kid`, only one will match.
                    VerifyError::BadSignature => last = VerifyError::BadSignature,
                    other => return Err(other),
                },
            }
        }
        Err(last)
    }
}

fn validation(alg: Algorithm, opts: &VerifyOptions) -> Validation {
    let mut v = Validation::new(alg);
    v.algorithms = vec![alg];
    v.leeway = u64::from(opts.leeway_s);
    v.reject_tokens_expiring_in_less_than = 0;
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required: HashSet<String> = HashSet::from(["exp".to_string()]);
    if let Some(iss) = &opts.issuer {
        v.set_issuer(&[iss]);
        required.insert("iss".into());
    }
    if opts.audience.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&opts.audience);
        required.insert("aud".into());
    }
    for c in &opts.required_claims {
        if ["exp", "nbf", "aud", "iss", "sub"].contains(&c.as_str()) {
            required.insert(c.clone());
        }
    }
    v.required_spec_claims = required;
    v
}

fn map_error(kind: &ErrorKind, alg: &str) -> VerifyError {
    match kind {
        ErrorKind::InvalidSignature => VerifyError::BadSignature,
        ErrorKind::ExpiredSignature => VerifyError::Expired,
        ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
        ErrorKind::InvalidIssuer => {
            VerifyError::InvalidClaim("iss: not the expected issuer".into())
        }
        ErrorKind::InvalidAudience => VerifyError::InvalidClaim("aud: no accepted audience".into()),
        ErrorKind::InvalidSubject => VerifyError::InvalidClaim("sub: not accepted".into()),
        ErrorKind::MissingRequiredClaim(c) => VerifyError::InvalidClaim(format!("{c}: missing")),
        ErrorKind::InvalidClaimFormat(c) => VerifyError::InvalidClaim(format!("{c}: wrong type")),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => VerifyError::AlgorithmNotAllowed(alg.to_string()),
        other => VerifyError::Malformed(format!("{other:?}")),
    }
}

struct JoseHeader {
    alg: String,
    kid: Option<String>,
}

/// Reads the JOSE header ourselves, before jsonwebtoken does, to refuse `none` and `crit`
/// explicitly (jsonwebtoken would report `none` as a parse error and ignores `crit`).
fn parse_header(token: &str) -> Result<JoseHeader, VerifyError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed(
            "not a JWS compact token (header.payload.signature)".into(),
        ));
    };
    let raw = base64url_decode(h)
        .ok_or_else(|| VerifyError::Malformed("header is not base64url".into()))?;
    let value: Value =
        serde_json::from_slice(&raw).map_err(|e| VerifyError::Malformed(format!("header: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| VerifyError::Malformed("header is not a JSON object".into()))?;
    let alg = obj
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| VerifyError::Malformed("header has no `alg`".into()))?
        .to_string();
    if alg.eq_ignore_ascii_case("none") {
        return Err(VerifyError::AlgorithmNotAllowed(alg));
    }
    if let Some(crit) = obj.get("crit") {
        return Err(VerifyError::Malformed(format!(
            "unsupported critical header parameters: {crit}"
        )));
    }
    let kid = match obj.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(VerifyError::Malformed("`kid` is not a string".into())),
    };
    Ok(JoseHeader { alg, kid })
}

/// Unpadded base64url (RFC 7515 §2), strict: no padding, no other alphabet, no stray bits.
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    }
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.as_bytes().chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | val(c)?;
        }
        match chunk.len() {
            4 => out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]),
            3 => {
                if acc & 0b11 != 0 {
                    return None;
                }
                out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]);
            }
            2 => {
                if acc & 0b1111 != 0 {
                    return None;
                }
                out.push((acc >> 4) as u8);
            }
            _ => return None,
        }
    }
    Some(out)
}

impl Host for HostState {
    async fn verify(
        &mut self,
        token: String,
        options: VerifyOptions,
    ) -> Result<String, VerifyError> {
        self.host_call_begin();
        let plugin = self.plugin.clone();
        let r = plugin.key_sets.verify(&token, &options).await;
        self.host_call_end();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reload's key sets keep the JWKS fetched for an unchanged URL (and with it the fallback
    /// to those keys while the endpoint is down); a new URL starts afresh.
    #[test]
    fn a_reload_keeps_the_fetched_jwks_of_an_unchanged_url() {
        let spec = |url: &str| {
            HashMap::from([(
                "idp".to_string(),
                KeySetSpec {
                    jwks_url: Some(url.into()),
                    ..KeySetSpec::default()
                },
            )])
        };
        let http = HttpClient::new().unwrap();
        let first = KeySets::load(&spec("https://idp.test/jwks"), http.clone(), None).unwrap();
        let same =
            KeySets::load(&spec("https://idp.test/jwks"), http.clone(), Some(&first)).unwrap();
        let moved = KeySets::load(&spec("https://other.test/jwks"), http, Some(&first)).unwrap();
        let remote = |k: &KeySets| k.sets["idp"].remote.clone().unwrap();
        assert!(Arc::ptr_eq(&remote(&first), &remote(&same)));
        assert!(!Arc::ptr_eq(&remote(&first), &remote(&moved)));
    }

    #[test]
    fn base64url_roundtrip_cases() {
        assert_eq!(base64url_decode("").unwrap(), b"");
        assert_eq!(base64url_decode("Zg").unwrap(), b"f");
        assert_eq!(base64url_decode("Zm8").unwrap(), b"fo");
        assert_eq!(base64url_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(
            base64url_decode("eyJhbGciOiJIUzI1NiJ9").unwrap(),
            br#"{"alg":"HS256"}"#
        );
        assert_eq!(base64url_decode("-_8").unwrap(), [0xfb, 0xff]);
        assert!(base64url_decode("Zg==").is_none());
        assert!(base64url_decode("Z").is_none());
        assert!(base64url_decode("Zh").is_none(), "stray bits");
        assert!(base64url_decode("Zm9v+").is_none());
    }

    #[test]
    fn header_rejects_none_and_crit() {
        // {"alg":"none"}
        assert!(
            matches!(parse_header("eyJhbGciOiJub25lIn0.e30."), Err(VerifyError::AlgorithmNotAllowed(a)) if a == "none")
        );
        // {"alg":"HS256","crit":["exp"]}
        assert!(matches!(
            parse_header("eyJhbGciOiJIUzI1NiIsImNyaXQiOlsiZXhwIl19.e30.x"),
            Err(VerifyError::Malformed(m)) if m.contains("critical")
        ));
        assert!(matches!(
            parse_header("a.b"),
            Err(VerifyError::Malformed(_))
        ));
        let h = parse_header("eyJhbGciOiJIUzI1NiIsImtpZCI6ImsxIn0.e30.x").unwrap();
        assert_eq!((h.alg.as_str(), h.kid.as_deref()), ("HS256", Some("k1")));
    }
}

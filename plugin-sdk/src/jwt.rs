//! JWT verification by the gateway, against key sets defined in its config (`[key_sets.NAME]`).
//!
//! The signature check, key rotation (JWKS) and the time claims are the gateway's job, so a
//! plugin never handles key material:
//!
//! ```no_run
//! use weir_plugin_sdk::jwt::{self, VerifyOptions};
//! let opts = VerifyOptions { key_set: "auth0".into(), algorithms: vec!["RS256".into()], ..Default::default() };
//! match jwt::verify("eyJ…", &opts) {
//!     Ok(claims) => { let _sub = claims.str("sub"); }
//!     Err(e) => { let _why = e.to_string(); }
//! }
//! ```

use std::fmt;

use serde_json::{Map, Value};

use crate::backend;

/// What the token must satisfy besides a valid signature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Name of a `[key_sets.NAME]` table in the gateway config.
    pub key_set: String,
    /// Pinned algorithms, e.g. `["RS256"]`. Empty = every algorithm of the key set's keys.
    pub algorithms: Vec<String>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Accept if the token's `aud` contains any of these; empty = `aud` not checked.
    pub audience: Vec<String>,
    /// Claims that must be present (`exp` is always required).
    pub required_claims: Vec<String>,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds.
    pub leeway_s: u32,
}

/// Why a token was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// Not a JWT, or undecodable header/claims.
    Malformed(String),
    /// The signature does not match.
    BadSignature,
    /// No key in the key set matches the token's `kid`.
    UnknownKey,
    /// The token's `alg` is not pinned.
    AlgorithmNotAllowed(String),
    /// `exp` has passed.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// A claim is missing or wrong (`iss`, `aud`, a required claim).
    InvalidClaim(String),
    /// The key set could not be loaded (e.g. JWKS fetch failed, nothing cached).
    KeySetUnavailable(String),
}

impl VerifyError {
    /// True when the gateway, not the token, is at fault (answer 503 rather than 401).
    pub fn is_server_side(&self) -> bool {
        matches!(self, VerifyError::KeySetUnavailable(_))
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::Malformed(m) => write!(f, "malformed token: {m}"),
            VerifyError::BadSignature => f.write_str("bad signature"),
            VerifyError::UnknownKey => f.write_str("unknown signing key"),
            VerifyError::AlgorithmNotAllowed(a) => write!(f, "algorithm {a} not allowed"),
            VerifyError::Expired => f.write_str("token expired"),
            VerifyError::NotYetValid => f.write_str("token not yet valid"),
            VerifyError::InvalidClaim(c) => write!(f, "invalid claim: {c}"),
            VerifyError::KeySetUnavailable(m) => write!(f, "key set unavailable: {m}"),
        }
    }
}

impl std::error::Error for VerifyError {}

/// The verified claims of a token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims(pub Map<String, Value>);

impl Claims {
    /// Parses claims JSON text (must be an object).
    pub fn from_json(text: &str) -> Result<Self, VerifyError> {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Ok(Claims(map)),
            Ok(_) => Err(VerifyError::Malformed(
                "claims are not a JSON object".into(),
            )),
            Err(e) => Err(VerifyError::Malformed(format!("claims are not JSON: {e}"))),
        }
    }

    /// The raw claim `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// Claim `name` if it is a string.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }

    /// Claim `name` rendered as a header-friendly string: strings as is, arrays of strings
    /// space-joined, numbers and booleans as JSON text, objects as compact JSON.
    pub fn display(&self, name: &str) -> Option<String> {
        Some(match self.0.get(name)? {
            Value::String(s) => s.clone(),
            Value::Array(items) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            Value::Null => return None,
            // Straight to text: `Value`'s Display goes through the JSON serializer.
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => if *b { "true" } else { "false" }.to_string(),
            other => other.to_string(),
        })
    }

    /// The token's scopes: the space-separated `scope` claim, or the `scp` array/string.
    pub fn scopes(&self) -> Vec<String> {
        let from = |v: &Value| -> Vec<String> {
            match v {
                Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
                Value::Array(a) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
                _ => Vec::new(),
            }
        };
        self.0
            .get("scope")
            .or_else(|| self.0.get("scp"))
            .map(from)
            .unwrap_or_default()
    }
}

/// True when the gateway has no `[key_sets.NAME]` called `name`: for a plugin's `init`, so a
/// typo fails `weir validate` and the reload instead of every request with a 503.
pub fn key_set_missing(name: &str) -> bool {
    backend::jwt_key_set_missing(name)
}

/// Verifies `token` and returns its claims.
pub fn verify(token: &str, options: &VerifyOptions) -> Result<Claims, VerifyError> {
    let text = backend::jwt_verify(token, options)?;
    Claims::from_json(&text)
}

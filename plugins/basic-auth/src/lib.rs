//! `basic-auth`: HTTP Basic authentication against users listed in the config.
//!
//! Each user has either `password_sha256` (hex SHA-256 of the password, e.g.
//! `printf %s 'secret' | sha256sum`) or, for demos only, a plain `password`. Passwords are
//! compared as SHA-256 digests in constant time. The user name becomes the context `consumer`
//! (and its groups `consumer.groups`). Unsalted SHA-256 is weak against offline guessing if the
//! config leaks: prefer `jwt-auth` or `api-key-auth` for anything beyond internal tools.

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use weir_plugin_sdk::prelude::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserConfig {
    password_sha256: Option<String>,
    password: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
}

fn default_true() -> bool {
    true
}

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    users: BTreeMap<String, UserConfig>,
    realm: Option<String>,
    /// Remove the `Authorization` header before proxying.
    #[serde(default = "default_true")]
    hide_credentials: bool,
}

struct User {
    digest: [u8; 32],
    groups: Vec<String>,
}

/// The Basic authentication policy.
pub struct BasicAuth {
    users: BTreeMap<String, User>,
    challenge: String,
    hide_credentials: bool,
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Equality whose time does not depend on where the inputs differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Standard base64 (with or without padding), as used by the Basic scheme.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be padding zeros, and a single leftover char is not valid base64.
    (bits < 6 && acc == 0).then_some(out)
}

impl BasicAuth {
    fn unauthorized(&self, detail: &str) -> Action {
        metrics::counter_add("basic_auth_rejected_total", &[], 1);
        Response::problem(401, "Unauthorized", detail)
            .with_header("www-authenticate", &self.challenge)
            .into()
    }

    /// `(user, password)` from `Authorization: Basic …`.
    fn credentials(req: &Request) -> Option<(String, Vec<u8>)> {
        let value = req.header("authorization")?.trim();
        let (scheme, encoded) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64_decode(encoded.trim())?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
        Some((user, decoded[colon + 1..].to_vec()))
    }
}

impl Policy for BasicAuth {
    type Config = Config;

    fn new(cfg: Config) -> Result<Self, String> {
        if cfg.users.is_empty() {
            return Err("users: at least one user is required".into());
        }
        let mut users = BTreeMap::new();
        for (name, u) in cfg.users {
            if name.is_empty() || name.contains(':') {
                return Err(format!(
                    "users.{name}: a user name must be non-empty without ':'"
                ));
            }
            let digest = match (u.password_sha256, u.password) {
                (Some(hex_digest), None) => {
                    let bytes = hex::decode(hex_digest.trim())
                        .map_err(|_| format!("users.{name}.password_sha256: not hex"))?;
                    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                        format!("users.{name}.password_sha256: expected 64 hex digits")
                    })?
                }
                (None, Some(plain)) => sha256(plain.as_bytes()),
                _ => {
                    return Err(format!(
                        "users.{name}: set exactly one of password_sha256 or password"
                    ));
                }
            };
            users.insert(
                name,
                User {
                    digest,
                    groups: u.groups,
                },
            );
        }
        let realm = cfg.realm.unwrap_or_else(|| "weir".into());
        if realm.contains('"') || realm.contains('\\') {
            return Err("realm must not contain quotes or backslashes".into());
        }
        Ok(Self {
            users,
            challenge: format!("Basic realm=\"{realm}\", charset=\"UTF-8\""),
            hide_credentials: cfg.hide_credentials,
        })
    }

    fn info(&self) -> PluginInfo {
        PluginInfo::default()
            .phases(Phases::REQUEST)
            .reads_headers(&["authorization"])
    }

    fn on_request(&self, req: &Request) -> Action {
        let Some((name, password)) = Self::credentials(req) else {
            return self.unauthorized("missing or malformed Basic credentials");
        };
        let given = sha256(&password);
        // Hash and compare even for unknown users so timing does not reveal user names.
        let (expected, user) = match self.users.get(&name) {
            Some(u) => (u.digest, Some(u)),
            None => ([0u8; 32], None),
        };
        let matches = ct_eq(&given, &expected);
        let Some(user) = user.filter(|_| matches) else {
            log::info("basic auth failed", &[("user", &name)]);
            return self.unauthorized("invalid user name or password");
        };
        context::set("consumer", &name);
        if !user.groups.is_empty() {
            context::set("consumer.groups", &user.groups.join(","));
        }
        let mut edits = RequestEdits::default();
        if self.hide_credentials {
            edits = edits.remove_header("authorization");
        }
        Action::Continue(edits)
    }
}

export_policy!(BasicAuth);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::Harness;

    /// SHA-256("abc"), FIPS 180-2 test vector: what `sha256sum` prints for the password `abc`.
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn basic(user_pass: &str) -> String {
        // Encoder for tests only (the plugin never encodes).
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let b = user_pass.as_bytes();
        let mut s = String::new();
        for chunk in b.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |a, (i, &x)| a | (u32::from(x) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        format!("Basic {s}")
    }

    fn harness() -> Harness<BasicAuth> {
        let digest = hex::encode(sha256(b"s3cret"));
        Harness::<BasicAuth>::new(json!({
            "users": {
                "alice": { "password_sha256": digest, "groups": ["admin"] },
                "bob": { "password": "hunter2" },
                "carl": { "password_sha256": ABC.to_uppercase() }
            }
        }))
        .unwrap()
    }

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "abcd", "alice:s3cret", "üñí:côdé"] {
            let enc = basic(s);
            let b64 = enc.trim_start_matches("Basic ");
            assert_eq!(base64_decode(b64).unwrap(), s.as_bytes(), "{s}");
            assert_eq!(
                base64_decode(b64.trim_end_matches('=')).unwrap(),
                s.as_bytes()
            );
        }
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("ab!c").is_none());
    }

    #[test]
    fn valid_users_authenticate() {
        let mut h = harness();
        let a = h.on_request(Request::get("/").header("authorization", &basic("alice:s3cret")));
        assert_eq!(a.edits().unwrap().remove_headers, vec!["authorization"]);
        assert_eq!(h.context_get("consumer").as_deref(), Some("alice"));
        assert_eq!(h.context_get("consumer.groups").as_deref(), Some("admin"));
        let a = h.on_request(Request::get("/").header("authorization", &basic("bob:hunter2")));
        assert!(a.is_continue());
        assert_eq!(h.context_get("consumer").as_deref(), Some("bob"));
        let a = h.on_request(Request::get("/").header("authorization", &basic("carl:abc")));
        assert!(a.is_continue());
    }

    #[test]
    fn bad_credentials_get_401_basic_challenge() {
        let mut h = harness();
        for auth in [
            None,
            Some(basic("alice:wrong")),
            Some(basic("carol:s3cret")),
            Some(basic("no-colon")),
            Some("Bearer x".to_string()),
            Some("Basic !!!".to_string()),
        ] {
            let mut req = Request::get("/");
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            let a = h.on_request(req);
            let r = a.response().unwrap_or_else(|| panic!("{auth:?} accepted"));
            assert_eq!(r.status, 401);
            assert_eq!(
                r.header("www-authenticate"),
                Some("Basic realm=\"weir\", charset=\"UTF-8\"")
            );
        }
        assert!(h.context().is_empty());
    }

    #[test]
    fn config_errors() {
        let err = |v: Value| Harness::<BasicAuth>::new(v).err().unwrap();
        assert!(err(json!({ "users": {} })).contains("at least one"));
        assert!(err(json!({ "users": { "a": {} } })).contains("exactly one"));
        assert!(
            err(json!({ "users": { "a": { "password": "x", "password_sha256": "00" } } }))
                .contains("exactly one")
        );
        assert!(err(json!({ "users": { "a": { "password_sha256": "zz" } } })).contains("not hex"));
        assert!(err(json!({ "users": { "a": { "password_sha256": "00ff" } } })).contains("64 hex"));
        assert!(err(json!({ "users": { "a:b": { "password": "x" } } })).contains("without ':'"));
    }
}

//! Attack tokens against the jwt-auth plugin through a real gateway, with key sets from the
//! config (an HMAC secret, an RSA PEM key, and a JWKS file whose key has a `kid`): `alg: none`
//! in every spelling, key confusion, `kid` tricks, `crit` extensions, embedded keys, claims of
//! the wrong type, malformed structure, and tokens too large for the host or for the head.
//!
//! `policy_e2e` covers the ordinary rejections (expired, bad signature, wrong aud/iss, the
//! plain `alg: none` and the basic HS256-with-the-RSA-key confusion); these go further.

#![allow(clippy::unwrap_used)]

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use std::path::Path;
use weir_testkit::extra_b::exchange;
use weir_testkit::extra_c::{b64url, hs256, now, plugin, rs256, rsa_keypair, toml_path};
use weir_testkit::extra_f::PathLogUpstream;
use weir_testkit::{Resp, TestClient, TestGateway};

const SECRET: &str = "hostile-jwt-hmac-secret-long-enough-0123456789";
const KID: &str = "rsa-1";

fn claims() -> Value {
    let t = now();
    json!({ "sub": "alice", "iat": t, "exp": t + 600 })
}

/// A token with exactly this header and these claims, signed with `key` as `alg`.
fn forge(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(signing_input.as_bytes(), key, alg).unwrap();
    format!("{signing_input}.{sig}")
}

/// `header.claims.` with an arbitrary signature part.
fn unsigned(header: &str, claims: &Value, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        b64url(header.as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// The RSA public key as a JWK with `kid`, built from `openssl rsa -modulus`.
fn rsa_jwk(public_pem: &Path) -> Value {
    let out = std::process::Command::new("openssl")
        .args(["rsa", "-pubin", "-noout", "-modulus", "-in"])
        .arg(public_pem)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text.trim().strip_prefix("Modulus=").unwrap();
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    json!({ "kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256", "n": b64url(&n), "e": "AQAB" })
}

struct Fixture {
    gw: TestGateway,
    up: PathLogUpstream,
    rsa_private: Vec<u8>,
    rsa_public: Vec<u8>,
}

/// Routes: `/hs` (key set `main`: HMAC + RSA PEM, pinned HS256), `/rs` (key set `rsa`: the RSA
/// PEM only, no pinned algorithms), `/kid` (key set `jwks`: the JWKS file only, pinned RS256).
async fn fixture(limits: &str) -> Fixture {
    let up = PathLogUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (rsa_private, rsa_public) = rsa_keypair(dir.path());
    let jwks = json!({ "keys": [rsa_jwk(&dir.path().join("rsa.pub.pem"))] });
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
    let jwt = toml_path(&plugin("jwt_auth"));
    let route = |name: &str, set: &str, algs: &str| {
        format!(
            r#"
[[routes]]
name = "{name}"
match = {{ path_prefix = "/{name}" }}
upstream = "echo"
plugins = [{{ name = "jwt-auth", wasm = {jwt}, config = {{ key_set = "{set}", algorithms = {algs}, leeway = 0 }} }}]
"#
        )
    };
    let toml = format!(
        r#"
version = 1

[limits]
{limits}

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[upstreams.echo]
targets = [{{ url = "{url}" }}]

[key_sets.main]
hmac_secret = "{SECRET}"
pem = ["rsa.pub.pem"]

[key_sets.rsa]
pem = ["rsa.pub.pem"]

[key_sets.jwks]
jwks = "jwks.json"
{hs}{rs}{kid}"#,
        url = up.url(),
        hs = route("hs", "main", r#"["HS256"]"#),
        rs = route("rs", "rsa", "[]"),
        kid = route("kid", "jwks", r#"["RS256"]"#),
    );
    let gw = TestGateway::start_in(dir, &toml).await.unwrap();
    Fixture {
        gw,
        up,
        rsa_private,
        rsa_public,
    }
}

impl Fixture {
    async fn call(&self, path: &str, token: &str) -> Resp {
        TestClient::new()
            .get_with(
                &self.gw.url(path),
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await
    }

    /// 401 from jwt-auth with a Bearer `invalid_token` challenge whose detail names `why`.
    async fn rejected(&self, case: &str, path: &str, token: &str, why: &str) {
        let r = self.call(path, token).await;
        assert_eq!(r.status, 401, "{case}: {}", r.text());
        assert!(
            r.header("www-authenticate")
                .is_some_and(|c| c.starts_with("Bearer ") && c.contains("invalid_token")),
            "{case}: {:?}",
            r.headers
        );
        let detail = r.json()["detail"].as_str().unwrap_or_default().to_string();
        assert!(
            detail.to_lowercase().contains(&why.to_lowercase()),
            "{case}: detail {detail:?} should mention {why:?}"
        );
    }

    fn rs_key(&self) -> EncodingKey {
        EncodingKey::from_rsa_pem(&self.rsa_private).unwrap()
    }

    /// Valid tokens still pass on every route, and only they reached the upstream.
    async fn still_serves(&self, rejected_reached: usize) {
        let hs = hs256(SECRET.as_bytes(), &claims());
        assert_eq!(self.call("/hs/ok", &hs).await.status, 200);
        assert_eq!(
            self.call("/rs/ok", &rs256(&self.rsa_private, &claims()))
                .await
                .status,
            200
        );
        let with_kid = forge(
            &json!({ "alg": "RS256", "typ": "JWT", "kid": KID }),
            &claims(),
            &self.rs_key(),
            Algorithm::RS256,
        );
        assert_eq!(self.call("/kid/ok", &with_kid).await.status, 200);
        let paths = self.up.paths();
        assert_eq!(
            paths.len(),
            rejected_reached + 3,
            "rejected tokens reached the upstream: {paths:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_in_every_spelling_is_401() {
    let f = fixture("").await;
    let c = claims();
    let valid_sig = hs256(SECRET.as_bytes(), &c)
        .rsplit('.')
        .next()
        .unwrap()
        .to_string();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
        for (sig_case, sig) in [
            ("empty", ""),
            ("garbage", "c2ln"),
            ("valid HS256", &valid_sig),
        ] {
            for path in ["/hs/a", "/rs/a", "/kid/a"] {
                let case = format!("alg {alg}, {sig_case} signature, {path}");
                f.rejected(&case, path, &unsigned(&header, &c, sig), "")
                    .await;
            }
        }
    }
    // No alg at all, and alg of the wrong JSON type.
    for header in [
        r#"{"typ":"JWT"}"#,
        r#"{"alg":null}"#,
        r#"{"alg":["HS256"]}"#,
    ] {
        f.rejected(header, "/hs/a", &unsigned(header, &c, &valid_sig), "")
            .await;
    }
    f.still_serves(0).await;
}

/// HS256 tokens whose HMAC key is the RSA public key (as PEM text, or as the DER inside it),
/// sent where RS256 is accepted. The key set's RSA key never acts as an HMAC secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_confusion_is_401() {
    let f = fixture("").await;
    let pem = f.rsa_public.clone();
    let der: Vec<u8> = {
        let body: String = String::from_utf8(pem.clone())
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        base64_decode(&body)
    };
    for (key_case, key) in [("PEM text", pem.as_slice()), ("DER", der.as_slice())] {
        let k = EncodingKey::from_secret(key);
        for (path, header) in [
            ("/rs/a", json!({ "alg": "HS256", "typ": "JWT" })),
            (
                "/kid/a",
                json!({ "alg": "HS256", "typ": "JWT", "kid": KID }),
            ),
        ] {
            let t = forge(&header, &claims(), &k, Algorithm::HS256);
            f.rejected(
                &format!("HS256 with the RSA key as {key_case} on {path}"),
                path,
                &t,
                "HS256",
            )
            .await;
        }
        // On the route whose key set does hold an HMAC secret, it is still the wrong secret.
        let t = forge(&json!({ "alg": "HS256" }), &claims(), &k, Algorithm::HS256);
        f.rejected(
            &format!("HS256 with the RSA key as {key_case} on /hs"),
            "/hs/a",
            &t,
            "signature",
        )
        .await;
    }
    // And the other way round: an RS256 token on the HMAC-pinned route.
    let t = rs256(&f.rsa_private, &claims());
    f.rejected("RS256 on an HS256-pinned route", "/hs/a", &t, "RS256")
        .await;
    f.still_serves(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kid_tricks_are_401() {
    let f = fixture("").await;
    let c = claims();
    // Path traversal to an empty or known file, signed with what that file would contain.
    for kid in [
        "../../../../../../dev/null",
        "/dev/null",
        "../../../../etc/hostname",
    ] {
        let t = forge(
            &json!({ "alg": "HS256", "kid": kid }),
            &c,
            &EncodingKey::from_secret(b""),
            Algorithm::HS256,
        );
        f.rejected(
            &format!("kid {kid} (HS256, empty key) on /hs"),
            "/hs/a",
            &t,
            "signature",
        )
        .await;
        f.rejected(&format!("kid {kid} (HS256) on /kid"), "/kid/a", &t, "HS256")
            .await;
        let t = forge(
            &json!({ "alg": "RS256", "kid": kid }),
            &c,
            &f.rs_key(),
            Algorithm::RS256,
        );
        f.rejected(&format!("kid {kid} (RS256) on /kid"), "/kid/a", &t, "key")
            .await;
    }
    // Unknown kid, injection-shaped kid, a 10 KiB kid: our own valid RS256 signature, but no
    // key in the JWKS has that id.
    let long_kid = "k".repeat(10 * 1024);
    for kid in [
        "unknown",
        "rsa-1' OR '1'='1",
        "rsa-1\u{0}",
        long_kid.as_str(),
    ] {
        let t = forge(
            &json!({ "alg": "RS256", "kid": kid }),
            &c,
            &f.rs_key(),
            Algorithm::RS256,
        );
        f.rejected(
            &format!("kid {:.20}", kid),
            "/kid/a",
            &t,
            "unknown signing key",
        )
        .await;
    }
    // kid of the wrong JSON type.
    for kid in [json!(1), json!(["rsa-1"]), json!({ "id": "rsa-1" })] {
        let t = forge(
            &json!({ "alg": "RS256", "kid": kid }),
            &c,
            &f.rs_key(),
            Algorithm::RS256,
        );
        f.rejected(&format!("kid {kid}"), "/kid/a", &t, "kid").await;
    }
    f.still_serves(0).await;
}

/// RFC 7515 §4.1.11: a recipient that does not understand a `crit` extension must reject the
/// token. The host implements none, so any `crit` is refused, even with a valid signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crit_header_is_401() {
    let f = fixture("").await;
    let k = EncodingKey::from_secret(SECRET.as_bytes());
    for header in [
        json!({ "alg": "HS256", "crit": ["exp"] }),
        json!({ "alg": "HS256", "crit": ["x-weir-unknown"], "x-weir-unknown": true }),
        json!({ "alg": "HS256", "b64": false, "crit": ["b64"] }),
        json!({ "alg": "HS256", "crit": [] }),
        json!({ "alg": "HS256", "crit": "exp" }),
    ] {
        let t = forge(&header, &claims(), &k, Algorithm::HS256);
        f.rejected(&format!("{header}"), "/hs/a", &t, "critical")
            .await;
    }
    f.still_serves(0).await;
}

/// A key carried in the token's own header (`jwk`) or pointed to by it (`jku`, `x5u`) must
/// never be used: only the gateway's key sets count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_embedded_in_the_token_are_ignored() {
    let f = fixture("").await;
    let attacker = tempfile::tempdir().unwrap();
    let (evil_private, _) = rsa_keypair(attacker.path());
    let evil_jwk = rsa_jwk(&attacker.path().join("rsa.pub.pem"));
    let evil = EncodingKey::from_rsa_pem(&evil_private).unwrap();
    for (case, header) in [
        ("embedded jwk", json!({ "alg": "RS256", "jwk": evil_jwk })),
        (
            "embedded jwk with our kid",
            json!({ "alg": "RS256", "kid": KID, "jwk": evil_jwk }),
        ),
        (
            "jku",
            json!({ "alg": "RS256", "kid": KID, "jku": "http://127.0.0.1:9/jwks.json" }),
        ),
        (
            "x5u",
            json!({ "alg": "RS256", "x5u": "http://127.0.0.1:9/cert.pem" }),
        ),
    ] {
        let t = forge(&header, &claims(), &evil, Algorithm::RS256);
        for path in ["/rs/a", "/kid/a"] {
            f.rejected(&format!("{case} on {path}"), path, &t, "signature")
                .await;
        }
    }
    f.still_serves(0).await;
}

/// `exp`/`nbf` must be numbers (RFC 7519 §2 NumericDate); jsonwebtoken < 10.3 let a string
/// `exp` bypass validation. Also a missing `exp` (always required here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_of_the_wrong_type_are_401() {
    let f = fixture("").await;
    let t = now();
    let k = EncodingKey::from_secret(SECRET.as_bytes());
    let h = json!({ "alg": "HS256", "typ": "JWT" });
    let cases = [
        (
            "string exp",
            json!({ "sub": "a", "exp": (t + 600).to_string() }),
            "exp",
        ),
        ("string past exp", json!({ "sub": "a", "exp": "1" }), "exp"),
        ("null exp", json!({ "sub": "a", "exp": null }), "exp"),
        ("array exp", json!({ "sub": "a", "exp": [t + 600] }), "exp"),
        (
            "object exp",
            json!({ "sub": "a", "exp": { "$gt": 0 } }),
            "exp",
        ),
        ("missing exp", json!({ "sub": "a" }), "exp"),
        (
            "string nbf",
            json!({ "sub": "a", "exp": t + 600, "nbf": "0" }),
            "nbf",
        ),
        (
            "string future nbf",
            json!({ "sub": "a", "exp": t + 600, "nbf": (t + 600).to_string() }),
            "nbf",
        ),
    ];
    for (case, claims, why) in cases {
        let token = forge(&h, &claims, &k, Algorithm::HS256);
        f.rejected(case, "/hs/a", &token, why).await;
    }
    f.still_serves(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tokens_are_401() {
    let f = fixture("").await;
    let good = hs256(SECRET.as_bytes(), &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        ("signature stripped", format!("{}.{}.", parts[0], parts[1])),
        ("two parts", format!("{}.{}", parts[0], parts[1])),
        ("four parts", format!("{good}.{}", parts[2])),
        ("padding in signature", format!("{good}==")),
        (
            "standard base64 chars",
            good.replace('-', "+").replace('_', "/") + "+/",
        ),
        (
            "header not JSON",
            format!("bm90IGpzb24.{}.{}", parts[1], parts[2]),
        ),
        ("empty", String::new()),
        ("dots only", "..".to_string()),
        ("spaces inside", format!("{} {}", &good[..10], &good[10..])),
    ];
    for (case, token) in &cases {
        if token == &good {
            continue;
        }
        let r = f.call("/hs/a", token).await;
        assert_eq!(r.status, 401, "{case}: {}", r.text());
    }
    f.still_serves(0).await;
}

/// A 100 KiB bearer token. With the default 60 KiB head limit the header itself is refused by
/// the HTTP layer: 431 before any plugin runs. With the head limit raised to 256 KiB the
/// request gets through to jwt-auth, and the host refuses tokens over 16 KiB unparsed: 401.
/// A token just under 16 KiB of garbage is parsed and refused as malformed: 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_tokens_are_431_or_401() {
    let huge = format!(
        "{}.{}.{}",
        "a".repeat(50 * 1024),
        "b".repeat(50 * 1024),
        "c".repeat(10)
    );
    let f = fixture("").await;
    let req = format!(
        "GET /hs/a HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {huge}\r\nConnection: close\r\n\r\n"
    );
    let x = exchange(
        f.gw.addr(),
        req.as_bytes(),
        std::time::Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        x.responses().first().map(|r| r.status),
        Some(431),
        "{}",
        &x.text()[..x.text().len().min(300)]
    );
    f.still_serves(0).await;

    let f = fixture(r#"max_request_head = "256KiB""#).await;
    f.rejected("100 KiB token", "/hs/a", &huge, "longer than 16384")
        .await;
    let just_under = format!(
        "{}.{}.{}",
        "a".repeat(8000),
        "b".repeat(8000),
        "c".repeat(100)
    );
    f.rejected("16 KiB garbage token", "/hs/a", &just_under, "")
        .await;
    // A huge but validly signed token is refused the same way: size is checked first.
    let mut fat = claims();
    fat["pad"] = json!("p".repeat(20 * 1024));
    let fat = hs256(SECRET.as_bytes(), &fat);
    f.rejected(
        "validly signed 27 KiB token",
        "/hs/a",
        &fat,
        "longer than 16384",
    )
    .await;
    f.still_serves(0).await;
}

/// Standard base64 (for the DER inside a PEM).
fn base64_decode(s: &str) -> Vec<u8> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = A.iter().position(|a| *a == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

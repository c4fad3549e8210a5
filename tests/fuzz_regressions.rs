//! The fuzz targets on stable Rust: every file of the committed corpora (`fuzz/corpus/<target>/`)
//! is replayed through the same function the libFuzzer target calls (`fuzz/src/lib.rs`, included
//! below), then a seeded mutation loop derives up to 100k inputs per target from those seeds, so
//! CI exercises the properties without nightly. Bounded: `WEIR_FUZZ_ITERS` inputs (default
//! 100 000) or `WEIR_FUZZ_SECS` seconds (default 20) per target, whichever comes first;
//! `WEIR_FUZZ_SEED` changes the sequence. A failing input is printed and written to
//! `target/fuzz-failures/` so it can be added to the corpus as a regression seed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

#[path = "../fuzz/src/lib.rs"]
mod weir_fuzz;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = root().join("fuzz/corpus").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// Runs one input; a property violation is printed, saved, and returned as a one-line summary.
fn run_one(target: &str, data: &[u8], origin: &str) -> Option<String> {
    let r = catch_unwind(AssertUnwindSafe(|| weir_fuzz::run(target, data)));
    let e = r.err()?;
    let msg = e
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    let dir = root().join("target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("{target}-{:016x}", fnv(data)));
    let _ = std::fs::write(&file, data);
    eprintln!(
        "fuzz target {target} failed on {origin} (saved as {}):\n{msg}\ninput: {:?}\n",
        file.display(),
        String::from_utf8_lossy(data)
    );
    Some(format!(
        "{origin}: {}",
        msg.lines().next().unwrap_or_default()
    ))
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// SplitMix64: small, seedable, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens that matter to each target, spliced in by the mutator.
fn dictionary(target: &str) -> &'static [&'static str] {
    match target {
        "config" => &[
            "\n[[routes]]\n",
            "\n[upstreams.x]\n",
            "match = { path_prefix = \"/a\" }",
            "path_regex = \"(\"",
            "host = \"*.\"",
            "timeout = \"0s\"",
            "max_body = \"1kb\"",
            "= \"",
            "[",
            "]",
            "{",
            "}",
            "\"",
            "\n",
            "=",
            ",",
            "-1",
            "99999999999999999999",
            "strip_prefix = true",
            "rewrite = \"$1\"",
            "priority = ",
            "\"\\u0000\"",
        ],
        "path" => &[
            "/", "//", "/./", "/../", "..", ".", "%", "%2e", "%2E", "%2f", "%5c", "%00", "%zz",
            "%25", "%7e", "\\", "?", "#", ";", "é", "%c3%a9", "/%2e%2e/",
        ],
        "headers" => &[
            "\ncontent-length: ",
            "\ntransfer-encoding: chunked",
            "\nhost: a",
            "\nconnection: ",
            "\nte: trailers",
            "\nupgrade: websocket",
            "\nx-forwarded-for: ",
            "\nx-request-id: ",
            "\ntraceparent: 00-",
            "\nkeep-alive: 5",
            ", ",
            "10.0.0.1",
            "::1",
            "\\r\\n",
            "\\x00",
            "trusted",
            "upgrade",
            "h10",
            "h2",
        ],
        _ => &[
            "\nnext",
            "\nmethod ",
            "\npath ",
            "\nquery ",
            "\nbody ",
            "\nset ",
            "\nappend ",
            "\nremove ",
            "\nrespond ",
            "\nrespond-body ",
            "\nresponse ",
            "\nrsp-status ",
            "\nrsp-set ",
            "\nrsp-append ",
            "\nrsp-remove ",
            "\nrsp-body ",
            "\nrequest POST 5",
            "content-length: ",
            "transfer-encoding: ",
            "host: ",
            "connection: ",
            "chunked",
            "\\r\\n",
            "\\n",
            "\\x00",
            "/../",
            "%2f",
            "100",
            "101",
            "204",
            "304",
            "600",
            "0",
        ],
    }
}

fn mutate(rng: &mut Rng, seeds: &[(String, Vec<u8>)], dict: &[&str]) -> Vec<u8> {
    let mut d = seeds[rng.below(seeds.len())].1.clone();
    for _ in 0..=rng.below(4) {
        let at = rng.below(d.len() + 1);
        match rng.below(7) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = rng.next() as u8;
            }
            1 => {
                let n = 1 + rng.below(4);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(at..at, bytes);
            }
            2 if !d.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(d.len());
                d.drain(at.min(end)..end);
            }
            3 | 4 => {
                let tok = dict[rng.below(dict.len())].as_bytes().to_vec();
                d.splice(at..at, tok);
            }
            5 => {
                // Splice a piece of another seed.
                let other = &seeds[rng.below(seeds.len())].1;
                if !other.is_empty() {
                    let s = rng.below(other.len());
                    let e = (s + 1 + rng.below(64)).min(other.len());
                    d.splice(at..at, other[s..e].iter().copied());
                }
            }
            _ => {
                let n = rng.below(d.len() + 1);
                d.truncate(n.max(at.min(d.len())));
            }
        }
    }
    d.truncate(64 * 1024);
    d
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn replay_and_explore(target: &str) {
    let seeds = seeds(target);
    assert!(
        seeds.len() >= 3,
        "fuzz/corpus/{target} should hold the committed seeds"
    );
    let mut failures: Vec<String> = Vec::new();
    for (name, data) in &seeds {
        failures.extend(run_one(target, data, &format!("corpus file {name}")));
    }
    let iters = env_num("WEIR_FUZZ_ITERS", 100_000);
    let budget = Duration::from_secs(env_num("WEIR_FUZZ_SECS", 20));
    let seed = env_num("WEIR_FUZZ_SEED", 0x5745_4952) ^ fnv(target.as_bytes());
    let mut rng = Rng(seed);
    let dict = dictionary(target);
    let start = Instant::now();
    let mut done = 0u64;
    // Stop exploring after a few failures: they are usually the same bug.
    while done < iters && start.elapsed() < budget && failures.len() < 5 {
        let data = mutate(&mut rng, &seeds, dict);
        failures.extend(run_one(
            target,
            &data,
            &format!("mutation #{done} (seed {seed:#x})"),
        ));
        done += 1;
    }
    eprintln!(
        "{target}: {} seeds replayed, {done} mutated inputs in {:.1?} (seed {seed:#x})",
        seeds.len(),
        start.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{target}: {} failing inputs:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn fuzz_config() {
    replay_and_explore("config");
}

#[test]
fn fuzz_path() {
    replay_and_explore("path");
}

#[test]
fn fuzz_headers() {
    replay_and_explore("headers");
}

#[test]
fn fuzz_plugin_output() {
    replay_and_explore("plugin_output");
}

/// The wire checker itself must refuse what it exists to catch, or the targets prove nothing.
#[test]
fn wire_checker_refuses_invalid_messages() {
    use weir_fuzz::wire::{Kind, check};
    let ok_req = b"GET /a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc";
    assert_eq!(check(ok_req, Kind::Request, false), Ok(()));
    let chunked =
        b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    assert_eq!(check(chunked, Kind::Request, false), Ok(()));
    // Cut short, then closed: hyper aborted the message; no peer can take it as valid.
    assert_eq!(
        check(&ok_req[..ok_req.len() - 1], Kind::Request, true),
        Ok(())
    );
    let bad_requests: [(&[u8], &str); 11] = [
        (b"GET /a HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\nGET /b HTTP/1.1\r\n\r\n", "smuggled bytes"),
        (b"GET /a HTTP/1.1\r\nhost: x\r\nhost: y\r\n\r\n", "two hosts"),
        (b"GET /a HTTP/1.1\r\n\r\n", "no host"),
        (b"GET /a HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", "CL+TE"),
        (b"GET /a HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\na", "two CL"),
        (b"GET /a HTTP/1.1\r\nhost: x\r\ncontent-length: a\r\n\r\n", "bad CL"),
        (b"GET /a HTTP/1.1\r\nhost: x\r\nx: a\x01b\r\n\r\n", "control char"),
        (b"GET /a HTTP/1.1\r\nhost: x\r\n fold\r\n\r\n", "folding"),
        (b"GET a HTTP/1.1\r\nhost: x\r\n\r\n", "relative target"),
        (b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n", "TE not chunked"),
        (b"GET /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nab", "stuck mid-body"),
    ];
    for (bad, why) in bad_requests {
        assert!(check(bad, Kind::Request, false).is_err(), "accepted: {why}");
    }
    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi";
    assert_eq!(check(ok, Kind::Response, false), Ok(()));
    let close_delimited = b"HTTP/1.1 200 OK\r\n\r\nclose-delimited";
    assert_eq!(check(close_delimited, Kind::Response, true), Ok(()));
    let bad_responses: [(&[u8], &str); 5] = [
        (
            b"HTTP/1.1 100 Continue\r\n\r\n",
            "1xx and no final response",
        ),
        (b"HTTP/1.1 600 X\r\ncontent-length: 0\r\n\r\n", "status 600"),
        (
            b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
            "204 with a length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\nextra",
            "bytes after",
        ),
        (
            b"HTTP/1.1 200 OK\r\n\r\nno framing, connection kept",
            "unframed and not closed",
        ),
    ];
    for (bad, why) in bad_responses {
        assert!(
            check(bad, Kind::Response, false).is_err(),
            "accepted: {why}"
        );
    }
}

//! Helpers for the core integration tests (routing, balancing, admin, validate): config
//! boilerplate, counting which upstream answered, admin requests, and a strict parser for the
//! Prometheus/OpenMetrics text exposition format.

use crate::{Resp, TestClient, TestGateway};
use std::collections::{BTreeMap, HashMap};

/// `version`, one public listener and an admin listener, all on port 0.
pub const PREAMBLE: &str = r#"version = 1

[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"
"#;

/// Which test upstream answered: its `x-upstream` header (the echo service sets it).
pub fn served_by(r: &Resp) -> Option<String> {
    r.header("x-upstream").map(str::to_string)
}

/// Sends `n` sequential GETs and counts answers by the upstream that served them. Any answer
/// without `x-upstream` (a local reply) is counted under `"status:<code>"`.
pub async fn spread(
    client: &TestClient,
    url: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let r = client.get_with(url, headers).await;
        let key = served_by(&r).unwrap_or_else(|| format!("status:{}", r.status));
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// GET on the gateway's admin listener.
pub async fn admin_get(gw: &TestGateway, path: &str) -> Resp {
    TestClient::new()
        .get(&format!("http://{}{}", gw.admin(), path))
        .await
}

/// One sample line of the text exposition format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s
            .parse::<f64>()
            .map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// Parses `{a="x",b="y\"z"}` (the braces included); returns the labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s
        .strip_prefix('{')
        .ok_or_else(|| format!("expected '{{' in {s:?}"))?;
    loop {
        rest = rest.trim_start_matches(' ');
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("expected '=' in labels {s:?}"))?;
        let name = rest[..eq].trim();
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name} value is not quoted"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated label value in {s:?}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("duplicate label {name} in {s:?}"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err(format!("expected ',' or '}}' after label {name} in {s:?}"));
        }
    }
}

/// Parses the whole exposition text. Every non-comment line must be `name{labels} value` (or
/// `name value`), optionally followed by a timestamp or an OpenMetrics exemplar; `# EOF`, if
/// present, must be the last line. Any deviation is an error naming the line.
pub fn parse_metrics(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", i + 1);
        if line.is_empty() {
            continue;
        }
        if *line == "# EOF" {
            if lines[i + 1..].iter().any(|l| !l.is_empty()) {
                return Err(at("# EOF is not the last line".into()));
            }
            break;
        }
        if let Some(c) = line.strip_prefix('#') {
            let mut parts = c.trim_start().splitn(3, ' ');
            let kind = parts.next().unwrap_or("");
            if matches!(kind, "HELP" | "TYPE" | "UNIT") {
                let name = parts.next().unwrap_or("");
                if !valid_metric_name(name) {
                    return Err(at(format!("bad metric name in # {kind}")));
                }
            }
            continue;
        }
        // Drop an exemplar (` # {...} value`), which may follow the sample value.
        let line_no_ex = line.split(" # ").next().unwrap_or(line);
        let name_end = line_no_ex
            .find(['{', ' '])
            .ok_or_else(|| at("no value".into()))?;
        let name = &line_no_ex[..name_end];
        if !valid_metric_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line_no_ex[name_end..].starts_with('{') {
            parse_labels(&line_no_ex[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line_no_ex[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = parse_value(fields.next().ok_or_else(|| at("no value".into()))?).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<f64>()
                .map_err(|e| at(format!("bad timestamp: {e}")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// The value of the sample called `name` whose labels include every pair in `labels`, if
/// exactly one sample matches.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut hits = samples.iter().filter(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    });
    let first = hits.next()?;
    hits.next().is_none().then_some(first.value)
}

/// Fetches and parses `/metrics` from the admin listener (panics on a malformed exposition).
pub async fn scrape(gw: &TestGateway) -> Vec<Sample> {
    let r = admin_get(gw, "/metrics").await;
    assert_eq!(r.status, 200, "/metrics answered {}", r.status);
    parse_metrics(&r.text()).unwrap_or_else(|e| panic!("malformed /metrics: {e}\n{}", r.text()))
}

/// 1-based line number of the first line of `text` containing `needle`, and the 1-based column
/// where `needle` starts on it.
pub fn line_col_of(text: &str, needle: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(i, l)| l.find(needle).map(|c| (i + 1, c + 1)))
        .unwrap_or_else(|| panic!("{needle:?} not in text"))
}

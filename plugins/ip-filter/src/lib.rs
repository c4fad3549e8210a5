//! `ip-filter`: allow or deny clients by address.
//!
//! Rules are CIDR blocks (`10.0.0.0/8`, `2001:db8::/32`) or single addresses, IPv4 and IPv6.
//! The client is the gateway's `client_ip` (the peer, or the trusted forwarded client). `deny`
//! wins; then, if `allow` is not empty, the client must be in it. IPv4-mapped IPv6 clients
//! (`::ffff:10.1.2.3`) are matched as IPv4. A client address that cannot be parsed is refused.

use std::net::IpAddr;

use serde::Deserialize;
use weir_plugin_sdk::prelude::*;

/// The plugin's `config` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

/// A network: address with the host bits cleared, and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cidr {
    V4(u32, u8),
    V6(u128, u8),
}

fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}
fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

/// Treats IPv4-mapped IPv6 as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Cidr {
    fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let (addr, len) = match t.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (t, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
        let len = match len {
            Some(l) => Some(
                l.parse::<u8>()
                    .map_err(|_| format!("{text:?}: bad prefix length"))?,
            ),
            None => None,
        };
        match ip {
            IpAddr::V4(v4) => {
                let len = len.unwrap_or(32);
                if len > 32 {
                    return Err(format!("{text:?}: IPv4 prefix longer than 32"));
                }
                Ok(Cidr::V4(u32::from(v4) & mask32(len), len))
            }
            IpAddr::V6(v6) => {
                let len = len.unwrap_or(128);
                if len > 128 {
                    return Err(format!("{text:?}: IPv6 prefix longer than 128"));
                }
                // `::ffff:a.b.c.d/len` with len >= 96 is an IPv4 rule in disguise.
                if let (Some(v4), true) = (v6.to_ipv4_mapped(), len >= 96) {
                    let len4 = len - 96;
                    return Ok(Cidr::V4(u32::from(v4) & mask32(len4), len4));
                }
                Ok(Cidr::V6(u128::from(v6) & mask128(len), len))
            }
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self, canonical(ip)) {
            (Cidr::V4(net, len), IpAddr::V4(a)) => u32::from(a) & mask32(*len) == *net,
            (Cidr::V6(net, len), IpAddr::V6(a)) => u128::from(a) & mask128(*len) == *net,
            _ => false,
        }
    }
}

/// Parses `client_ip`, tolerating a port (`1.2.3.4:80`, `[::1]:80`) and a zone (`fe80::1%eth0`).
fn parse_client(text: &str) -> Option<IpAddr> {
    let t = text.trim();
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = t.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    let no_zone = t.split('%').next()?;
    no_zone.parse().ok()
}

/// The IP filter policy.
pub struct IpFilter {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

fn forbidden(detail: &str) -> Action {
    metrics::counter_add("ip_filter_denied_total", &[], 1);
    Response::problem(403, "Forbidden", detail).into()
}

impl Policy for IpFilter {
    type Config = Config;

    fn new(cfg: Config) -> Result<Self, String> {
        let parse = |list: &[String], name: &str| {
            list.iter()
                .enumerate()
                .map(|(i, c)| Cidr::parse(c).map_err(|e| format!("{name}[{i}]: {e}")))
                .collect::<Result<Vec<_>, _>>()
        };
        let allow = parse(&cfg.allow, "allow")?;
        let deny = parse(&cfg.deny, "deny")?;
        if allow.is_empty() && deny.is_empty() {
            return Err("no rules: set `allow` and/or `deny`".into());
        }
        Ok(Self { allow, deny })
    }

    fn info(&self) -> PluginInfo {
        // The client address comes resolved from the gateway (trusted proxies included).
        PluginInfo::default()
            .phases(Phases::REQUEST)
            .reads_headers(&[])
    }

    fn on_request(&self, req: &Request) -> Action {
        let Some(ip) = parse_client(&req.client_ip) else {
            log::warn(
                "ip-filter: unparseable client address",
                &[("client_ip", &req.client_ip)],
            );
            return forbidden("client address not recognised");
        };
        if self.deny.iter().any(|c| c.contains(ip)) {
            return forbidden("client address is denied");
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|c| c.contains(ip)) {
            return forbidden("client address is not allowed");
        }
        Action::next()
    }
}

export_policy!(IpFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::Harness;

    fn status(h: &mut Harness<IpFilter>, ip: &str) -> u16 {
        match h.on_request(Request::get("/").client_ip(ip)) {
            Action::Continue(_) => 200,
            Action::Respond(r) => r.status,
        }
    }

    #[test]
    fn cidr_matching() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.255.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!net.contains("2001:db8::1".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert_eq!(Cidr::parse("10.1.2.3/8").unwrap(), Cidr::V4(0x0a00_0000, 8));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            Cidr::parse("::/0")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert_eq!(
            Cidr::parse("::ffff:192.168.0.0/112").unwrap(),
            Cidr::V4(0xc0a8_0000, 16)
        );
        for bad in ["10.0.0.0/33", "::/129", "host", "10.0.0.0/x"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_and_deny() {
        let mut h = Harness::<IpFilter>::new(json!({
            "allow": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"],
            "deny": ["10.66.0.0/16"]
        }))
        .unwrap();
        assert_eq!(status(&mut h, "10.1.2.3"), 200);
        assert_eq!(status(&mut h, "10.66.1.1"), 403);
        assert_eq!(status(&mut h, "192.0.2.7"), 200);
        assert_eq!(status(&mut h, "192.0.2.8"), 403);
        assert_eq!(status(&mut h, "2001:db8::5"), 200);
        assert_eq!(status(&mut h, "[2001:db8::5]:443"), 200);
        assert_eq!(status(&mut h, "10.1.2.3:5555"), 200);
        assert_eq!(status(&mut h, "::ffff:10.66.0.1"), 403);
        assert_eq!(status(&mut h, "fe80::1%eth0"), 403);
        assert_eq!(status(&mut h, "garbage"), 403);
    }

    #[test]
    fn deny_only() {
        let mut h = Harness::<IpFilter>::new(json!({ "deny": ["203.0.113.0/24", "::1"] })).unwrap();
        assert_eq!(status(&mut h, "203.0.113.9"), 403);
        assert_eq!(status(&mut h, "::1"), 403);
        assert_eq!(status(&mut h, "127.0.0.1"), 200);
    }

    #[test]
    fn config_errors() {
        assert!(
            Harness::<IpFilter>::new(json!({}))
                .err()
                .unwrap()
                .contains("no rules")
        );
        let e = Harness::<IpFilter>::new(json!({ "allow": ["10.0.0.0/8", "nope"] }))
            .err()
            .unwrap();
        assert!(e.contains("allow[1]"), "{e}");
    }
}

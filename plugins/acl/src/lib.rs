//! `acl`: allow or deny by the authenticated consumer and its groups.
//!
//! Reads the `consumer` and `consumer.groups` (comma-separated) context entries that an auth
//! plugin earlier in the chain set. Deny rules win; then, if any allow rule is configured, the
//! caller must match one. Everything else gets 403 `application/problem+json`. A request with
//! no consumer at all is refused whenever an allow list exists (the chain has no auth plugin,
//! or it let an anonymous caller through).

use std::collections::BTreeSet;

use serde::Deserialize;
use weir_plugin_sdk::prelude::*;

/// The plugin's `config` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    allow_consumers: BTreeSet<String>,
    #[serde(default)]
    allow_groups: BTreeSet<String>,
    #[serde(default)]
    deny_consumers: BTreeSet<String>,
    #[serde(default)]
    deny_groups: BTreeSet<String>,
}

/// The ACL policy.
pub struct Acl {
    cfg: Config,
}

fn forbidden(detail: &str) -> Action {
    metrics::counter_add("acl_denied_total", &[], 1);
    Response::problem(403, "Forbidden", detail).into()
}

impl Policy for Acl {
    type Config = Config;

    fn new(cfg: Config) -> Result<Self, String> {
        if cfg.allow_consumers.is_empty()
            && cfg.allow_groups.is_empty()
            && cfg.deny_consumers.is_empty()
            && cfg.deny_groups.is_empty()
        {
            return Err(
                "no rules: set allow_consumers, allow_groups, deny_consumers and/or deny_groups"
                    .into(),
            );
        }
        Ok(Self { cfg })
    }

    fn info(&self) -> PluginInfo {
        // Decides from the context the auth plugin filled in; no request header is needed.
        PluginInfo::default()
            .phases(Phases::REQUEST)
            .reads_headers(&[])
    }

    fn on_request(&self, _req: &Request) -> Action {
        let consumer = context::get("consumer").filter(|c| !c.is_empty());
        let groups_text = context::get("consumer.groups").unwrap_or_default();
        let groups: Vec<&str> = groups_text
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .collect();
        let c = &self.cfg;

        if let Some(name) = consumer
            .as_deref()
            .filter(|n| c.deny_consumers.contains(*n))
        {
            log::info("acl denied consumer", &[("consumer", name)]);
            return forbidden("consumer is not allowed on this route");
        }
        if groups.iter().any(|g| c.deny_groups.contains(*g)) {
            return forbidden("consumer group is not allowed on this route");
        }
        if c.allow_consumers.is_empty() && c.allow_groups.is_empty() {
            return Action::next();
        }
        let Some(name) = consumer else {
            return forbidden("no authenticated consumer");
        };
        if c.allow_consumers.contains(&name) || groups.iter().any(|g| c.allow_groups.contains(*g)) {
            Action::next()
        } else {
            forbidden("consumer is not allowed on this route")
        }
    }
}

export_policy!(Acl);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, MockHost};

    fn status(h: &mut Harness<Acl>, ctx: &[(&str, &str)]) -> u16 {
        match h.on_request_with_context(Request::get("/"), ctx) {
            Action::Continue(_) => 200,
            Action::Respond(r) => r.status,
        }
    }

    #[test]
    fn allow_lists() {
        let mut h = Harness::<Acl>::new(json!({
            "allow_consumers": ["alice"], "allow_groups": ["admin"]
        }))
        .unwrap();
        assert_eq!(status(&mut h, &[("consumer", "alice")]), 200);
        assert_eq!(
            status(
                &mut h,
                &[("consumer", "bob"), ("consumer.groups", "dev, admin")]
            ),
            200
        );
        assert_eq!(
            status(&mut h, &[("consumer", "bob"), ("consumer.groups", "dev")]),
            403
        );
        assert_eq!(status(&mut h, &[("consumer", "bob")]), 403);
        assert_eq!(status(&mut h, &[]), 403);
        // Groups without a consumer do not count.
        assert_eq!(status(&mut h, &[("consumer.groups", "admin")]), 403);
        assert_eq!(MockHost::counter_total("acl_denied_total"), 4);
    }

    #[test]
    fn deny_wins_and_deny_only_allows_the_rest() {
        let mut h = Harness::<Acl>::new(json!({
            "allow_groups": ["staff"], "deny_consumers": ["mallory"], "deny_groups": ["suspended"]
        }))
        .unwrap();
        assert_eq!(
            status(
                &mut h,
                &[("consumer", "mallory"), ("consumer.groups", "staff")]
            ),
            403
        );
        assert_eq!(
            status(
                &mut h,
                &[("consumer", "eve"), ("consumer.groups", "staff,suspended")]
            ),
            403
        );
        assert_eq!(
            status(&mut h, &[("consumer", "eve"), ("consumer.groups", "staff")]),
            200
        );

        let mut deny_only = Harness::<Acl>::new(json!({ "deny_consumers": ["mallory"] })).unwrap();
        assert_eq!(status(&mut deny_only, &[("consumer", "mallory")]), 403);
        assert_eq!(status(&mut deny_only, &[("consumer", "alice")]), 200);
        assert_eq!(status(&mut deny_only, &[]), 200);
    }

    #[test]
    fn problem_body_and_config_errors() {
        let mut h = Harness::<Acl>::new(json!({ "allow_consumers": ["a"] })).unwrap();
        let a = h.on_request(Request::get("/"));
        let r = a.response().unwrap();
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert!(
            Harness::<Acl>::new(json!({}))
                .err()
                .unwrap()
                .contains("no rules")
        );
        assert!(Harness::<Acl>::new(json!({ "allow": ["a"] })).is_err());
    }
}

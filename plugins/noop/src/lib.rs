//! `noop`: a policy that does nothing.
//!
//! It exists to measure what a plugin costs by itself (instantiation, the call, the
//! conversions) in the gateway's benchmarks, and as the smallest possible example.

use weir_plugin_sdk::prelude::*;

/// The no-op policy: `on_request` keeps its default (continue unchanged).
pub struct Noop;

impl Policy for Noop {
    type Config = NoConfig;

    fn new(_config: NoConfig) -> Result<Self, String> {
        Ok(Noop)
    }

    /// Declares `on_request` so the gateway really calls it: the benchmarks measure one call.
    fn info(&self) -> PluginInfo {
        PluginInfo::default()
            .phases(Phases::REQUEST)
            .reads_headers(&[])
    }
}

export_policy!(Noop);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{Harness, MockHost};

    #[test]
    fn continues_unchanged_and_touches_nothing() {
        let mut h = Harness::<Noop>::new(json!({})).unwrap();
        assert_eq!(
            h.info(),
            PluginInfo::default()
                .phases(Phases::REQUEST)
                .reads_headers(&[])
        );
        let action = h.on_request(Request::get("/x").header("a", "b"));
        assert_eq!(action, Action::Continue(RequestEdits::default()));
        assert!(h.on_response(ResponseHead::new(200)).is_empty());
        assert!(MockHost::logs().is_empty());
        assert!(h.context().is_empty());
    }

    #[test]
    fn accepts_absent_config_and_rejects_settings() {
        assert!(Harness::<Noop>::from_config_str("").is_ok());
        assert!(Harness::<Noop>::new(Value::Null).is_ok());
        let err = Harness::<Noop>::new(json!({ "x": 1 })).err().unwrap();
        assert!(err.contains("takes no config"), "{err}");
        assert!(err.contains('x'), "{err}");
    }
}

//! `weir:policy/context`: the request-scoped metadata bag of the current call. The session moves
//! the chain's [`RequestContext`](crate::RequestContext) into the store before each call and back
//! out after, so every plugin of one request sees the same bag and no request sees another's.

use crate::bindings::weir::policy::context::Host;
use crate::state::HostState;

impl Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.cx.get(&key).map(str::to_owned)
    }

    fn set(&mut self, key: String, value: String) {
        if !self.cx.set(key, value) {
            tracing::warn!(
                target: "weir::plugin",
                plugin = &*self.plugin.id,
                "context.set ignored: the request context is full ({} bytes)",
                crate::RequestContext::MAX_BYTES
            );
        }
    }

    fn remove(&mut self, key: String) {
        self.cx.remove(&key);
    }

    fn entries(&mut self) -> Vec<(String, String)> {
        self.cx.entries().to_vec()
    }
}

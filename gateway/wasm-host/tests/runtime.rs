//! Engine, loading, isolation modes and limits, with real components from `plugins/fixtures`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use weir_wasm_host::*;

#[tokio::test]
async fn noop_continues_in_both_isolation_modes() {
    let rt = runtime();
    for isolation in [Isolation::Request, Isolation::Pooled] {
        let plugin = rt.load(&spec("noop", "noop", isolation)).await.unwrap();
        assert_eq!(plugin.info, PluginInfo::default());
        assert_eq!(plugin.sha256.len(), 64);
        let mut cx = RequestContext::new();
        let mut s = plugin.session();
        let action = s.on_request(&mut cx, request("/", &[])).await.unwrap();
        assert_eq!(action, Action::Continue(RequestEdits::default()));
        let edits = s
            .on_response(
                &mut cx,
                ResponseHead {
                    status: 200,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(edits, ResponseEdits::default());
        s.on_log(&mut cx, LogEntry::default()).await.unwrap();
    }
}

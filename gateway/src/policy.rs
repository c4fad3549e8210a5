//! Glue between the request path and the Wasm policy runtime (temporary: runtime being wired).

use crate::body::ProxyBody;
use crate::config::{Config, PluginRef};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::proxy::forward::Outgoing;
use crate::proxy::{ConnInfo, RequestFacts};
use crate::state::{Gateway, RouteRuntime, Table};
use http::{Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;

pub struct PluginInstance {
    pub spec: PluginRef,
}

pub struct Runtime;

impl Runtime {
    pub fn new(_config: &Config, _metrics: &Metrics) -> anyhow::Result<Self> {
        Ok(Runtime)
    }
    pub async fn load_all(
        &self,
        refs: &[PluginRef],
        scope: &str,
    ) -> anyhow::Result<Vec<Arc<PluginInstance>>> {
        if let Some(p) = refs.first() {
            anyhow::bail!("{scope}: plugin {:?}: policy runtime not wired yet", p.name);
        }
        Ok(Vec::new())
    }
    pub fn backend_status(&self) -> serde_json::Value {
        serde_json::json!({ "kv": "in-process", "rate_limit": "in-process" })
    }
}

pub enum PolicyOutcome {
    Continue,
    Respond(Response<ProxyBody>),
}

pub struct ChainSession<'a> {
    plugins: &'a [Arc<PluginInstance>],
}

impl<'a> ChainSession<'a> {
    pub fn new(plugins: &'a [Arc<PluginInstance>]) -> Self {
        Self { plugins }
    }
    pub async fn on_request(
        &mut self,
        _gw: &Arc<Gateway>,
        _conn: &ConnInfo,
        _facts: &RequestFacts,
        _out: &mut Outgoing,
    ) -> Result<PolicyOutcome, GatewayError> {
        let _ = self.plugins;
        Ok(PolicyOutcome::Continue)
    }
    pub async fn on_response(
        &mut self,
        _gw: &Arc<Gateway>,
        _facts: &RequestFacts,
        res: Response<ProxyBody>,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        Ok(res)
    }
}

pub fn spawn_on_log(
    _gw: &Arc<Gateway>,
    _route: Arc<RouteRuntime>,
    _facts: &RequestFacts,
    _status: StatusCode,
    _total: Duration,
    _bytes: u64,
) {
}

pub fn status(_table: &Table) -> serde_json::Value {
    serde_json::json!([])
}

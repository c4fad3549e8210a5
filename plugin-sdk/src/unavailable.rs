//! Capabilities outside the gateway and without the `testing` feature: every call reports that
//! no host is present. This keeps plugin crates compiling natively (e.g. `cargo check`,
//! `cargo doc`) while making accidental use visible.

use crate::http::{OutboundRequest, OutboundResponse};
use crate::jwt::{VerifyError, VerifyOptions};
use crate::log::Level;
use crate::rate_limit::{Decision, Quota};

const NO_HOST: &str =
    "no Weir host: capabilities work inside the gateway, or natively with feature `testing`";

pub(crate) fn log(_level: Level, _message: &str, _fields: &[(&str, &str)]) {}

pub(crate) fn context_get(_key: &str) -> Option<String> {
    None
}
pub(crate) fn context_set(_key: &str, _value: &str) {}
pub(crate) fn context_remove(_key: &str) {}
pub(crate) fn context_entries() -> Vec<(String, String)> {
    Vec::new()
}

pub(crate) fn kv_get(_key: &str) -> Result<Option<Vec<u8>>, String> {
    Err(NO_HOST.into())
}
pub(crate) fn kv_set(_key: &str, _value: &[u8], _ttl_ms: Option<u64>) -> Result<(), String> {
    Err(NO_HOST.into())
}
pub(crate) fn kv_delete(_key: &str) -> Result<bool, String> {
    Err(NO_HOST.into())
}
pub(crate) fn kv_increment(_key: &str, _delta: i64, _ttl_ms: Option<u64>) -> Result<i64, String> {
    Err(NO_HOST.into())
}
pub(crate) fn kv_compare_and_swap(
    _key: &str,
    _expected: Option<&[u8]>,
    _new: &[u8],
    _ttl_ms: Option<u64>,
) -> Result<bool, String> {
    Err(NO_HOST.into())
}

pub(crate) fn rate_limit_check(
    _name: &str,
    _key: &str,
    _quota: Quota,
    _cost: u32,
) -> Result<Decision, String> {
    Err(NO_HOST.into())
}

pub(crate) fn jwt_verify(_token: &str, _options: &VerifyOptions) -> Result<String, VerifyError> {
    Err(VerifyError::KeySetUnavailable(NO_HOST.into()))
}
pub(crate) fn jwt_key_set_missing(_name: &str) -> bool {
    false
}

pub(crate) fn http_send(_request: &OutboundRequest) -> Result<OutboundResponse, String> {
    Err(NO_HOST.into())
}
pub(crate) fn http_send_all(requests: &[OutboundRequest]) -> Vec<Result<OutboundResponse, String>> {
    requests.iter().map(|_| Err(NO_HOST.into())).collect()
}

pub(crate) fn metrics_counter_add(_name: &str, _labels: &[(&str, &str)], _value: u64) {}
pub(crate) fn metrics_histogram_observe(_name: &str, _labels: &[(&str, &str)], _value: f64) {}

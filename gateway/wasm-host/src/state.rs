//! Per-Store host state: WASI (restricted), the memory cap, the call clock behind the CPU
//! deadline, and the request context of the call in progress.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::plugin::PluginShared;
use crate::types::RequestContext;

/// Store data of one plugin instance.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: MemoryCap,
    pub(crate) plugin: Arc<PluginShared>,
    /// The chain's context, moved in for the duration of one call and moved back out after.
    pub(crate) cx: RequestContext,
    pub(crate) clock: CallClock,
    pub(crate) stderr: Arc<Mutex<LineBuffer>>,
}

impl HostState {
    pub(crate) fn new(plugin: Arc<PluginShared>, memory_limit: usize) -> Self {
        let stdout = GuestOutput::new(plugin.id.clone(), "stdout");
        let stderr = GuestOutput::new(plugin.id.clone(), "stderr");
        let stderr_buf = stderr.buf.clone();
        let mut b = WasiCtx::builder();
        // No preopens, env or args (the builder's defaults); sockets explicitly denied.
        b.stdout(stdout)
            .stderr(stderr)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        HostState {
            wasi: b.build(),
            table: ResourceTable::new(),
            limits: MemoryCap {
                limit: memory_limit,
                hit: false,
            },
            plugin,
            cx: RequestContext::default(),
            clock: CallClock::default(),
            stderr: stderr_buf,
        }
    }

    /// Time spent in async host calls (I/O) does not count against the CPU deadline.
    pub(crate) fn add_host_time(&mut self, since: Instant) {
        self.clock.host_time += since.elapsed();
    }

    /// The last stderr lines of the current call (a Rust panic message, typically).
    pub(crate) fn stderr_tail(&self) -> String {
        let buf = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        buf.recent.iter().cloned().collect::<Vec<_>>().join(" | ")
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Tracks one call so the epoch callback can tell guest time from time spent awaiting the host.
#[derive(Debug)]
pub(crate) struct CallClock {
    pub(crate) started: Instant,
    pub(crate) host_time: Duration,
    pub(crate) budget: Duration,
    pub(crate) deadline_hit: bool,
}

impl Default for CallClock {
    fn default() -> Self {
        CallClock {
            started: Instant::now(),
            host_time: Duration::ZERO,
            budget: Duration::ZERO,
            deadline_hit: false,
        }
    }
}

impl CallClock {
    /// Guest time left in this call, or `None` once the budget is spent.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        let used = self.started.elapsed().saturating_sub(self.host_time);
        self.budget.checked_sub(used).filter(|d| !d.is_zero())
    }
}

/// Caps linear memory per instance and remembers that it did, so a guest that aborts on the
/// failed allocation (Rust does: `unreachable`) is reported as `MemoryLimit`, not a plain trap.
#[derive(Debug)]
pub(crate) struct MemoryCap {
    pub(crate) limit: usize,
    pub(crate) hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Far above what real guests use (JS engines ~8k), bounded so a table cannot eat memory.
        Ok(desired <= 100_000)
    }
}

/// Line-buffers guest stdout/stderr into tracing events (target `weir::plugin`) and keeps the
/// last few stderr lines for error messages.
#[derive(Debug, Default)]
pub(crate) struct LineBuffer {
    partial: Vec<u8>,
    recent: VecDeque<String>,
}

impl LineBuffer {
    const MAX_LINE: usize = 4096;
    const RECENT: usize = 4;

    pub(crate) fn clear_recent(&mut self) {
        self.recent.clear();
    }

    fn push(&mut self, plugin: &str, stream: &'static str, mut bytes: &[u8]) {
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&bytes[..nl]);
            self.emit(plugin, stream);
            bytes = &bytes[nl + 1..];
        }
        self.partial.extend_from_slice(bytes);
        if self.partial.len() >= Self::MAX_LINE {
            self.emit(plugin, stream);
        }
    }

    fn emit(&mut self, plugin: &str, stream: &'static str) {
        if self.partial.is_empty() {
            return;
        }
        let end = self.partial.len().min(Self::MAX_LINE);
        let line = String::from_utf8_lossy(&self.partial[..end]).into_owned();
        self.partial.clear();
        tracing::info!(target: "weir::plugin", plugin, stream, "{line}");
        if stream == "stderr" {
            if self.recent.len() == Self::RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(line);
        }
    }
}

/// A WASI stdout/stderr that never blocks and never fails: output goes to tracing.
#[derive(Clone)]
struct GuestOutput {
    plugin: Arc<str>,
    stream: &'static str,
    buf: Arc<Mutex<LineBuffer>>,
}

impl GuestOutput {
    fn new(plugin: Arc<str>, stream: &'static str) -> Self {
        GuestOutput {
            plugin,
            stream,
            buf: Arc::default(),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        buf.push(&self.plugin, self.stream, bytes);
    }

    fn flush_partial(&self) {
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        buf.emit(&self.plugin, self.stream);
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        self.flush_partial();
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.flush_partial();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.flush_partial();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_buffer_splits_lines_and_keeps_recent_stderr() {
        let mut b = LineBuffer::default();
        b.push("p", "stderr", b"panicked at x\nboom");
        assert_eq!(b.recent, ["panicked at x"]);
        b.push("p", "stderr", b"!\n");
        assert_eq!(b.recent, ["panicked at x", "boom!"]);
        b.push("p", "stderr", &vec![b'a'; LineBuffer::MAX_LINE + 10]);
        assert_eq!(b.recent.len(), 3);
        assert!(b.partial.is_empty());
    }
}

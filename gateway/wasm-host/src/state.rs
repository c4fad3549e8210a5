//! Per-Store host state: WASI (restricted), the memory cap, the call clock behind the CPU
//! deadline, and the request context of the call in progress.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::ThreadId;
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

    /// Marks the start of an async host call (I/O): from here until [`Self::host_call_end`]
    /// nothing counts against the guest's CPU budget.
    pub(crate) fn host_call_begin(&mut self) {
        self.clock.host_call_begin();
    }

    /// Marks the end of an async host call; the guest's clock runs again.
    pub(crate) fn host_call_end(&mut self) {
        self.clock.host_call_end();
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

/// What the epoch callback should do with a running guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EpochVerdict {
    /// Keep running; look again after this much more time.
    Continue(Duration),
    /// Stop the guest (the reason is in [`CallClock::deadline_hit`]).
    Interrupt,
}

/// Why a call was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeadlineHit {
    /// The guest used its CPU budget.
    Cpu,
    /// The guest's code took the wall-clock backstop without using its CPU budget (it was
    /// starved of CPU or blocked in WASI).
    Wall,
}

/// One reading of the clocks, taken by the thread running the guest.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reading {
    pub(crate) now: Instant,
    pub(crate) thread: ThreadId,
    /// `None` where the platform has no per-thread CPU clock: segments are then charged at
    /// wall-clock time.
    pub(crate) cpu: Option<Duration>,
}

impl Reading {
    /// Reads the real clocks: one `clock_gettime(CLOCK_THREAD_CPUTIME_ID)` (a syscall, ~0.3–1 µs),
    /// which is why it is only done on the epoch callback's slow path and at host-call
    /// boundaries of calls already being metered, never per call.
    fn take() -> Self {
        Reading {
            now: Instant::now(),
            thread: std::thread::current().id(),
            cpu: thread_cpu_time(),
        }
    }
}

/// CPU time consumed so far by the calling OS thread.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn thread_cpu_time() -> Option<Duration> {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::try_from(ts).ok()
}

/// No per-thread CPU clock wired up here: the deadline stays on wall-clock time.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

/// Guest code running on one thread since a reading (call start or return from a host call).
#[derive(Clone, Copy, Debug)]
struct Segment {
    since: Instant,
    thread: ThreadId,
    cpu: Option<Duration>,
}

impl Segment {
    fn open(r: Reading) -> Self {
        Segment {
            since: r.now,
            thread: r.thread,
            cpu: r.cpu,
        }
    }

    /// Guest CPU time from the segment's start to `r`. If the guest resumed on another thread
    /// (it suspended inside a WASI call such as `poll` and the future moved to another tokio
    /// worker), the first thread's clock is out of reach: charge the wall-clock time instead.
    fn used(&self, r: Reading) -> Duration {
        match (self.cpu, r.cpu) {
            (Some(from), Some(to)) if self.thread == r.thread => to.saturating_sub(from),
            _ => r.now.saturating_duration_since(self.since),
        }
    }
}

/// Guest CPU time of the call, once metering started (see [`CallClock`]).
#[derive(Clone, Copy, Debug)]
struct CpuMeter {
    /// Estimated unmetered start of the call + every closed segment.
    charged: Duration,
    /// `None` while a host call is in progress.
    open: Option<Segment>,
}

/// Tracks one call so the epoch callback can charge the guest for the CPU it used, and only
/// that: neither time awaiting the host (kv, HTTP, JWKS) nor time the thread spent descheduled
/// (a busy machine, cgroup CPU throttling) counts against the budget.
///
/// Reading a thread's CPU clock is a syscall, and most calls take microseconds, so it is done
/// lazily. The call is first armed for one epoch tick: a call that ends before the next tick
/// never reads the clock. At the first callback the guest has used at most about one tick of
/// CPU (it checks the epoch at every loop back-edge and function entry), so that start is
/// charged as `min(guest wall time, tick)` and metering starts: from then on each stretch of
/// guest code between host calls is measured with `CLOCK_THREAD_CPUTIME_ID` on the thread it
/// ran on. While the guest's wall time is under the budget its CPU time is too, so callbacks
/// only read the clock once the wall-clock budget is spent. A wall-clock backstop stops a guest
/// that is descheduled or asleep (WASI `poll`) for too long, whatever its CPU use.
#[derive(Debug)]
pub(crate) struct CallClock {
    started: Instant,
    /// Wall-clock time spent in host calls (not guest time).
    host_time: Duration,
    /// Start of the host call in progress (`None` outside host calls).
    host_since: Option<Instant>,
    pub(crate) budget: Duration,
    /// Guest wall-clock time after which the call is stopped even if its CPU use is low.
    pub(crate) backstop: Duration,
    /// The epoch tick: the bound on the unmetered start of the call.
    tick: Duration,
    cpu: Option<CpuMeter>,
    pub(crate) deadline_hit: Option<DeadlineHit>,
}

impl Default for CallClock {
    fn default() -> Self {
        CallClock::start(Duration::ZERO, Duration::from_millis(5), Instant::now())
    }
}

impl CallClock {
    /// Epoch ticks to arm a new call with: the first callback comes at the next tick.
    pub(crate) const FIRST_CHECK_TICKS: u64 = 1;

    /// The backstop for a CPU budget: 20× the budget, at least 1 s.
    pub(crate) fn backstop_for(budget: Duration) -> Duration {
        budget.saturating_mul(20).max(Duration::from_secs(1))
    }

    /// A clock for a call starting `now` with a CPU `budget`, on an engine ticking every `tick`.
    pub(crate) fn start(budget: Duration, tick: Duration, now: Instant) -> Self {
        CallClock {
            started: now,
            host_time: Duration::ZERO,
            host_since: None,
            budget,
            backstop: Self::backstop_for(budget),
            tick,
            cpu: None,
            deadline_hit: None,
        }
    }

    /// Wall-clock time of the call outside host calls.
    fn guest_wall(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
            .saturating_sub(self.host_time)
    }

    /// A host call starts (called by every async host function before it awaits).
    pub(crate) fn host_call_begin(&mut self) {
        let r = self.read();
        self.host_call_begin_at(r);
    }

    /// A host call returned (possibly on another thread than the one that made it).
    pub(crate) fn host_call_end(&mut self) {
        let r = self.read();
        self.host_call_end_at(r);
    }

    /// The CPU clock is only read once metering started.
    fn read(&self) -> Reading {
        if self.cpu.is_some() {
            Reading::take()
        } else {
            Reading {
                now: Instant::now(),
                thread: std::thread::current().id(),
                cpu: None,
            }
        }
    }

    fn host_call_begin_at(&mut self, r: Reading) {
        self.host_since = Some(r.now);
        if let Some(m) = &mut self.cpu
            && let Some(seg) = m.open.take()
        {
            m.charged += seg.used(r);
        }
    }

    fn host_call_end_at(&mut self, r: Reading) {
        if let Some(since) = self.host_since.take() {
            self.host_time += r.now.saturating_duration_since(since);
        }
        if let Some(m) = &mut self.cpu {
            m.open = Some(Segment::open(r));
        }
    }

    /// The epoch deadline was reached while the guest runs: keep going or stop it.
    pub(crate) fn on_epoch(&mut self) -> EpochVerdict {
        let metering = self.cpu.is_some();
        let wall = self.guest_wall(Instant::now());
        if metering && wall < self.budget {
            // Fast path, no syscall: CPU time cannot exceed wall time.
            return EpochVerdict::Continue(self.budget - wall);
        }
        self.on_epoch_at(Reading::take())
    }

    fn on_epoch_at(&mut self, r: Reading) -> EpochVerdict {
        let wall = self.guest_wall(r.now);
        let used = match &mut self.cpu {
            None => {
                let charged = wall.min(self.tick);
                self.cpu = Some(CpuMeter {
                    charged,
                    open: Some(Segment::open(r)),
                });
                charged
            }
            Some(m) => {
                if let Some(seg) = m.open.replace(Segment::open(r)) {
                    m.charged += seg.used(r);
                }
                m.charged
            }
        };
        if used >= self.budget {
            self.deadline_hit = Some(DeadlineHit::Cpu);
            return EpochVerdict::Interrupt;
        }
        if wall >= self.backstop {
            self.deadline_hit = Some(DeadlineHit::Wall);
            return EpochVerdict::Interrupt;
        }
        // CPU time grows no faster than wall time: the budget cannot be spent sooner than this.
        EpochVerdict::Continue((self.budget - used).min(self.backstop - wall))
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

    const MS: Duration = Duration::from_millis(1);

    /// A clock with a 50 ms budget and 5 ms ticks, started at `t0`.
    fn clock(t0: Instant) -> CallClock {
        CallClock::start(50 * MS, 5 * MS, t0)
    }

    fn at(t0: Instant, wall_ms: u32, thread: ThreadId, cpu_ms: u32) -> Reading {
        Reading {
            now: t0 + wall_ms * MS,
            thread,
            cpu: Some(cpu_ms * MS),
        }
    }

    fn other_thread() -> ThreadId {
        std::thread::spawn(|| std::thread::current().id())
            .join()
            .unwrap()
    }

    #[test]
    fn a_descheduled_guest_is_charged_only_for_its_cpu() {
        let (t0, a) = (Instant::now(), std::thread::current().id());
        let mut c = clock(t0);
        // First check after a 100 ms stall: the unmetered start is charged one tick at most.
        assert_eq!(
            c.on_epoch_at(at(t0, 100, a, 1000)),
            EpochVerdict::Continue(45 * MS)
        );
        // Another 200 ms stall with 3 ms of CPU: 8 ms used.
        assert_eq!(
            c.on_epoch_at(at(t0, 300, a, 1003)),
            EpochVerdict::Continue(42 * MS)
        );
        assert_eq!(c.deadline_hit, None);
    }

    #[test]
    fn a_busy_guest_is_stopped_once_its_cpu_reaches_the_budget() {
        let (t0, a) = (Instant::now(), std::thread::current().id());
        let mut c = clock(t0);
        assert_eq!(
            c.on_epoch_at(at(t0, 5, a, 100)),
            EpochVerdict::Continue(45 * MS)
        );
        assert_eq!(
            c.on_epoch_at(at(t0, 48, a, 143)),
            EpochVerdict::Continue(2 * MS)
        );
        assert_eq!(c.on_epoch_at(at(t0, 50, a, 145)), EpochVerdict::Interrupt);
        assert_eq!(c.deadline_hit, Some(DeadlineHit::Cpu));
    }

    #[test]
    fn the_wall_clock_backstop_stops_a_guest_that_never_gets_cpu() {
        let (t0, a) = (Instant::now(), std::thread::current().id());
        let mut c = clock(t0);
        assert_eq!(c.backstop, Duration::from_secs(1));
        assert_eq!(
            c.on_epoch_at(at(t0, 500, a, 0)),
            EpochVerdict::Continue(45 * MS)
        );
        // Never re-armed past the backstop.
        assert_eq!(
            c.on_epoch_at(at(t0, 990, a, 1)),
            EpochVerdict::Continue(10 * MS)
        );
        assert_eq!(c.on_epoch_at(at(t0, 1000, a, 2)), EpochVerdict::Interrupt);
        assert_eq!(c.deadline_hit, Some(DeadlineHit::Wall));
        assert_eq!(
            CallClock::backstop_for(Duration::from_millis(200)),
            Duration::from_secs(4)
        );
    }

    #[test]
    fn host_calls_are_not_charged_and_may_end_on_another_thread() {
        let (t0, a, b) = (Instant::now(), std::thread::current().id(), other_thread());
        let mut c = clock(t0);
        assert_eq!(
            c.on_epoch_at(at(t0, 2, a, 10)),
            EpochVerdict::Continue(48 * MS)
        );
        // 3 ms of guest CPU, then a 400 ms host call during which thread `a` ran other tasks
        // for 300 ms; the call returns on thread `b`, whose clock is far ahead.
        c.host_call_begin_at(at(t0, 5, a, 13));
        c.host_call_end_at(at(t0, 405, b, 7000));
        // 4 ms of guest CPU on `b`: 2 + 3 + 4 = 9 ms used, 10 ms of guest wall time.
        assert_eq!(
            c.on_epoch_at(at(t0, 410, b, 7004)),
            EpochVerdict::Continue(41 * MS)
        );
        assert_eq!(c.guest_wall(t0 + 410 * MS), 10 * MS);
        assert_eq!(c.deadline_hit, None);
    }

    #[test]
    fn a_segment_that_moved_threads_unseen_is_charged_at_wall_time() {
        let (t0, a, b) = (Instant::now(), std::thread::current().id(), other_thread());
        let mut c = clock(t0);
        c.on_epoch_at(at(t0, 1, a, 10));
        // The guest blocked in a WASI call and resumed on `b`: its 30 ms are charged in full.
        assert_eq!(
            c.on_epoch_at(at(t0, 31, b, 500)),
            EpochVerdict::Continue(19 * MS)
        );
        // Metering goes on from the new thread's clock.
        assert_eq!(
            c.on_epoch_at(at(t0, 41, b, 502)),
            EpochVerdict::Continue(17 * MS)
        );
    }

    #[test]
    fn without_a_thread_cpu_clock_the_budget_is_wall_time() {
        let (t0, a) = (Instant::now(), std::thread::current().id());
        let mut c = clock(t0);
        let wall = |ms: u32| Reading {
            now: t0 + ms * MS,
            thread: a,
            cpu: None,
        };
        assert_eq!(c.on_epoch_at(wall(3)), EpochVerdict::Continue(47 * MS));
        assert_eq!(c.on_epoch_at(wall(40)), EpochVerdict::Continue(10 * MS));
        assert_eq!(c.on_epoch_at(wall(50)), EpochVerdict::Interrupt);
    }

    #[test]
    fn the_thread_cpu_clock_counts_this_threads_work_only() {
        let Some(before) = thread_cpu_time() else {
            return; // not available on this platform: wall-time semantics, tested above
        };
        let wall = Instant::now();
        std::thread::sleep(Duration::from_millis(30));
        let mut x = 0u64;
        while wall.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let used = thread_cpu_time().unwrap() - before;
        assert!(used < Duration::from_millis(60), "{used:?}");
        assert!(used > Duration::from_millis(1), "{used:?}");
    }

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

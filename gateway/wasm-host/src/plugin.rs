//! Loaded plugins and per-request sessions: instance lifecycle (fresh per request, or pooled and
//! recycled), the per-call CPU deadline and memory cap, and failure classification.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use wasmtime::{Engine, Store, Trap, UpdateDeadline};

use crate::bindings::{Policy, PolicyPre};
use crate::error::{PluginError, PluginErrorKind};
use crate::host::http::AllowRule;
use crate::metrics::{Phase, PluginMetrics};
use crate::runtime::Services;
use crate::state::{CallClock, DeadlineHit, EpochVerdict, HostState};
use crate::types::{
    Action, FailMode, Isolation, LogEntry, Phases, PluginInfo, PolicyRequest, RequestContext,
    RequestEdits, ResponseEdits, ResponseHead,
};

/// How to load one plugin. [`PluginSpec::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct PluginSpec {
    /// Unique id in the gateway config; labels metrics and logs, namespaces kv and limiters.
    pub id: String,
    /// Human-readable name (defaults to the id).
    pub name: String,
    /// Path of the component (`.wasm`).
    pub wasm: PathBuf,
    /// The plugin's `config` table as JSON, handed to `init`.
    pub config_json: String,
    pub on_error: FailMode,
    pub isolation: Isolation,
    /// Linear memory cap per instance, bytes (default 32 MiB).
    pub memory_limit: u64,
    /// Guest CPU time per call (default 50 ms): the thread CPU time of the guest's own code,
    /// checked at epoch ticks. Time awaiting host I/O (kv, HTTP, JWKS) and time the thread sat
    /// descheduled (busy machine, CPU throttling) are not counted. A call whose guest code runs
    /// 20× this long in wall-clock time (at least 1 s) is stopped anyway.
    pub cpu_limit: Duration,
    /// Outbound HTTP destinations (`scheme://host[:port][/prefix]`); empty = no `http-client`.
    pub http_allow: Vec<String>,
    /// Pooled isolation: an instance is discarded after this many calls (default 10 000).
    pub max_uses: u64,
    /// The key sets of its `jwt` capability (default: the runtime's initial ones).
    pub key_sets: Option<crate::runtime::PreparedKeySets>,
}

impl PluginSpec {
    /// A spec with the default limits: 32 MiB, 50 ms, fail closed, pooled, no outbound HTTP.
    pub fn new(id: impl Into<String>, wasm: impl Into<PathBuf>) -> Self {
        let id = id.into();
        PluginSpec {
            name: id.clone(),
            id,
            wasm: wasm.into(),
            config_json: "{}".into(),
            on_error: FailMode::Closed,
            isolation: Isolation::Pooled,
            memory_limit: 32 * 1024 * 1024,
            cpu_limit: Duration::from_millis(50),
            http_allow: Vec::new(),
            max_uses: 10_000,
            key_sets: None,
        }
    }
}

/// What host functions of one plugin need, shared by all its instances.
pub(crate) struct PluginShared {
    pub(crate) id: Arc<str>,
    /// Prefix for kv keys and limiter names: plugins never see each other's data.
    pub(crate) kv_namespace: String,
    pub(crate) http_allow: Vec<AllowRule>,
    /// What its `jwt` capability verifies against.
    pub(crate) key_sets: Arc<crate::host::jwt::KeySets>,
    pub(crate) services: Arc<Services>,
}

/// A live instance with its store.
struct Warm {
    store: Store<HostState>,
    policy: Policy,
    uses: u64,
}

/// Everything needed to create and call instances of one plugin.
pub(crate) struct PluginCore {
    pub(crate) engine: Engine,
    pub(crate) pre: PolicyPre<HostState>,
    pub(crate) shared: Arc<PluginShared>,
    pub(crate) config_json: String,
    pub(crate) memory_limit: usize,
    pub(crate) cpu_limit: Duration,
    pub(crate) epoch_tick: Duration,
    pub(crate) max_uses: u64,
    pub(crate) max_idle: usize,
    pub(crate) metrics: PluginMetrics,
    idle: Mutex<Vec<Warm>>,
}

/// A failure inside [`PluginCore`], before it is tagged with plugin and phase.
struct CallFailure {
    kind: PluginErrorKind,
    message: String,
}

fn ticks_for(d: Duration, tick: Duration) -> u64 {
    // +1: the current epoch may be about to end, so a deadline of N ticks can fire after N-1.
    u64::try_from(d.as_nanos() / tick.as_nanos().max(1)).unwrap_or(u64::MAX / 2) + 1
}

impl PluginCore {
    pub(crate) fn new(
        engine: Engine,
        pre: PolicyPre<HostState>,
        shared: Arc<PluginShared>,
        spec: &PluginSpec,
        epoch_tick: Duration,
        max_idle: usize,
        metrics: PluginMetrics,
    ) -> Self {
        PluginCore {
            engine,
            pre,
            shared,
            config_json: spec.config_json.clone(),
            memory_limit: usize::try_from(spec.memory_limit).unwrap_or(usize::MAX),
            cpu_limit: spec.cpu_limit,
            epoch_tick,
            max_uses: spec.max_uses.max(1),
            max_idle,
            metrics,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// `init` may parse a large config or warm caches: it gets a larger budget than a call.
    fn init_budget(&self) -> Duration {
        (self.cpu_limit * 10).max(Duration::from_secs(1))
    }

    fn begin(&self, store: &mut Store<HostState>, cx: &mut RequestContext, budget: Duration) {
        let st = store.data_mut();
        st.cx = std::mem::take(cx);
        st.clock = CallClock::start(budget, self.epoch_tick, Instant::now());
        st.limits.hit = false;
        st.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear_recent();
        // A reused store keeps its old deadline: re-arm before every call. The first check
        // comes at the next tick; see `CallClock` for why not after the whole budget.
        store.set_epoch_deadline(CallClock::FIRST_CHECK_TICKS);
    }

    fn end(store: &mut Store<HostState>, cx: &mut RequestContext) {
        *cx = std::mem::take(&mut store.data_mut().cx);
    }

    fn classify(store: &Store<HostState>, err: &wasmtime::Error) -> CallFailure {
        let st = store.data();
        let tail = st.stderr_tail();
        let with_tail = |m: String| {
            if tail.is_empty() {
                m
            } else {
                format!("{m} (guest stderr: {tail})")
            }
        };
        let clock = &st.clock;
        if clock.deadline_hit.is_some() || err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            let message = match clock.deadline_hit {
                Some(DeadlineHit::Wall) => format!(
                    "ran {:?} of wall-clock time without finishing (CPU limit {:?}; the guest \
                     blocked or its thread was starved)",
                    clock.backstop, clock.budget
                ),
                _ => format!("exceeded its CPU limit of {:?}", clock.budget),
            };
            return CallFailure {
                kind: PluginErrorKind::Deadline,
                message,
            };
        }
        if st.limits.hit {
            return CallFailure {
                kind: PluginErrorKind::MemoryLimit,
                message: with_tail(format!(
                    "memory limit of {} bytes reached: {}",
                    st.limits.limit,
                    err.root_cause()
                )),
            };
        }
        CallFailure {
            kind: PluginErrorKind::Trap,
            message: with_tail(err.root_cause().to_string()),
        }
    }

    /// Creates an instance and runs `init` on it (guests keep their config in globals).
    async fn instantiate(&self) -> Result<(Warm, PluginInfo), CallFailure> {
        let mut store = Store::new(
            &self.engine,
            HostState::new(self.shared.clone(), self.memory_limit),
        );
        store.limiter(|s| &mut s.limits);
        let tick = self.epoch_tick;
        store.epoch_deadline_callback(move |mut cx| {
            Ok(match cx.data_mut().clock.on_epoch() {
                // Continue, not Yield: the CPU budget is read from this thread's CPU clock, and a
                // yield would charge the guest for whatever other tasks ran meanwhile.
                EpochVerdict::Continue(left) => UpdateDeadline::Continue(ticks_for(left, tick)),
                EpochVerdict::Interrupt => UpdateDeadline::Interrupt,
            })
        });
        let mut cx = RequestContext::default();
        let started = Instant::now();
        self.begin(&mut store, &mut cx, self.init_budget());
        self.metrics.instantiations.inc();
        let policy = match self.pre.instantiate_async(&mut store).await {
            Ok(p) => p,
            Err(e) => {
                let mut f = Self::classify(&store, &e);
                if f.kind == PluginErrorKind::Trap {
                    f.kind = PluginErrorKind::Internal;
                    f.message = format!("instantiation failed: {e:#}");
                }
                return Err(f);
            }
        };
        let r = policy.call_init(&mut store, &self.config_json).await;
        Self::end(&mut store, &mut cx);
        self.metrics
            .call(Phase::Init, started.elapsed().as_secs_f64());
        match r {
            Ok(Ok(info)) => Ok((
                Warm {
                    store,
                    policy,
                    uses: 0,
                },
                info.into(),
            )),
            Ok(Err(msg)) => Err(CallFailure {
                kind: PluginErrorKind::Internal,
                message: format!("init failed: {msg}"),
            }),
            Err(e) => Err(Self::classify(&store, &e)),
        }
    }

    fn checkout_idle(&self) -> Option<Warm> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn checkin_idle(&self, mut w: Warm) {
        w.uses += 1;
        if w.uses >= self.max_uses {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(w);
        }
    }

    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A plugin ready to serve: compiled, import-checked, pre-instantiated, its config accepted by
/// `init`. Cheap to share; a reload builds a new one and swaps it in.
pub struct LoadedPlugin {
    pub id: String,
    pub name: String,
    pub wasm: PathBuf,
    /// Hex SHA-256 of the `.wasm` bytes.
    pub sha256: String,
    pub loaded_at: SystemTime,
    /// What `init` declared (body buffering).
    pub info: PluginInfo,
    pub on_error: FailMode,
    pub isolation: Isolation,
    pub(crate) core: PluginCore,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("id", &self.id)
            .field("wasm", &self.wasm)
            .field("sha256", &self.sha256)
            .field("info", &self.info)
            .field("isolation", &self.isolation)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// Starts the plugin's part of one request. Nothing is instantiated until the first call.
    pub fn session(self: &Arc<Self>) -> PluginSession {
        PluginSession {
            plugin: self.clone(),
            held: None,
        }
    }

    /// Warm instances waiting in the pool (always 0 for request isolation).
    pub fn idle_instances(&self) -> usize {
        self.core.idle_count()
    }

    /// Runs the load-time instantiation + `init`; pooled plugins keep that instance warm.
    pub(crate) async fn first_instance(&self) -> Result<PluginInfo, (PluginErrorKind, String)> {
        let (w, info) = self
            .core
            .instantiate()
            .await
            .map_err(|f| (f.kind, f.message))?;
        if self.isolation == Isolation::Pooled {
            self.core
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(w);
        }
        Ok(info)
    }
}

/// One request's use of one plugin. With request isolation it owns a fresh instance that serves
/// every phase of the request; with pooled isolation each phase borrows a warm instance.
/// Dropping the session releases everything.
pub struct PluginSession {
    plugin: Arc<LoadedPlugin>,
    held: Option<Warm>,
}

impl PluginSession {
    /// The plugin this session calls.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    fn error(&self, phase: Phase, f: CallFailure) -> PluginError {
        self.plugin.core.metrics.failure(phase, f.kind);
        PluginError {
            plugin: self.plugin.id.clone(),
            phase: phase.as_str(),
            kind: f.kind,
            message: f.message,
        }
    }

    async fn checkout(&mut self, phase: Phase) -> Result<Warm, PluginError> {
        let core = &self.plugin.core;
        let existing = match self.plugin.isolation {
            Isolation::Request => self.held.take(),
            Isolation::Pooled => core.checkout_idle(),
        };
        match existing {
            Some(w) => Ok(w),
            None => core
                .instantiate()
                .await
                .map(|(w, _)| w)
                .map_err(|f| self.error(phase, f)),
        }
    }

    fn checkin(&mut self, w: Warm) {
        match self.plugin.isolation {
            Isolation::Request => self.held = Some(w),
            Isolation::Pooled => self.plugin.core.checkin_idle(w),
        }
    }

    /// Runs one export call with the deadline armed and the context moved in; a failed
    /// instance is dropped (a trapped store can never be entered again).
    async fn run<R, F>(
        &mut self,
        phase: Phase,
        cx: &mut RequestContext,
        call: F,
    ) -> Result<R, PluginError>
    where
        F: AsyncFnOnce(&Policy, &mut Store<HostState>) -> wasmtime::Result<R>,
    {
        let mut w = self.checkout(phase).await?;
        let core = &self.plugin.core;
        let started = Instant::now();
        core.begin(&mut w.store, cx, core.cpu_limit);
        let r = call(&w.policy, &mut w.store).await;
        PluginCore::end(&mut w.store, cx);
        core.metrics.call(phase, started.elapsed().as_secs_f64());
        match r {
            Ok(v) => {
                self.checkin(w);
                Ok(v)
            }
            Err(e) => {
                let f = PluginCore::classify(&w.store, &e);
                drop(w);
                Err(self.error(phase, f))
            }
        }
    }

    /// The phases this plugin declared; the others return their no-op result without a call.
    pub fn phases(&self) -> Phases {
        self.plugin.info.phases
    }

    /// `on-request`: the plugin's decision for this request.
    pub async fn on_request(
        &mut self,
        cx: &mut RequestContext,
        req: PolicyRequest,
    ) -> Result<Action, PluginError> {
        if !self.phases().on_request {
            return Ok(Action::Continue(RequestEdits::default()));
        }
        let req = req.into();
        self.run(Phase::OnRequest, cx, async |p, s| {
            p.call_on_request(s, &req).await
        })
        .await
        .map(Into::into)
    }

    /// `on-response`: edits to the response head (and body, if declared).
    pub async fn on_response(
        &mut self,
        cx: &mut RequestContext,
        head: ResponseHead,
    ) -> Result<ResponseEdits, PluginError> {
        if !self.phases().on_response {
            return Ok(ResponseEdits::default());
        }
        let head = head.into();
        self.run(Phase::OnResponse, cx, async |p, s| {
            p.call_on_response(s, &head).await
        })
        .await
        .map(Into::into)
    }

    /// `on-log`: after the response was sent.
    pub async fn on_log(
        &mut self,
        cx: &mut RequestContext,
        entry: LogEntry,
    ) -> Result<(), PluginError> {
        if !self.phases().on_log {
            return Ok(());
        }
        let entry = entry.into();
        self.run(Phase::OnLog, cx, async |p, s| {
            p.call_on_log(s, &entry).await
        })
        .await
    }
}

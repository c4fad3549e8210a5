//! Starting and stopping a gateway: bind every listener, serve, watch files for hot reload,
//! and drain on shutdown. Used by the `weir` binary and by the integration tests.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::server;
use crate::state::Gateway;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A running gateway.
pub struct Running {
    pub gateway: Arc<Gateway>,
    /// Listener name → bound address (useful with port 0).
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Outlives the drain, so `/readyz` can say `draining` to a load balancer; stopped once
    /// every listener has.
    admin_task: Option<tokio::task::JoinHandle<()>>,
}

/// Dropped without [`Running::wait`] (a test, an error path): the admin listener goes too.
impl Drop for Running {
    fn drop(&mut self) {
        if let Some(admin) = self.admin_task.take() {
            admin.abort();
        }
    }
}

impl Running {
    /// Address of the listener called `name`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain deadline), then returns.
    pub async fn shutdown(self) {
        self.gateway.start_draining();
        let _ = self.shutdown.send(true);
        self.wait().await;
    }

    /// Waits until every listener has stopped (then stops the admin listener).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
        if let Some(admin) = self.admin_task.take() {
            admin.abort();
        }
    }

    /// A handle that triggers shutdown from elsewhere (signal handlers).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            tx: self.shutdown.clone(),
            gw: self.gateway.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ShutdownHandle {
    tx: watch::Sender<bool>,
    gw: Arc<Gateway>,
}

impl ShutdownHandle {
    pub fn trigger(&self) {
        self.gw.start_draining();
        let _ = self.tx.send(true);
    }
}

/// Loads plugins, binds every listener and the admin endpoint, and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    let listeners_spec = config.listeners.clone();
    let admin_addr = config.admin;
    let gw = Gateway::new(config, metrics).await?;
    let (tx, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut listeners = Vec::new();
    let mut bound_all = Vec::new();
    for l in &listeners_spec {
        let bound = server::bind(l).await?;
        listeners.push((l.name.clone(), bound.local_addr));
        bound_all.push(bound);
    }
    let (admin, admin_task) = match admin_addr {
        Some(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| anyhow::anyhow!("admin: cannot bind {a}: {e}"))?;
            let addr = l.local_addr()?;
            tracing::info!(addr = %addr, "admin listening");
            (
                Some(addr),
                Some(tokio::spawn(crate::admin::serve(gw.clone(), l))),
            )
        }
        None => (None, None),
    };
    for bound in bound_all {
        tasks.spawn(server::serve(gw.clone(), bound, rx.clone()));
    }
    if let Some(w) = FileWatch::new(&gw) {
        tasks.spawn(w.run(gw.clone(), rx.clone()));
    }
    Ok(Running {
        gateway: gw,
        listeners,
        admin,
        shutdown: tx,
        tasks,
        admin_task,
    })
}

/// Files whose change triggers a reload: the config and every plugin it references.
fn watched_files(gw: &Gateway) -> HashSet<PathBuf> {
    let table = gw.table();
    let c = &table.config;
    let mut set = HashSet::new();
    if let Some(p) = &c.source {
        set.insert(p.clone());
    }
    for p in c
        .global_plugins
        .iter()
        .chain(c.routes.iter().flat_map(|r| r.plugins.iter()))
    {
        set.insert(p.wasm.clone());
    }
    set.into_iter()
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .collect()
}

/// The config and plugin files under watch (notify). Set up before [`start`] returns, so a file
/// changed right after start is not missed while a spawned task is still getting ready.
struct FileWatch {
    watcher: Box<dyn notify::Watcher + Send>,
    /// The watcher is notify's polling one (inotify could not be set up or ran out of watches).
    polling: bool,
    tx: tokio::sync::mpsc::UnboundedSender<PathBuf>,
    events: tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
    files: HashSet<PathBuf>,
    dirs: HashSet<PathBuf>,
}

/// How often the polling fallback looks at the watched directories.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Sends the paths of every change, creation and removal to the reload loop.
fn forward(
    tx: tokio::sync::mpsc::UnboundedSender<PathBuf>,
) -> impl FnMut(notify::Result<notify::Event>) + Send + 'static {
    move |res| {
        if let Ok(ev) = res
            && (ev.kind.is_modify() || ev.kind.is_create() || ev.kind.is_remove())
        {
            for p in ev.paths {
                let _ = tx.send(p);
            }
        }
    }
}

fn poll_watcher(
    tx: tokio::sync::mpsc::UnboundedSender<PathBuf>,
) -> notify::Result<notify::PollWatcher> {
    notify::PollWatcher::new(
        forward(tx),
        notify::Config::default().with_poll_interval(POLL_INTERVAL),
    )
}

impl FileWatch {
    /// `None` when there is no config file, or when no watcher at all can be made (then
    /// SIGHUP and `POST /admin/reload` still reload).
    fn new(gw: &Gateway) -> Option<FileWatch> {
        gw.table().config.source.as_ref()?;
        let (tx, events) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let (watcher, polling): (Box<dyn notify::Watcher + Send>, bool) =
            match notify::recommended_watcher(forward(tx.clone())) {
                Ok(w) => (Box::new(w), false),
                Err(e) => match poll_watcher(tx.clone()) {
                    Ok(w) => {
                        tracing::warn!(error = %e, "native file watcher unavailable; polling every second");
                        (Box::new(w), true)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "file watcher unavailable; use SIGHUP or POST /admin/reload");
                        return None;
                    }
                },
            };
        let mut w = FileWatch {
            watcher,
            polling,
            tx,
            events,
            files: HashSet::new(),
            dirs: HashSet::new(),
        };
        w.rewatch(gw);
        Some(w)
    }

    /// Watches the directory of every file the current config uses (directories, so an atomic
    /// rename over a file is seen). If the native watcher refuses one (the inotify watch limit),
    /// every directory moves to the polling watcher rather than a file going unwatched.
    fn rewatch(&mut self, gw: &Gateway) {
        use notify::RecursiveMode;
        self.files = watched_files(gw);
        // A set: files sharing a new directory watch it once.
        let new: HashSet<PathBuf> = self
            .files
            .iter()
            .filter_map(|f| f.parent())
            .filter(|d| !self.dirs.contains(*d))
            .map(PathBuf::from)
            .collect();
        for d in new {
            match self.watcher.watch(&d, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.dirs.insert(d);
                }
                Err(e) if !self.polling => {
                    tracing::warn!(dir = %d.display(), error = %e, "native file watcher refused a directory; polling every second");
                    self.switch_to_polling();
                    if self.watcher.watch(&d, RecursiveMode::NonRecursive).is_ok() {
                        self.dirs.insert(d);
                    }
                }
                Err(e) => {
                    tracing::warn!(dir = %d.display(), error = %e, "cannot watch directory");
                }
            }
        }
    }

    /// Replaces the native watcher by a polling one over the same directories.
    fn switch_to_polling(&mut self) {
        use notify::RecursiveMode;
        match poll_watcher(self.tx.clone()) {
            Ok(w) => {
                self.watcher = Box::new(w);
                self.polling = true;
                let dirs = std::mem::take(&mut self.dirs);
                for d in dirs {
                    match self.watcher.watch(&d, RecursiveMode::NonRecursive) {
                        Ok(()) => {
                            self.dirs.insert(d);
                        }
                        Err(e) => {
                            tracing::warn!(dir = %d.display(), error = %e, "cannot watch directory")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "polling file watcher unavailable"),
        }
    }

    fn is_watched(&self, p: PathBuf) -> bool {
        self.files.contains(&std::fs::canonicalize(&p).unwrap_or(p))
    }

    /// Reloads on change (debounced) until shutdown.
    async fn run(mut self, gw: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let first = tokio::select! {
                p = self.events.recv() => match p { Some(p) => p, None => return },
                _ = shutdown.changed() => return,
            };
            let mut hit = self.is_watched(first);
            // Debounce: editors and `cp` produce bursts of events.
            let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
            while let Ok(Some(p)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
                hit |= self.is_watched(p);
            }
            if hit {
                let _ = gw.reload("file-watch").await;
                self.rewatch(&gw);
            }
        }
    }
}

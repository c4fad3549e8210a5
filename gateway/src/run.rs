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
    tasks.spawn(watch_files(gw.clone(), rx.clone()));
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

/// Watches the config and plugin files (notify, debounced) and reloads on change.
async fn watch_files(gw: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    use notify::{RecursiveMode, Watcher};
    if gw.table().config.source.is_none() {
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = match notify::recommended_watcher(
        move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && (ev.kind.is_modify() || ev.kind.is_create() || ev.kind.is_remove())
            {
                for p in ev.paths {
                    let _ = tx.send(p);
                }
            }
        },
    ) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "file watcher unavailable; use SIGHUP or POST /admin/reload");
            return;
        }
    };
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    let mut files = watched_files(&gw);
    let rewatch = |files: &HashSet<PathBuf>,
                   dirs: &mut HashSet<PathBuf>,
                   w: &mut notify::RecommendedWatcher| {
        for f in files {
            if let Some(d) = f.parent()
                && dirs.insert(d.to_path_buf())
                && let Err(e) = w.watch(d, RecursiveMode::NonRecursive)
            {
                tracing::warn!(dir = %d.display(), error = %e, "cannot watch directory");
            }
        }
    };
    rewatch(&files, &mut dirs, &mut watcher);
    loop {
        let first = tokio::select! {
            p = rx.recv() => match p { Some(p) => p, None => return },
            _ = shutdown.changed() => return,
        };
        let mut hit = files.contains(&std::fs::canonicalize(&first).unwrap_or(first));
        // Debounce: editors and `cp` produce bursts of events.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(Some(p)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            hit |= files.contains(&std::fs::canonicalize(&p).unwrap_or(p));
        }
        if hit {
            let _ = gw.reload("file-watch").await;
            files = watched_files(&gw);
            rewatch(&files, &mut dirs, &mut watcher);
        }
    }
}

//! What the `weir` subcommands do (kept in the library so tests can drive them too).

use crate::config::{self, Config};
use crate::run;
use std::path::Path;
use std::process::ExitCode;

/// `weir validate`: parse, validate, then load every plugin and run its `init`.
pub async fn validate(path: &Path) -> ExitCode {
    let cfg = match config::load_file(path) {
        Ok(c) => c,
        Err(errs) => {
            for e in &errs.0 {
                eprintln!("error: {e}");
            }
            eprintln!("{}: {} error(s)", path.display(), errs.0.len());
            return ExitCode::FAILURE;
        }
    };
    let metrics = crate::metrics::Metrics::new();
    let rt = match crate::policy::Runtime::new(&cfg, &metrics) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e:#}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let mut failed = 0;
    for (scope, plugins) in std::iter::once(("global".to_string(), &cfg.global_plugins)).chain(
        cfg.routes
            .iter()
            .map(|r| (format!("route {}", r.name), &r.plugins)),
    ) {
        for e in rt
            .check_all(plugins, &scope, cfg.runtime.pool_max_uses)
            .await
        {
            eprintln!("error: {}: {e}", path.display());
            failed += 1;
        }
    }
    if failed > 0 {
        return ExitCode::FAILURE;
    }
    println!(
        "{}: ok ({} listeners, {} upstreams, {} routes)",
        path.display(),
        cfg.listeners.len(),
        cfg.upstreams.len(),
        cfg.routes.len()
    );
    ExitCode::SUCCESS
}

/// `weir run`: serve until SIGTERM/SIGINT (drain, exit 0); SIGHUP reloads.
pub async fn run(cfg: Config) -> ExitCode {
    let running = match run::start(cfg).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start: {e:#}");
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    serve_with_signals(running).await
}

pub async fn serve_with_signals(running: run::Running) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("error: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let handle = running.shutdown_handle();
    let gw = running.gateway.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: draining"); handle.trigger(); break; }
                _ = int.recv() => { tracing::info!("SIGINT: draining"); handle.trigger(); break; }
                _ = hup.recv() => { let _ = gw.reload("SIGHUP").await; }
            }
        }
    });
    running.wait().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// `weir demo`: demo upstreams on loopback plus the embedded demo config.
pub async fn demo(port: u16, admin_port: u16) -> ExitCode {
    match crate::demo::start(port, admin_port).await {
        Ok((running, banner)) => {
            println!("{banner}");
            serve_with_signals(running).await
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

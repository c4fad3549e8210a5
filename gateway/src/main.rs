//! The `weir` command line.

use clap::{Parser, Subcommand};

/// jemalloc: the proxy allocates small, short-lived buffers per request (glibc malloc showed up
/// at ~8 % of CPU in profiles of the plain proxy path), and idle connections free theirs when
/// they park. Built with a background thread that hands freed pages back to the OS after 1 s
/// without waiting for more allocations (`.cargo/config.toml`); with mimalloc, the alternative
/// measured, 10,000 parked connections kept 45–70 MiB resident against jemalloc's 35 at the
/// same CPU per request (benches/README.md, idle connections).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Weir: an API gateway whose policies are WebAssembly components"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway with a config file.
    Run {
        #[arg(short, long, env = "WEIR_CONFIG", default_value = "weir.toml")]
        config: PathBuf,
    },
    /// Check a config file (and load every plugin, running its init); exit 1 on any error.
    Validate {
        #[arg(short, long, env = "WEIR_CONFIG", default_value = "weir.toml")]
        config: PathBuf,
    },
    /// Start the gateway on an embedded demo config with built-in demo upstreams.
    Demo {
        /// Port of the demo's public listener.
        #[arg(long, env = "WEIR_DEMO_PORT", default_value_t = 8080)]
        port: u16,
        /// Port of the demo's admin listener.
        #[arg(long, env = "WEIR_DEMO_ADMIN_PORT", default_value_t = 9901)]
        admin_port: u16,
    },
    /// Plugin author tools: create, build and test a policy plugin.
    Plugin {
        #[command(subcommand)]
        cmd: weir::plugin_cli::PluginCmd,
    },
}

/// Log filter when `WEIR_LOG` is unset. rustls warns about peer behaviour that is common and
/// harmless (an IP address sent as SNI by curl or wrk given an IP): one line per connection
/// would flood the log, so only its errors are kept.
const DEFAULT_LOG_FILTER: &str = "info,rustls=error";

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().flatten_event(true).init();
    } else {
        b.init();
    }
}

/// Worker threads: `WEIR_WORKERS` (default: the CPUs this process may run on). With one worker
/// the current-thread scheduler is used: no work-stealing or cross-thread wake-ups, which is
/// what a proxy pinned to one core wants.
fn runtime_builder() -> tokio::runtime::Builder {
    let workers = std::env::var("WEIR_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match runtime_builder().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Validate { config } => weir::cli::validate(&config).await,
            Cmd::Run { config } => {
                let cfg = match weir::config::load_file(&config) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                };
                init_logging(cfg.log.format == weir::config::LogFormat::Json);
                weir::cli::run(cfg).await
            }
            Cmd::Demo { port, admin_port } => {
                init_logging(false);
                weir::cli::demo(port, admin_port).await
            }
            Cmd::Plugin { cmd } => weir::plugin_cli::run(cmd).await,
        }
    })
}

#[cfg(test)]
mod tests {
    /// The allocator options come from the build (`JEMALLOC_SYS_WITH_MALLOC_CONF` in
    /// `.cargo/config.toml`); without them freed memory would stay resident.
    #[test]
    fn allocator_purges_freed_memory_in_the_background() {
        assert_eq!(tikv_jemalloc_ctl::opt::background_thread::read(), Ok(true));
        assert_eq!(tikv_jemalloc_ctl::max_background_threads::read(), Ok(1));
    }
}

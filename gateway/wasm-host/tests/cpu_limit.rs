//! The per-call CPU limit counts the guest's CPU time, not wall-clock time: a thread that is
//! descheduled mid-call (busy machine, CPU throttling) or a call awaiting the host on another
//! tokio worker must not fail, while a guest that really spins is still stopped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures::future::BoxFuture;
use weir_wasm_host::*;

async fn call(plugin: &Arc<LoadedPlugin>) -> Result<Action, PluginError> {
    plugin
        .session()
        .on_request(&mut RequestContext::new(), request("/", &[]))
        .await
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Busy threads, one more than there are cores, until dropped (at most 60 s).
struct Hogs {
    busy: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Hogs {
    fn start() -> Self {
        let busy = Arc::new(AtomicBool::new(true));
        let n = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
        let threads = (0..n)
            .map(|_| {
                let busy = busy.clone();
                std::thread::spawn(move || {
                    let end = Instant::now() + Duration::from_secs(60);
                    let mut x = 0u64;
                    while busy.load(Ordering::Relaxed) && Instant::now() < end {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                })
            })
            .collect();
        Hogs { busy, threads }
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        self.busy.store(false, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A 2 ms limit with 1 ms ticks while more threads than cores compete: many microsecond calls
/// are preempted for longer than 2 ms (a wall-clock deadline fails them), none uses 2 ms of CPU.
#[test]
fn trivial_calls_are_not_charged_for_time_spent_descheduled() {
    let rt = multi_thread();
    let runtime = PolicyRuntime::new(RuntimeConfig {
        epoch_tick: Duration::from_millis(1),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let mut s = spec("noop", "noop", Isolation::Pooled);
    s.cpu_limit = Duration::from_millis(2);
    let noop = rt.block_on(runtime.load(&s)).unwrap();
    let mut s = spec("spin", "loop-forever", Isolation::Pooled);
    s.cpu_limit = Duration::from_millis(30);
    let spin = rt.block_on(runtime.load(&s)).unwrap();

    let hogs = Hogs::start();
    let (calls, failures) = rt.block_on(async {
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let noop = noop.clone();
                tokio::spawn(async move {
                    let end = Instant::now() + Duration::from_secs(3);
                    let (mut calls, mut failures) = (0usize, Vec::new());
                    while Instant::now() < end {
                        calls += 1;
                        if let Err(e) = call(&noop).await {
                            failures.push(e.to_string());
                        }
                    }
                    (calls, failures)
                })
            })
            .collect();
        let mut all = (0, Vec::new());
        for t in tasks {
            let (c, f) = t.await.unwrap();
            all.0 += c;
            all.1.extend(f);
        }
        all
    });
    // Still under contention: a spinning guest is stopped by its CPU limit.
    let err = rt.block_on(call(&spin)).unwrap_err();
    drop(hogs);
    assert!(calls > 1000, "only {calls} calls in 3 s");
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(err.kind, PluginErrorKind::Deadline, "{err}");
}

/// Kv that answers after a delay, so the awaiting call is suspended and usually resumes on the
/// other tokio worker.
#[derive(Debug, Default)]
struct SlowKv(InProcessKv);

impl SlowKv {
    const DELAY: Duration = Duration::from_millis(20);
}

impl KvBackend for SlowKv {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, String>> {
        Box::pin(async move {
            tokio::time::sleep(Self::DELAY).await;
            self.0.get(key).await
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            tokio::time::sleep(Self::DELAY).await;
            self.0.set(key, value, ttl).await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            tokio::time::sleep(Self::DELAY).await;
            self.0.delete(key).await
        })
    }

    fn increment<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<i64, String>> {
        Box::pin(async move {
            tokio::time::sleep(Self::DELAY).await;
            self.0.increment(key, delta, ttl).await
        })
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            tokio::time::sleep(Self::DELAY).await;
            self.0.compare_and_swap(key, expected, new, ttl).await
        })
    }
}

/// Host calls take 10× the CPU limit in wall-clock time and resume on whichever worker is free:
/// neither the wait nor the other tasks that ran on either thread meanwhile are charged.
#[test]
fn host_calls_resuming_on_another_worker_are_not_charged() {
    let rt = multi_thread();
    let runtime = PolicyRuntime::new(RuntimeConfig {
        epoch_tick: Duration::from_millis(1),
        kv: Arc::new(SlowKv::default()),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let mut s = spec("counter", "kv-counter", Isolation::Pooled);
    s.cpu_limit = Duration::from_millis(2);
    let counter = rt.block_on(runtime.load(&s)).unwrap();
    let counts = rt.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut counts = Vec::new();
                    for _ in 0..10 {
                        match call(&counter).await.unwrap() {
                            Action::Continue(edits) => counts.extend(
                                edits
                                    .set_headers
                                    .into_iter()
                                    .filter(|(k, _)| k == "x-count")
                                    .map(|(_, v)| v.parse::<u64>().unwrap()),
                            ),
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    counts
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let mut counts = counts;
    counts.sort_unstable();
    assert_eq!(counts, (1..=80).collect::<Vec<u64>>());
}

//! Shared by the bench binaries: the handlers their agents serve, the controller's runtime, their
//! settings from the environment and their statistics.

#![allow(dead_code)]

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use hypha::{BootError, ByteReceiver, Context, Cx, HandlerError, Handlers, Ping, Request};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

/// Upload handler that discards what it gets and says how much it got.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Sink;
impl Request for Sink {
    type Response = u64;
    const NAME: &'static str = "bench.sink";
}

/// The handlers of the bench agents.
pub(crate) fn handlers() -> Handlers {
    Handlers::new()
        .on_upload(|Sink, _: Cx, mut rx: ByteReceiver| async move { rx.drain().await.map_err(HandlerError::from) })
}

/// The controller's runtime: multi-threaded like `#[tokio::main]`, or single-threaded with
/// `HYPHA_BENCH_CURRENT_THREAD=1`.
pub(crate) fn tokio_rt() -> tokio::runtime::Runtime {
    if std::env::var("HYPHA_BENCH_CURRENT_THREAD").is_ok_and(|v| v == "1") {
        return tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio")
}

/// Time from starting a context (awaiting `start`) to its first answered call.
pub(crate) async fn timed_start(start: impl IntoFuture<Output = Result<Context, BootError>>) -> (Duration, Context) {
    let t = Instant::now();
    let ctx = start.await.expect("start");
    ctx.call(Ping).await.expect("ping");
    (t.elapsed(), ctx)
}

/// Round trip of one `Ping` on `ctx`, calls one after another.
pub(crate) fn bench_call_rtt(c: &mut Criterion, name: &str, rt: &tokio::runtime::Runtime, ctx: &Context) {
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let ctx = ctx.clone();
            // Run the loop as a task so the caller and the link's reader share a worker thread.
            rt.block_on(async move {
                tokio::spawn(async move {
                    let t = Instant::now();
                    for _ in 0..iters {
                        ctx.call(Ping).await.expect("ping");
                    }
                    t.elapsed()
                })
                .await
                .expect("task")
            })
        })
    });
}

/// `bytes` of zeros uploaded to `ctx`'s [`Sink`] per iteration.
pub(crate) fn bench_upload(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    rt: &tokio::runtime::Runtime,
    ctx: &Context,
    bytes: u64,
) {
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let ctx = ctx.clone();
            rt.block_on(async move {
                let t = Instant::now();
                for _ in 0..iters {
                    let n = ctx.upload(Sink, tokio::io::repeat(0).take(bytes)).await.expect("upload");
                    assert_eq!(n, bytes);
                }
                t.elapsed()
            })
        })
    });
}

/// A setting from the environment; unset and empty are the same.
pub(crate) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A number from the environment, or `default` when it is unset, empty or not a number.
pub(crate) fn env_num(name: &str, default: usize) -> usize {
    env(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The median of `v` (the mean of the middle two for an even count; NaN for none).
pub(crate) fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// The value at fraction `q` (0..=1) of `v`, sorted (nearest rank); the median as [`median`]
/// says. NaN for none.
pub(crate) fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if q == 0.5 && n % 2 == 0 => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        n => v[((n - 1) as f64 * q).round() as usize],
    }
}

//! Local contexts: start time, call round trip, calls/s, bytes/s, and the floor they are measured
//! against (a bare 64-byte ping-pong over two pipes between the same two processes).
//!
//! ```text
//! cargo bench --bench local                # everything
//! cargo bench --bench local -- call_rtt    # one group
//! ```
//! The bench binary is its own agent: `main` serves as one when started as a context, or echoes
//! 64-byte messages when started by the pipe floor bench.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bench_call_rtt, bench_upload, handlers, timed_start, tokio_rt};
use criterion::{Criterion, Throughput};
use hypha::process;
use hypha::{Ping, Restart, Runtime};

/// Started with this variable set, the binary echoes 64-byte messages on stdin/stdout.
const ECHO_ENV: &str = "HYPHA_BENCH_ECHO";
const MSG: usize = 64;
/// Bytes per sample of the bulk bench.
const BULK: u64 = 1 << 30;

fn echo() -> ! {
    let (mut input, mut output) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut buf = [0u8; MSG];
    while input.read_exact(&mut buf).is_ok() {
        if output.write_all(&buf).and_then(|()| output.flush()).is_err() {
            break;
        }
    }
    std::process::exit(0)
}

/// The floor: the same binary as a child, 64 bytes there and back over its stdin/stdout, with
/// blocking reads and writes on both ends.
fn pipe_floor(c: &mut Criterion) {
    let exe = std::env::current_exe().expect("exe");
    let mut child =
        Command::new(exe).env(ECHO_ENV, "1").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn");
    let (mut to, mut from) = (child.stdin.take().expect("stdin"), child.stdout.take().expect("stdout"));
    let msg = [7u8; MSG];
    let mut back = [0u8; MSG];
    c.bench_function("pipe_pingpong_64b", |b| {
        b.iter(|| {
            to.write_all(&msg).expect("write");
            from.read_exact(&mut back).expect("read");
        })
    });
    drop(to);
    let _ = child.wait();
}

fn start(c: &mut Criterion) {
    let rt = tokio_rt();
    let hypha = rt.block_on(async { Runtime::new(handlers()) }).expect("hypha");
    let mut g = c.benchmark_group("local_start");
    g.sample_size(30);
    g.bench_function("spawn_to_first_call", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (took, ctx) = timed_start(hypha.local()).await;
                    total += took;
                    ctx.shutdown().await;
                }
                total
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("hundred_contexts");
    g.sample_size(10);
    g.bench_function("start_and_call_each_once", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let mut set = tokio::task::JoinSet::new();
                    for _ in 0..100 {
                        let hypha = hypha.clone();
                        set.spawn(async move {
                            let ctx = hypha.local().await.expect("start");
                            ctx.call(Ping).await.expect("ping");
                            ctx
                        });
                    }
                    let mut contexts = Vec::with_capacity(100);
                    while let Some(ctx) = set.join_next().await {
                        contexts.push(ctx.expect("task"));
                    }
                    total += t.elapsed();
                    for ctx in contexts {
                        ctx.shutdown().await;
                    }
                }
                total
            })
        })
    });
    g.finish();
    rt.block_on(hypha.shutdown());
}

/// From a killed agent to its restarted context answering, with the default backoff: how long a
/// healing context is away.
fn restart(c: &mut Criterion) {
    let rt = tokio_rt();
    let (hypha, ctx) = rt.block_on(async {
        let hypha = Runtime::new(handlers()).expect("hypha");
        let ctx = hypha.local().restart(Restart::on_loss()).await.expect("start");
        (hypha, ctx)
    });
    let mut g = c.benchmark_group("restart");
    g.sample_size(20);
    g.bench_function("killed_to_answer", |b| {
        b.iter_custom(|iters| {
            let ctx = ctx.clone();
            rt.block_on(async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let pid = ctx.hello().pid;
                    let t = Instant::now();
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    // A call in flight as the link goes fails (it may have run); the next waits.
                    while ctx.call(Ping).await.is_err() {}
                    total += t.elapsed();
                    assert_ne!(ctx.hello().pid, pid);
                }
                total
            })
        })
    });
    g.finish();
    rt.block_on(hypha.shutdown());
}

fn calls(c: &mut Criterion) {
    let rt = tokio_rt();
    let (hypha, ctx) = rt.block_on(async {
        let hypha = Runtime::new(handlers()).expect("hypha");
        let ctx = hypha.local().await.expect("start");
        (hypha, ctx)
    });
    bench_call_rtt(c, "call_rtt", &rt, &ctx);

    // The process service on a warm context (Mitogen: subprocess.check_output via context.call).
    c.bench_function("check_true", |b| {
        b.to_async(&rt).iter(|| async {
            let out = ctx.check(process::Command::new(["true"])).await.expect("check");
            assert!(out.exit.success());
        })
    });

    const IN_FLIGHT: u64 = 1000;
    let mut g = c.benchmark_group("calls_in_flight");
    g.throughput(Throughput::Elements(IN_FLIGHT));
    g.bench_function("1000_pings", |b| {
        b.iter_custom(|iters| {
            let ctx = ctx.clone();
            rt.block_on(async move {
                let t = Instant::now();
                for _ in 0..iters {
                    let mut set = tokio::task::JoinSet::new();
                    for _ in 0..IN_FLIGHT {
                        let ctx = ctx.clone();
                        set.spawn(async move { ctx.call(Ping).await.expect("ping") });
                    }
                    while set.join_next().await.is_some() {}
                }
                t.elapsed()
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("bulk");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Bytes(BULK));
    bench_upload(&mut g, "upload_1gib", &rt, &ctx, BULK);
    g.finish();
    rt.block_on(hypha.shutdown());
}

fn main() {
    if std::env::var_os(ECHO_ENV).is_some() {
        echo();
    }
    hypha::run_if_agent(&handlers());
    let mut c = Criterion::default().configure_from_args();
    pipe_floor(&mut c);
    calls(&mut c);
    start(&mut c);
    restart(&mut c);
    c.final_summary();
}

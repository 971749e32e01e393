//! One context over SSH (libssh2 in process): the round trip of a typed call, of `check(true)`
//! and the bytes per second of an upload, as Mitogen's `ssh_call_rtt_us`, `ssh_check_true_us` and
//! `ssh_bytes_mib_s` (benches/peers/mitogen_ssh.py) measure them, so that benches/compare/run.sh can put the two
//! side by side. JSON lines on stdout, one per figure.
//!
//! ```text
//! ONE_HOST=127.0.0.1        the host
//! FANOUT_USER, FANOUT_KEY, FANOUT_KNOWN_HOSTS   as benches/fanout.rs
//! ONE_BATCHES=5 ONE_CALLS=2000                  call batches, calls per batch (after 200 warm-up calls)
//! ONE_CHECKS=200                                `check(true)` calls per batch
//! ONE_MIB=256 ONE_REPEATS=3                     upload size and count (after one warm-up upload)
//! ```
//!
//! Figures: `call_rtt_us` (median of the batch means; `per_call_median`, `per_call_p10` and
//! `per_call_p90` over every call), `check_true_us` (the same, of `check(["true"])`) and `bytes_mib_s` (median of the uploads; zeros, discarded by
//! the agent, so the transport is measured and not a disk). Without FANOUT_USER the bench says
//! so and exits.

mod common;

use std::future::Future;
use std::path::PathBuf;
use std::time::Instant;

use common::{env, env_num, handlers, median, quantile, tokio_rt, Sink};
use hypha::process::Command;
use hypha::{Ping, Runtime, Ssh};
use tokio::io::AsyncReadExt;

const MIB: u64 = 1 << 20;

/// `batches` batches of `calls` calls of `call`, one after another, as a figure: the median of the
/// batches' means, and the spread of single calls, in µs.
async fn round_trips<F, Fut>(figure: &str, batches: usize, calls: usize, call: F, host: &str) -> serde_json::Value
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let (mut means, mut each) = (Vec::new(), Vec::new());
    for _ in 0..batches {
        let batch = Instant::now();
        for _ in 0..calls {
            let t = Instant::now();
            call().await;
            each.push(t.elapsed().as_secs_f64() * 1e6);
        }
        means.push(batch.elapsed().as_secs_f64() * 1e6 / calls as f64);
    }
    serde_json::json!({
        "tool": "one-hypha", "figure": figure, "median": median(&means),
        "per_call_median": median(&each), "per_call_p10": quantile(&each, 0.1),
        "per_call_p90": quantile(&each, 0.9), "batches": batches, "calls_per_batch": calls,
        "host": host, "method": "ssh",
    })
}

fn main() {
    hypha::run_if_agent(&handlers());
    let Some(user) = env("FANOUT_USER") else {
        eprintln!("one: FANOUT_USER is not set (run it through benches/compare/run.sh)");
        return;
    };
    let host = env("ONE_HOST").unwrap_or_else(|| "127.0.0.1".into());
    let key = PathBuf::from(env("FANOUT_KEY").expect("FANOUT_KEY"));
    let known_hosts = PathBuf::from(env("FANOUT_KNOWN_HOSTS").expect("FANOUT_KNOWN_HOSTS"));
    let (batches, calls) = (env_num("ONE_BATCHES", 5), env_num("ONE_CALLS", 2000));
    let checks = env_num("ONE_CHECKS", 200);
    let (mib, repeats) = (env_num("ONE_MIB", 256) as u64, env_num("ONE_REPEATS", 3));
    tokio_rt().block_on(async {
        let hypha = Runtime::new(handlers()).expect("runtime");
        let ctx = hypha
            .start(Ssh::new(format!("{user}@{host}")).with_key(&key).with_known_hosts(&known_hosts))
            .await
            .expect("start");
        for _ in 0..200 {
            ctx.call(Ping).await.expect("ping");
        }
        let ping = || async { ctx.call(Ping).await.expect("ping") };
        println!("{}", round_trips("call_rtt_us", batches, calls, ping, &host).await);
        // The process service: `true` run and waited for, as Mitogen's subprocess.check_output
        // through context.call.
        let command = Command::new(["true"]);
        let check = || async {
            let out = ctx.check(command.clone()).await.expect("check");
            assert!(out.exit.success(), "true failed: {:?}", out.exit);
        };
        println!("{}", round_trips("check_true_us", batches, checks, check, &host).await);
        let upload = |bytes: u64| {
            let ctx = ctx.clone();
            async move {
                let t = Instant::now();
                let got = ctx.upload(Sink, tokio::io::repeat(0).take(bytes)).await.expect("upload");
                assert_eq!(got, bytes, "the agent got every byte");
                t.elapsed().as_secs_f64()
            }
        };
        upload(mib.min(64) * MIB).await;
        let mut rates = Vec::new();
        for _ in 0..repeats {
            rates.push(mib as f64 / upload(mib * MIB).await);
        }
        println!(
            "{}",
            serde_json::json!({
                "tool": "one-hypha", "figure": "bytes_mib_s", "median": median(&rates),
                "samples": rates, "mib": mib, "host": host, "method": "ssh",
            })
        );
        hypha.shutdown().await;
    });
}

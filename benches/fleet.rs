//! A fleet of local contexts: N started through `Fleet` (its fan-out), each called once cold and
//! once warm; the time of each round and the controller's memory per context.
//!
//! ```text
//! cargo bench --bench fleet                  # 1,000 contexts
//! FLEET_N=200 FLEET_FANOUT=32 cargo bench --bench fleet
//! ```
//!
//! Prints one JSON object per figure on stdout. The controller's memory is its resident set
//! (`VmRSS`) after the contexts are up, less what it was before the first start, divided by N.

mod common;

use std::time::Instant;

use common::{handlers, tokio_rt};
use hypha::fleet::{Fleet, Outcome, Summary};
use hypha::{Local, Method, Runtime, Whoami};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    hypha::run_if_agent(&handlers());
    let n: usize = std::env::var("FLEET_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let fanout: usize = std::env::var("FLEET_FANOUT").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let rt = tokio_rt();
    rt.block_on(async {
        let hypha = Runtime::new(handlers()).expect("runtime");
        let fleet = Fleet::new(&hypha).with_fanout(fanout);
        let before = rss_kib();
        let t = Instant::now();
        let hosts = (0..n).map(|i| (format!("local{i:04}"), Box::new(Local::default()) as Box<dyn Method>));
        let started = fleet.start(hosts).collect().await;
        let start_s = t.elapsed().as_secs_f64();
        let summary = Summary::new(&started, |()| Ok(()));
        assert!(summary.all_ok(), "{:?}", summary.unreachable.first());
        let per_context_kib = rss_kib().saturating_sub(before) as f64 / n as f64;
        let mut rounds = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let answers = fleet.call(&Whoami).collect().await;
            rounds.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(answers.iter().all(|a| matches!(a.outcome, Outcome::Done(_))));
        }
        rounds.sort_by(f64::total_cmp);
        println!(
            r#"{{"figure": "fleet_local_start_s", "n": {n}, "fanout": {fanout}, "value": {start_s:.3}, "unit": "s"}}"#
        );
        println!(
            r#"{{"figure": "fleet_local_warm_call_ms", "n": {n}, "median": {:.2}, "runs": 5, "unit": "ms"}}"#,
            rounds[2]
        );
        println!(
            r#"{{"figure": "controller_rss_per_context_kib", "n": {n}, "value": {per_context_kib:.1}, "unit": "KiB"}}"#
        );
        fleet.shutdown().await;
        hypha.shutdown().await;
    });
}

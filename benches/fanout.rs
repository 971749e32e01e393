//! A fleet over SSH: N hosts started through `Fleet`, `hostname` run on each (cold), then the same
//! command again on the contexts already up (warm), several rounds. One JSON object on stdout.
//!
//! Driven by `benches/fanout.sh` (as root), which starts the sshd these hosts are, runs this
//! inside its network namespace and sets:
//!
//! ```text
//! FANOUT_HOSTS=50            N hosts: 127.0.0.1 .. 127.0.0.254, then 127.0.1.1 .. (up to 508)
//! FANOUT_USER, FANOUT_KEY, FANOUT_KNOWN_HOSTS
//! FANOUT_FANOUT=64           starts at once (the fleet's default)
//! FANOUT_TIMEOUT=60          connect timeout per host, seconds
//! FANOUT_WARM_ROUNDS=5       warm rounds (median reported)
//! FANOUT_SSHD_CPU=FILE       optional: the cgroup v2 cpu.stat of the sshd, read at each phase
//! ```
//!
//! By hand, with the bench sshd up (`benches/fanout.sh up`, which writes the values to use in
//! its state directory's `env`): `nsenter --net=/run/netns/hypha-fan env FANOUT_USER=…
//! FANOUT_KEY=… FANOUT_KNOWN_HOSTS=… target/…/fanout-…`. Without FANOUT_USER the bench says so and exits.
//!
//! Figures (one object, `"tool": "hypha-fleet"`, the fields of benches/peers/fanout_common.py):
//! `cold_s` (from `Fleet::start` until every host has answered its first `check`), `start_s`
//! (the starts alone), `ok` and `failed` (hosts whose first `hostname` did or did not print one
//! line and exit 0), `warm_ms` (each warm round: a `check` of `hostname` on every context, all at
//! once), `warm_median_ms` and `warm_failed` (answers of the started hosts that failed, summed);
//! `warm_call_ms` and `warm_call_median_ms` (the same rounds as one typed call per host,
//! `Whoami`, answered by the agent without spawning anything); the controller's own CPU
//! (`getrusage` of this process: the SSH client is in-process) and the sshd's (its cgroup), cold
//! and per warm round, in ms per host; `errors`, the first few distinct reasons.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{env, env_num, median};
use hypha::fleet::{Fleet, Summary};
use hypha::process::Command;
use hypha::{Handlers, Method, Runtime, Ssh, Whoami};

/// As many hosts as benches/fanout.sh's sshd has addresses for.
const MAX_HOSTS: usize = 508;

/// Host `i` (1-based): 127.0.0.i up to 254, then 127.0.1.(i - 254), as benches/fanout.sh.
fn host_addr(i: usize) -> String {
    format!("127.0.{}.{}", (i - 1) / 254, (i - 1) % 254 + 1)
}

/// This process's user + system CPU so far, in ms.
fn self_cpu_ms() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return f64::NAN;
    }
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(ru.ru_utime) + ms(ru.ru_stime)
}

/// `usage_usec` of a cgroup v2 cpu.stat, in ms (NaN when there is none).
fn cgroup_cpu_ms(stat: Option<&PathBuf>) -> f64 {
    let Some(path) = stat else { return f64::NAN };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse::<f64>().ok()))
        .map_or(f64::NAN, |us| us / 1e3)
}

/// A JSON number, or null for NaN.
fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "null".into()
    }
}

/// `s` as a JSON string.
fn json_str(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Hosts whose answer is exit 0 and one line of output; the reasons of the others.
fn count(answers: &[hypha::fleet::Answer<hypha::process::Output>], errors: &mut Vec<String>) -> usize {
    let mut ok = 0;
    for a in answers {
        match &a.outcome {
            hypha::fleet::Outcome::Done(out) if out.exit.success() && out.stdout.len() == 1 => ok += 1,
            hypha::fleet::Outcome::Done(out) => errors.push(format!("{}, {} lines", out.exit, out.stdout.len())),
            hypha::fleet::Outcome::Failed(why) => errors.push(format!("failed: {why}")),
            hypha::fleet::Outcome::Unreachable(why) => errors.push(format!("unreachable: {why}")),
            _ => errors.push("another outcome".into()),
        }
    }
    ok
}

fn main() {
    hypha::run_if_agent(&Handlers::new());
    let Some(user) = env("FANOUT_USER") else {
        eprintln!("fanout bench skipped: run it through benches/fanout.sh (FANOUT_USER is not set)");
        return;
    };
    let key = PathBuf::from(env("FANOUT_KEY").expect("FANOUT_KEY"));
    let known_hosts = PathBuf::from(env("FANOUT_KNOWN_HOSTS").expect("FANOUT_KNOWN_HOSTS"));
    let n = env_num("FANOUT_HOSTS", 50);
    assert!((1..=MAX_HOSTS).contains(&n), "FANOUT_HOSTS is 1..{MAX_HOSTS}");
    let fanout = env_num("FANOUT_FANOUT", hypha::fleet::DEFAULT_FANOUT);
    let timeout = Duration::from_secs(env_num("FANOUT_TIMEOUT", 60) as u64);
    let rounds = env_num("FANOUT_WARM_ROUNDS", 5).max(1);
    let sshd = env("FANOUT_SSHD_CPU").map(PathBuf::from);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    rt.block_on(async {
        let hypha = Runtime::new(Handlers::new()).expect("runtime");
        let fleet = Fleet::new(&hypha).with_fanout(fanout).with_connect_timeout(timeout);
        let hosts = (1..=n).map(|i| {
            let m = Ssh::new(format!("{user}@{}", host_addr(i))).with_key(&key).with_known_hosts(&known_hosts);
            (host_addr(i), Box::new(m) as Box<dyn Method>)
        });
        let hostname = || Command::new(["hostname"]);
        let mut errors = Vec::new();
        let (cpu0, sshd0) = (self_cpu_ms(), cgroup_cpu_ms(sshd.as_ref()));
        let t = Instant::now();
        let started = fleet.start(hosts).collect().await;
        let start_s = t.elapsed().as_secs_f64();
        for (host, why) in Summary::new(&started, |()| Ok(())).unreachable {
            errors.push(format!("start {host}: {why}"));
        }
        let ok = count(&fleet.check(hostname()).collect().await, &mut errors);
        let cold_s = t.elapsed().as_secs_f64();
        let (cpu1, sshd1) = (self_cpu_ms(), cgroup_cpu_ms(sshd.as_ref()));
        let (mut warm, mut warm_failed) = (Vec::new(), 0);
        for _ in 0..rounds {
            let t = Instant::now();
            let answers = fleet.check(hostname()).collect().await;
            warm.push(t.elapsed().as_secs_f64() * 1e3);
            let mut why = Vec::new();
            warm_failed += answers.len() - count(&answers, &mut why);
            errors.extend(why.into_iter().map(|e| format!("warm: {e}")));
        }
        let (cpu2, sshd2) = (self_cpu_ms(), cgroup_cpu_ms(sshd.as_ref()));
        // The same rounds as one typed call per host, answered in the agent: no process spawned.
        let mut warm_call = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            let answers = fleet.call(&Whoami).collect().await;
            warm_call.push(t.elapsed().as_secs_f64() * 1e3);
            for a in answers {
                match a.outcome {
                    hypha::fleet::Outcome::Done(id) if !id.host.is_empty() => {}
                    _ => {
                        warm_failed += 1;
                        errors.push(format!("warm call {}: no answer", a.host));
                    }
                }
            }
        }
        errors.sort();
        errors.dedup();
        errors.truncate(5);
        let per_host = |ms: f64| num(ms / n as f64);
        let list = |v: &[f64]| v.iter().map(|v| num(*v)).collect::<Vec<_>>().join(", ");
        println!(
            concat!(
                r#"{{"tool": "hypha-fleet", "n": {n}, "fanout": {fanout}, "cold_s": {cold}, "start_s": {start}, "#,
                r#""ok": {ok}, "failed": {failed}, "warm_failed": {warm_failed}, "#,
                r#""warm_ms": [{warm}], "warm_median_ms": {warm_median}, "#,
                r#""warm_call_ms": [{warm_call}], "warm_call_median_ms": {warm_call_median}, "#,
                r#""ctl_cpu_ms_per_host_cold": {ctl_cold}, "ctl_cpu_ms_per_host_warm_round": {ctl_warm}, "#,
                r#""sshd_cpu_ms_per_host_cold": {sshd_cold}, "sshd_cpu_ms_per_host_warm_round": {sshd_warm}, "#,
                r#""errors": [{errors}]}}"#
            ),
            n = n,
            fanout = fanout,
            cold = num(cold_s),
            start = num(start_s),
            ok = ok,
            failed = n - ok,
            warm_failed = warm_failed,
            warm = list(&warm),
            warm_median = num(median(&warm)),
            warm_call = list(&warm_call),
            warm_call_median = num(median(&warm_call)),
            ctl_cold = per_host(cpu1 - cpu0),
            ctl_warm = per_host((cpu2 - cpu1) / rounds as f64),
            sshd_cold = per_host(sshd1 - sshd0),
            sshd_warm = per_host((sshd2 - sshd1) / rounds as f64),
            errors = errors.iter().map(|e| json_str(e)).collect::<Vec<_>>().join(", "),
        );
        fleet.shutdown().await;
        hypha.shutdown().await;
    });
}

//! SSH contexts against the test lab's `plain` host: start time (agent cached, and with the
//! upload), call round trip, bytes/s.
//!
//! ```text
//! bash tests/lab/lab.sh up       # as root, once
//! cargo bench --bench ssh
//! ```
//! Without the lab the benches are skipped. Peers on the same host: `benches/peers/openssh_baseline.sh`
//! (`ssh host true`, `head -c 1G /dev/zero | ssh host 'cat >/dev/null'`) and
//! `benches/peers/mitogen_ssh.py`.

mod common;

use std::future::IntoFuture;
use std::path::PathBuf;
use std::time::Duration;

use common::{bench_call_rtt, bench_upload, handlers, timed_start, tokio_rt};
use criterion::{Criterion, Throughput};
use hypha::{Method, OpenSsh, Runtime, Ssh};

const BULK: u64 = 1 << 30;

struct Lab {
    dir: PathBuf,
    user: String,
    host: String,
}

impl Lab {
    fn find() -> Option<Lab> {
        let dir = PathBuf::from(std::env::var("HYPHA_LAB_DIR").unwrap_or_else(|_| "/run/hypha-lab".into()));
        let env = std::fs::read_to_string(dir.join("env")).ok()?;
        let get = |key: &str| env.lines().find_map(|l| l.strip_prefix(key)).map(str::to_owned);
        Some(Lab { user: get("USER=")?, host: get("HOST_plain=")?, dir })
    }

    fn ssh(&self) -> Ssh {
        let m = Ssh::new(format!("{}@{}", self.user, self.host))
            .with_key(self.dir.join("keys/id_ed25519"))
            .with_known_hosts(self.dir.join("known_hosts"));
        match std::env::var("HYPHA_BENCH_CIPHERS") {
            Ok(ciphers) => m.with_ciphers(ciphers),
            Err(_) => m,
        }
    }

    fn openssh(&self) -> OpenSsh {
        OpenSsh::new(format!("{}@{}", self.user, self.host))
            .with_identity(self.dir.join("keys/id_ed25519"))
            .with_known_hosts(self.dir.join("known_hosts"))
            .with_args(["-F", "/dev/null"])
    }

    /// Remove the cached agent from the host (not timed).
    fn clear_cache(&self) {
        let status = std::process::Command::new("ssh")
            .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-i"])
            .arg(self.dir.join("keys/id_ed25519"))
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.dir.join("known_hosts").display()))
            .arg(format!("{}@{}", self.user, self.host))
            .arg("rm -rf ~/.cache/hypha")
            .status();
        assert!(status.is_ok_and(|s| s.success()), "clearing the agent cache");
    }
}

fn start(c: &mut Criterion, lab: &Lab) {
    let rt = tokio_rt();
    let hypha = rt.block_on(async { Runtime::new(handlers()) }).expect("hypha");
    // Make sure the agent is cached before measuring cached starts.
    rt.block_on(async { hypha.start(lab.ssh()).await.expect("first start").shutdown().await });
    let mut g = c.benchmark_group("ssh_start");
    g.sample_size(20);
    for name in ["ssh_cached", "openssh_cached"] {
        let method = || -> Box<dyn Method> {
            match name {
                "ssh_cached" => Box::new(lab.ssh()),
                _ => Box::new(lab.openssh()),
            }
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (took, ctx) = timed_start(hypha.start(method())).await;
                        total += took;
                        ctx.shutdown().await;
                    }
                    total
                })
            })
        });
    }
    g.sample_size(10);
    g.bench_function("ssh_with_upload", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    lab.clear_cache();
                    let (took, ctx) = timed_start(hypha.start(lab.ssh())).await;
                    total += took;
                    assert!(ctx.uploaded().is_some());
                    ctx.shutdown().await;
                }
                total
            })
        })
    });
    g.finish();
    rt.block_on(hypha.shutdown());
}

fn calls(c: &mut Criterion, lab: &Lab) {
    let rt = tokio_rt();
    let (hypha, ctx) = rt.block_on(async {
        let hypha = Runtime::new(handlers()).expect("hypha");
        let ctx = hypha.start(lab.ssh()).await.expect("start");
        (hypha, ctx)
    });
    bench_call_rtt(c, "ssh_call_rtt", &rt, &ctx);
    // The process service on a warm SSH context (Mitogen: subprocess.check_output via context.call).
    c.bench_function("ssh_check_true", |b| {
        b.to_async(&rt).iter(|| async {
            let out = ctx.check(hypha::process::Command::new(["true"])).await.expect("check");
            assert!(out.exit.success());
        })
    });
    let mut g = c.benchmark_group("ssh_bulk");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    g.throughput(Throughput::Bytes(BULK));
    let openssh = rt.block_on(hypha.start(lab.openssh()).into_future()).expect("start");
    for (name, ctx) in [("upload_1gib", &ctx), ("upload_1gib_openssh", &openssh)] {
        bench_upload(&mut g, name, &rt, ctx, BULK);
    }
    g.finish();
    rt.block_on(hypha.shutdown());
}

fn main() {
    hypha::run_if_agent(&handlers());
    let Some(lab) = Lab::find() else {
        eprintln!("ssh benches skipped: the lab is not up (run `bash tests/lab/lab.sh up` as root)");
        return;
    };
    let mut c = Criterion::default().configure_from_args();
    calls(&mut c, &lab);
    start(&mut c, &lab);
    c.final_summary();
}

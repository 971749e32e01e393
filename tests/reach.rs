//! Reach (issue 9): agents on hosts unlike this one. `bb` is a static busybox alone (no C library,
//! no coreutils, no cksum), `old` a Debian 11 userland (glibc 2.31, OpenSSL 1.1 only), `arm` a real
//! aarch64 userland run by qemu-user. On each, with both SSH methods: calls, an upload, a cached
//! restart, and a via hop through it. (Without an aarch64 build, `arm` refuses to start: that test
//! is in `tests/ssh.rs`.)
//!
//! The agent on `arm` is this test built for aarch64 (`scripts/build-agents.sh --tests aarch64`
//! puts it at `target/agents/aarch64/tests/reach`); without it the arm tests skip, or fail in CI.

#![allow(clippy::unwrap_used)]

mod util;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hypha::{Context, Runtime};
use util::*;

/// Deadline for a start on `arm`: the emulated agent hashes itself and starts slowly. A bound,
/// not a wait: a start that is done is done.
const EMULATED: Duration = Duration::from_secs(300);

/// The aarch64 build of this test binary, where `scripts/build-agents.sh --tests aarch64` puts it
/// (under `CARGO_TARGET_DIR`, as it does, or the workspace's `target`); `None` (the test skips)
/// where it was not built, outside CI. In CI (`CI=true`) a missing build fails the test.
fn aarch64_agent() -> Option<PathBuf> {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace.join("target"), |t| workspace.join(t));
    let path = target.join("agents/aarch64/tests/reach");
    if path.is_file() {
        return Some(path);
    }
    let why = format!("no aarch64 build of this test at {} (scripts/build-agents.sh --tests aarch64)", path.display());
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI needs {why}");
    }
    eprintln!("skipped: {why}");
    None
}

/// A runtime that serves the aarch64 build of this test to aarch64 hosts.
fn runtime_with_aarch64(build: &std::path::Path) -> Runtime {
    Runtime::with_options(handlers(), hypha::Options::default().agent_for("aarch64", build)).expect("runtime starts")
}

/// Both SSH methods to lab host `name`, `i`-th (0: the system client, 1: in process), with a start
/// deadline of `deadline`.
fn method(lab: &Lab, name: &str, i: usize, deadline: Duration) -> Box<dyn hypha::Method> {
    if i == 0 {
        Box::new(lab.openssh(name).with_timeout(deadline))
    } else {
        Box::new(lab.ssh(name).with_timeout(deadline))
    }
}

/// The agent cache of lab host `name`, as [`Lab::root_sh`] sees it.
fn cache_dir(lab: &Lab, name: &str) -> String {
    format!("{}/home/{}/.cache/hypha", lab.root_dir(name), lab.user)
}

/// What the tests of every host check, with both methods: a start from a clean cache uploads, a
/// second start finds the agent cached (and the cache holds only the agent), calls and an upload
/// work, and the context starts a child of its own on `plain`.
async fn reach(lab: &Lab, rt: &Runtime, name: &str, arch: &str, deadline: Duration) {
    let cache = cache_dir(lab, name);
    for i in 0..2 {
        lab.root_sh(name, &format!("rm -rf {cache}"));
        let started = Instant::now();
        let first =
            rt.start(method(lab, name, i, deadline)).await.unwrap_or_else(|e| panic!("{name}, method {i}: {e}"));
        let upload_took = started.elapsed();
        let uploaded = first.uploaded();
        assert!(uploaded.is_some_and(|n| n > 0), "{name}, method {i}: the first start uploads: {uploaded:?}");
        let started = Instant::now();
        let second =
            rt.start(method(lab, name, i, deadline)).await.unwrap_or_else(|e| panic!("{name}, method {i}: {e}"));
        let cached_took = started.elapsed();
        assert_eq!(second.uploaded(), None, "{name}, method {i}: the second start finds the agent cached");
        // Timings for the record (`--no-capture`), never asserted.
        eprintln!(
            "timing: {name} ({}): first start {upload_took:.2?} (uploaded {} KiB), cached start {cached_took:.2?}",
            first.name(),
            uploaded.unwrap_or(0) >> 10
        );
        let listing = lab.root_sh(name, &format!("ls -A {cache}"));
        let hash = &second.hello().binary_hash;
        assert_eq!(listing.trim(), format!("hypha-{hash}"), "{name}, method {i}: only the agent: {listing}");

        let who = second.call(hypha::Whoami).await.unwrap();
        assert_eq!(who.arch, arch, "{name}");
        assert_eq!(who.user, lab.user, "{name}");
        assert_eq!(who.host, format!("lab-{name}"));
        if i == 0 {
            exercise(&second).await;
        }
        let n = second.upload(Sink, tokio::io::AsyncReadExt::take(tokio::io::repeat(9), 32 << 20)).await.unwrap();
        assert_eq!(n, 32 << 20, "{name}");

        // A via hop through it, to an ordinary host: that host's agent is this machine's build.
        let child = rt.start(lab.ssh("plain")).via(&second).await.unwrap_or_else(|e| panic!("{name} to plain: {e}"));
        let who = child.call(hypha::Whoami).await.unwrap();
        assert_eq!((who.host.as_str(), who.arch.as_str()), ("lab-plain", std::env::consts::ARCH));
        assert_eq!(child.call(Echo(format!("via {name}"))).await.unwrap(), format!("via {name}"));
        child.shutdown().await;
        for ctx in [first, second] {
            ctx.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bb_a_busybox_userland_without_cksum_runs_agents() {
    let Some(lab) = lab() else { return };
    // What the sessions there have: busybox alone, no cksum for the stub to check the agent with.
    let there = lab.sh("bb", "ls -l /bin/sh; command -v cksum || echo no-cksum");
    assert!(there.contains("/bin/busybox") && there.contains("no-cksum"), "{there}");
    let found =
        lab.root_sh("bb", &format!("ls {root}/lib {root}/usr/lib 2>/dev/null; true", root = lab.root_dir("bb")));
    assert!(found.trim().is_empty(), "bb has no libraries: {found}");
    let rt = runtime();
    reach(&lab, &rt, "bb", std::env::consts::ARCH, Duration::from_secs(60)).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_a_debian_11_userland_runs_agents() {
    let Some(lab) = lab() else { return };
    // Really old: glibc 2.31, OpenSSL 1.1, no libssl.so.3.
    let libc = lab.sh("old", "/lib/x86_64-linux-gnu/libc.so.6 | head -n 1");
    assert!(libc.contains("release version 2.31"), "{libc}");
    let ssl = lab.sh("old", "ls /usr/lib/x86_64-linux-gnu/ | grep '^libssl' || true");
    assert!(ssl.contains("libssl.so.1.1") && !ssl.contains("libssl.so.3"), "{ssl}");
    let root = lab.root_dir("old");
    assert!(!root.is_empty());
    let ssl3 = lab.root_sh("old", &format!("find {root}/lib {root}/usr/lib -name 'libssl.so.3*'"));
    assert!(ssl3.trim().is_empty(), "{ssl3}");
    let rt = runtime();
    reach(&lab, &rt, "old", std::env::consts::ARCH, Duration::from_secs(60)).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_runs_the_aarch64_build() {
    let Some(lab) = lab() else { return };
    let Some(build) = aarch64_agent() else { return };
    assert_eq!(lab.sh("arm", "uname -m").trim(), "aarch64");
    let rt = runtime_with_aarch64(&build);
    reach(&lab, &rt, "arm", "aarch64", EMULATED).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_children_of_an_x86_64_hop_get_the_aarch64_build_from_it() {
    let Some(lab) = lab() else { return };
    let Some(build) = aarch64_agent() else { return };
    let wipe = || lab.root_sh("arm", &format!("rm -rf {}", cache_dir(&lab, "arm")));
    let rt = runtime_with_aarch64(&build);
    // plain runs this machine's build; it has no aarch64 one until a child on arm needs it.
    let gw = rt.start(lab.ssh("plain")).await.unwrap();
    let to_arm = lab.ssh("arm").with_timeout(EMULATED);
    let mut children: Vec<Context> = Vec::new();
    for n in 0..2 {
        // A clean cache each time: both children need the build uploaded, from plain.
        wipe();
        let started = Instant::now();
        let child = rt.start(to_arm.clone()).via(&gw).await.unwrap_or_else(|e| panic!("child {n}: {e}"));
        eprintln!("timing: arm via plain, child {n}: {:.2?} (uploaded {:?})", started.elapsed(), child.uploaded());
        assert!(child.uploaded().is_some_and(|n| n > 0), "child {n} uploads");
        let who = child.call(hypha::Whoami).await.unwrap();
        assert_eq!((who.arch.as_str(), who.host.as_str()), ("aarch64", "lab-arm"));
        assert_eq!(child.call(Echo(format!("child {n}"))).await.unwrap(), format!("child {n}"));
        children.push(child);
    }
    assert_ne!(children[0].hello().pid, children[1].hello().pid);
    // The aarch64 build crossed the controller→plain link once: plain kept it for the second.
    assert_eq!(hypha::bootstrap::builds::served(), 1, "fetched once, not once per child");
    // A third start finds it cached.
    let third = rt.start(to_arm.clone()).via(&gw).await.unwrap();
    assert_eq!(third.uploaded(), None);
    for child in children.into_iter().chain([third]) {
        child.shutdown().await;
    }
    rt.shutdown().await;
}

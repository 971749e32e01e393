//! Deadlines and silence: a stopped agent, a network path that drops everything, a start that the
//! caller gives up on.

#![allow(clippy::unwrap_used)]

mod util;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hypha::bootstrap::{BoxFuture, Transport};
use hypha::{BootError, CallError, Local, Method, Options, Runtime, State};
use util::*;

/// The link timeout of these tests (the default is 30 s); `HYPHA_TEST_LINK_TIMEOUT_S` sets another,
/// to measure the default.
fn link_timeout() -> Duration {
    let secs = std::env::var("HYPHA_TEST_LINK_TIMEOUT_S").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    Duration::from_secs(secs)
}

fn quick_runtime() -> Runtime {
    Runtime::with_options(handlers(), Options::default().with_link_timeout(link_timeout())).unwrap()
}

fn stop(pid: u32, signal: i32) {
    // SAFETY: sending a signal has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, signal) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_is_declared_lost_within_the_link_timeout() {
    let rt = quick_runtime();
    let (stopped, other) = (rt.local().await.unwrap(), rt.local().await.unwrap());
    let waiting = {
        let ctx = stopped.clone();
        tokio::spawn(async move { ctx.call(Sleep(60_000)).await })
    };
    assert_eq!(stopped.call(Echo("up".into())).await.unwrap(), "up");
    let pid = stopped.hello().pid;
    stop(pid, libc::SIGSTOP);
    let since = Instant::now();
    let err = tokio::time::timeout(link_timeout() * 2, waiting).await.expect("noticed in time").unwrap().unwrap_err();
    let took = since.elapsed();
    eprintln!("a stopped agent was declared lost after {took:?} (link timeout {:?})", link_timeout());
    assert!(took <= link_timeout() + Duration::from_millis(500), "took {took:?}");
    match &err {
        CallError::Disconnected { reason, .. } => assert!(reason.contains("silent"), "{err}"),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains(stopped.name()), "names the context: {err}");
    assert!(matches!(stopped.closed().await, State::Disconnected { .. }));
    // Its process does not outlive its link, stopped or not, and the other context is unharmed.
    assert!(gone_within(pid, Duration::from_secs(5)).await, "the stopped agent was reaped");
    assert_eq!(other.call(Echo("still".into())).await.unwrap(), "still");
    rt.shutdown().await;
}

/// Starts a local agent, then never finishes: for giving up on a start that is under way.
#[derive(Debug)]
struct NeverReady(&'static AtomicU32);

impl Method for NeverReady {
    fn target(&self) -> String {
        "never ready".into()
    }

    fn start<'a>(&'a self, nonce: &'a str) -> BoxFuture<'a, Result<Transport, BootError>> {
        Box::pin(async move {
            let transport = Local::default().start(nonce).await?;
            let pid = transport.process.as_ref().and_then(|p| p.id()).unwrap_or(0);
            self.0.store(pid, Ordering::SeqCst);
            std::future::pending::<()>().await;
            Ok(transport)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_given_up_by_its_caller_leaves_nothing_running() {
    static PID: AtomicU32 = AtomicU32::new(0);
    let rt = runtime();
    let start = rt.start(NeverReady(&PID));
    assert!(tokio::time::timeout(Duration::from_millis(500), start).await.is_err(), "it never starts");
    let pid = PID.load(Ordering::SeqCst);
    assert_ne!(pid, 0, "the agent's process had been started");
    assert!(gone_within(pid, Duration::from_secs(5)).await, "the half-started agent was killed");
    // A via start given up after the hop began: the child it started is shut down once it is up.
    let parent = rt.local().await.unwrap();
    let via = rt.start(Local::default()).via(&parent);
    let _ = tokio::time::timeout(Duration::from_millis(5), via).await;
    let who = parent.hello().pid;
    let deadline = Instant::now() + Duration::from_secs(10);
    while children(who) > 0 {
        assert!(Instant::now() < deadline, "the given-up child of {who} still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(parent.call(Echo("fine".into())).await.unwrap(), "fine");
    rt.shutdown().await;
}

/// Brings a lab link back up when dropped, whatever the test did.
struct Cut {
    ns: String,
    dev: String,
}

impl Cut {
    fn new(ns: &str, dev: &str) -> Cut {
        let cut = Cut { ns: ns.into(), dev: dev.into() };
        cut.set("down");
        cut
    }

    fn set(&self, state: &str) {
        let ok = std::process::Command::new("ip")
            .args(["-n", &self.ns, "link", "set", &self.dev, state])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip -n {} link set {} {state}", self.ns, self.dev);
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.set("up");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_path_to_a_host_fails_it_like_a_dead_hop_and_spares_the_rest() {
    let Some(lab) = lab() else { return };
    let rt = quick_runtime();
    let hop1 = rt.start(lab.ssh("hop1")).await.unwrap();
    let hop2 = rt.start(lab.ssh("hop2")).via(&hop1).await.unwrap();
    let waiting = {
        let ctx = hop2.clone();
        tokio::spawn(async move { ctx.call(Sleep(60_000)).await })
    };
    assert_eq!(hop2.call(Echo("up".into())).await.unwrap(), "up");
    let pid = hop2.hello().pid;
    // hop2 is reachable only over this veth of hop1's: down, it drops every packet, silently.
    let cut = Cut::new("hypha-hop1", "up-hop2");
    let since = Instant::now();
    let err = tokio::time::timeout(link_timeout() * 3, waiting).await.expect("noticed in time").unwrap().unwrap_err();
    let took = since.elapsed();
    eprintln!("a silent path was declared lost after {took:?} (link timeout {:?})", link_timeout());
    assert!(took <= link_timeout() + Duration::from_secs(1), "took {took:?}");
    assert!(matches!(err, CallError::Disconnected { .. }), "{err}");
    assert!(err.to_string().contains("silent"), "{err}");
    assert!(matches!(hop2.closed().await, State::Disconnected { .. }));
    // The hop in front of it keeps working.
    assert_eq!(hop1.call(Echo("still".into())).await.unwrap(), "still");
    // The agent behind the cut heard nothing from its parent either, and exited on its own.
    tokio::time::sleep(link_timeout() + Duration::from_secs(1)).await;
    drop(cut);
    let state = lab.sh_via_chain("hop2", &format!("kill -0 {pid} 2>/dev/null && echo alive || echo gone"));
    assert_eq!(state.trim(), "gone", "the agent cut off on hop2 exited");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_child_of_a_hop_does_not_stall_its_siblings_or_the_hop() {
    let rt = quick_runtime();
    let hop = rt.local().await.unwrap();
    let mut children = Vec::new();
    for _ in 0..3 {
        children.push(rt.start(Local::default()).via(&hop).await.unwrap());
    }
    let stopped = children[0].clone();
    stop(stopped.hello().pid, libc::SIGSTOP);
    // More than its pipe and the hop's queue for it can hold, all through the hop.
    let page = "x".repeat(4096);
    for _ in 0..4096 {
        stopped.send(Echo(page.clone())).await.unwrap();
    }
    for ctx in [&children[1], &children[2], &hop] {
        let answer = ctx.call_within(Echo("here".into()), Duration::from_secs(1)).await;
        assert_eq!(answer.unwrap(), "here", "{} answered within 1 s", ctx.name());
    }
    // The stopped child is cut off alone: calls to it fail naming it, its siblings carry on.
    let err = stopped.call(Echo("?".into())).await.unwrap_err();
    assert!(err.to_string().contains(stopped.name()), "{err}");
    assert!(matches!(stopped.closed().await, State::Disconnected { .. }));
    assert!(gone_within(stopped.hello().pid, Duration::from_secs(10)).await, "the stopped child was reaped");
    assert_eq!(children[2].call(Echo("still".into())).await.unwrap(), "still");
    rt.shutdown().await;
}

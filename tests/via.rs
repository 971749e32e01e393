//! Contexts started from other contexts (via), routing through them, and losing a hop.

#![allow(clippy::unwrap_used)]

mod util;

use std::time::{Duration, Instant};

use hypha::{CallError, Context, Local, Runtime, State};
use util::*;

async fn chain(rt: &Runtime, hops: usize) -> Vec<Context> {
    let mut contexts = vec![rt.local().await.unwrap()];
    for _ in 1..hops {
        let parent = contexts.last().unwrap().clone();
        contexts.push(rt.start(Local::default()).via(&parent).await.unwrap());
    }
    contexts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_local_contexts_routes_calls_through_every_hop() {
    let rt = runtime();
    let hops = chain(&rt, 4).await;
    // Each was started by the one before it, on its own host (here: as its child process).
    for pair in hops.windows(2) {
        assert_eq!(ppid(pair[1].hello().pid), pair[0].hello().pid, "{} started {}", pair[0].name(), pair[1].name());
    }
    let last = hops.last().unwrap();
    exercise(last).await;
    // Errors say where they happened, through the hops.
    let err = last.call(Fail("x".into())).await.unwrap_err();
    assert!(matches!(&err, CallError::Remote(r) if r.context == last.id()), "{err}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_hop_fails_the_calls_behind_it_naming_it_and_the_rest_keeps_working() {
    let rt = runtime();
    let hops = chain(&rt, 4).await;
    let (first, dead, behind) = (hops[0].clone(), hops[1].clone(), hops[2..].to_vec());
    let waiting: Vec<_> = behind
        .iter()
        .map(|ctx| {
            let ctx = ctx.clone();
            tokio::spawn(async move { ctx.call(Sleep(60_000)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let killed = Instant::now();
    kill9(dead.hello().pid);
    for call in waiting {
        let err =
            tokio::time::timeout(Duration::from_secs(1), call).await.expect("fails within 1 s").unwrap().unwrap_err();
        assert!(killed.elapsed() < Duration::from_secs(1));
        assert!(matches!(err, CallError::Disconnected { .. }), "{err}");
        assert!(err.to_string().contains(dead.name()), "names the lost hop {}: {err}", dead.name());
    }
    // Contexts behind the lost hop exit on their hosts; their handles say so.
    for ctx in &behind {
        assert!(gone_within(ctx.hello().pid, Duration::from_secs(5)).await, "{} still running", ctx.name());
        assert!(matches!(ctx.closed().await, State::Disconnected { .. }));
    }
    assert!(matches!(dead.closed().await, State::Disconnected { .. }));
    // The rest of the tree keeps working, and can grow again.
    assert_eq!(first.call(Echo("still".into())).await.unwrap(), "still");
    let again = rt.start(Local::default()).via(&first).await.unwrap();
    assert_eq!(again.call(Echo("again".into())).await.unwrap(), "again");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_context_cannot_command_its_parent_a_sibling_or_the_controller() {
    let rt = runtime();
    let parent = rt.local().await.unwrap();
    let child = rt.start(Local::default()).via(&parent).await.unwrap();
    let sibling = rt.start(Local::default()).via(&parent).await.unwrap();
    for target in [parent.id(), sibling.id(), 0] {
        let answer = child.call(CallContext(target)).await.unwrap();
        assert!(
            answer.starts_with("refused:") && answer.contains("accepted only from ancestors"),
            "{target}: {answer}"
        );
    }
    // Nor make any of them start a context (with the local method, the sudo one, any) on its host.
    for target in [parent.id(), sibling.id(), 0] {
        let answer = child.call(SpawnOn(target)).await.unwrap();
        assert!(answer.starts_with("refused:") && answer.contains("hypha.local"), "{target}: {answer}");
    }
    assert_eq!(children(parent.hello().pid), 2, "the parent runs its two children and nothing more");
    // Ancestors may: the controller, and the parent itself.
    assert_eq!(parent.call(CallContext(child.id())).await.unwrap(), "obeyed");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_parent_does_not_make_its_child_buffer_without_bound() {
    const SIZE: u64 = 1 << 30;
    let rt = runtime();
    let parent = rt.local().await.unwrap();
    let child = rt.start(Local::default()).via(&parent).await.unwrap();
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
            * 1024
    };
    // The child streams to the controller through its parent...
    let download = {
        let child = child.clone();
        tokio::spawn(async move { child.download(Source(SIZE), tokio::io::sink()).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...and the parent stops reading.
    let (parent_pid, child_pid) = (parent.hello().pid, child.hello().pid);
    // SAFETY: sending a signal has no memory-safety preconditions.
    unsafe { libc::kill(parent_pid as i32, libc::SIGSTOP) };
    let before = rss(child_pid);
    let mut peak = before;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(rss(child_pid));
    }
    // SAFETY: as above.
    unsafe { libc::kill(parent_pid as i32, libc::SIGCONT) };
    assert!(
        peak.saturating_sub(before) < 16 << 20,
        "the child grew by {} MiB while its parent was stalled",
        (peak - before) >> 20
    );
    assert!(!download.is_finished(), "the stream waited for the stalled parent");
    // Once the parent reads again, the stream finishes.
    assert_eq!(tokio::time::timeout(Duration::from_secs(60), download).await.unwrap().unwrap().unwrap(), SIZE);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_context_starts_children_by_itself_with_ids_from_its_block() {
    let rt = runtime();
    let parent = rt.local().await.unwrap();
    let first = parent.call(StartChild).await.unwrap();
    assert!(first >= 1 << 24, "an id from a block, not one of the controller's own: {first}");
    // The route came up the tree: the controller reaches the new context by its id.
    let who = rt.router().call(first, &hypha::Whoami).await.unwrap();
    assert_eq!(ppid(who.pid), parent.hello().pid, "started by its parent, on the parent's host");
    // The next child takes the next id of the block, after the first child's own sub-block.
    let second = parent.call(StartChild).await.unwrap();
    assert_eq!(second, first + 1 + 64);
    // Another context gives out ids from a block of its own.
    let other = rt.local().await.unwrap();
    let third = other.call(StartChild).await.unwrap();
    assert_ne!(third >> 12, first >> 12, "blocks do not overlap: {first} and {third}");
    assert_eq!(rt.router().call(third, &Echo("hi".into())).await.unwrap(), "hi");
    rt.shutdown().await;
    assert!(gone_within(who.pid, Duration::from_secs(5)).await, "a child started by its parent ends with it");
}

#[tokio::test]
async fn a_context_that_opts_in_takes_calls_from_its_descendants_only() {
    let rt = runtime();
    let child = rt.local().await.unwrap();
    let grandchild = rt.start(Local::default()).via(&child).await.unwrap();
    let other = rt.local().await.unwrap();
    assert!(grandchild.call(CallContext(0)).await.unwrap().starts_with("refused:"), "closed by default");
    // The controller opts in: its descendants may now call it, and only they.
    rt.router().accept_calls_from_descendants(true);
    assert_eq!(grandchild.call(CallContext(0)).await.unwrap(), "obeyed");
    assert_eq!(child.call(CallContext(0)).await.unwrap(), "obeyed");
    // Opting in at the controller opens nothing elsewhere: a context still cannot call its sibling.
    let answer = other.call(CallContext(child.id())).await.unwrap();
    assert!(answer.starts_with("refused:"), "{answer}");
    rt.router().accept_calls_from_descendants(false);
    assert!(child.call(CallContext(0)).await.unwrap().starts_with("refused:"));
    // Opening one handler opens that one only.
    rt.router().open_handler_to_descendants("test.Count");
    assert!(child.call(CallContext(0)).await.unwrap().starts_with("refused:"), "test.Echo is still closed");
    rt.router().open_handler_to_descendants("test.Echo");
    assert_eq!(grandchild.call(CallContext(0)).await.unwrap(), "obeyed");
    let answer = other.call(CallContext(child.id())).await.unwrap();
    assert!(answer.starts_with("refused:"), "{answer}");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_remote_error_names_the_path_of_contexts_it_came_through() {
    let rt = runtime();
    let gw = rt.local().name("gw1").await.unwrap();
    let db = rt.local().via(&gw).name("db1").await.unwrap();
    let err = db.call(Fail("x".into())).await.unwrap_err();
    let text = err.to_string();
    let path = format!("controller → gw1 → db1 (local on {})", db.hello().host);
    assert_eq!(db.path(), path);
    assert!(text.starts_with(&format!("{path}: test.Fail failed in context {}", db.id())), "{text}");
    // The cause chain is kept.
    assert!(text.ends_with("no such file"), "{text}");
    rt.shutdown().await;
}

/// The soft and hard open-files limits of process `pid`, from `/proc/PID/limits`.
fn open_files(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let mut words = line.split_whitespace().skip(3);
    (words.next().unwrap().to_owned(), words.next().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_raises_its_open_files_limit_and_its_commands_get_the_one_it_had() {
    // A low soft limit here, which the first context inherits (each test is a process of its own
    // under nextest; under `cargo test` the rest of this binary gets it too, which it can bear).
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the one struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_max <= 512 {
            eprintln!("skipped: the hard limit ({}) leaves nothing to raise", lim.rlim_max);
            return;
        }
        let low = libc::rlimit { rlim_cur: 512, rlim_max: lim.rlim_max };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &low), 0);
    }
    let rt = runtime();
    let gateway = rt.local().await.unwrap();
    let pid = gateway.hello().pid;
    assert_eq!(open_files(pid).0, "512");
    // Serving a start raises it: a gateway may serve hundreds of hosts.
    let child = rt.start(Local::default()).via(&gateway).await.unwrap();
    let (soft, hard) = open_files(pid);
    assert_eq!(soft, hard, "raised to the hard limit");
    // The programs it runs get the limit it had (some still use select(2)).
    let out = gateway.check(hypha::process::Command::shell("ulimit -Sn")).await.unwrap();
    assert_eq!(out.stdout, ["512"]);
    child.shutdown().await;
    rt.shutdown().await;
}

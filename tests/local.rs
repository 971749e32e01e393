//! Local contexts end to end: real agent processes (this test binary) over real pipes.

#![allow(clippy::unwrap_used)]

mod util;

use std::time::{Duration, Instant};

use hypha::{call_all, BootError, CallError, Local, Options, RemoteErrorKind, Runtime, State, Whoami};
use util::*;

#[tokio::test]
async fn hello_and_whoami_describe_the_agent() {
    let rt = runtime();
    let ctx = rt.local().await.expect("starts");
    let who = ctx.call(Whoami).await.expect("answers");
    assert_eq!(who.pid, ctx.hello().pid);
    assert_ne!(who.pid, std::process::id(), "a separate process");
    assert_eq!(ctx.hello().binary_hash, hypha::bootstrap::exe_hash().unwrap());
    assert_eq!(ctx.state(), State::Ready);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_in_flight_on_one_context() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..2000 {
        let ctx = ctx.clone();
        calls.spawn(async move { (i, ctx.call(Echo(format!("call {i}"))).await) });
    }
    let mut seen = 0;
    while let Some(done) = calls.join_next().await {
        let (i, answer) = done.unwrap();
        assert_eq!(answer.unwrap(), format!("call {i}"));
        seen += 1;
    }
    assert_eq!(seen, 2000);
    assert_eq!(rt.router().pending_calls(), 0);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_handler_error_carries_message_causes_and_context() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let err = ctx.call(Fail("/etc/app.toml".into())).await.unwrap_err();
    let CallError::Remote(remote) = &err else { panic!("expected a remote error, got {err}") };
    assert_eq!(remote.kind, RemoteErrorKind::Handler);
    assert_eq!(remote.message, "config not loaded");
    assert_eq!(remote.causes, ["could not open /etc/app.toml", "no such file"]);
    assert_eq!(remote.context, ctx.id());
    assert!(remote.origin.contains(&format!("pid {}", ctx.hello().pid)), "{}", remote.origin);
    // It names the path to the context, then the handler and where it failed.
    let want = format!("{}: test.Fail failed in context {} (", ctx.path(), ctx.id());
    assert!(err.to_string().starts_with(&want), "{err}");
    assert_eq!(remote.path.as_deref(), Some(ctx.path().as_str()));
    rt.shutdown().await;
}

#[tokio::test]
async fn a_panicking_handler_fails_its_call_and_the_agent_keeps_serving() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let err = ctx.call(Panic("kaboom 42".into())).await.unwrap_err();
    match err {
        CallError::Remote(r) => {
            assert_eq!(r.kind, RemoteErrorKind::Panic);
            assert_eq!(r.message, "kaboom 42");
        }
        other => panic!("expected a panic error, got {other}"),
    }
    assert_eq!(ctx.call(Echo("still here".into())).await.unwrap(), "still here");
    rt.shutdown().await;
}

#[tokio::test]
async fn an_unknown_handler_is_named_in_the_error() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let err = ctx.call(NotRegistered).await.unwrap_err();
    let CallError::Remote(r) = &err else { panic!("{err}") };
    assert_eq!(r.kind, RemoteErrorKind::UnknownHandler);
    assert_eq!(r.handler, "test.NotRegistered");
    assert!(err.to_string().contains("has no handler named \"test.NotRegistered\""), "{err}");
    assert!(err.to_string().contains("test.Echo"), "lists what it knows: {err}");
    rt.shutdown().await;
}

#[tokio::test]
async fn fire_and_forget_runs_in_order_with_later_calls() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    for _ in 0..10 {
        ctx.send(Bump(3)).await.unwrap();
    }
    // The failing send is logged by the agent, not reported; the context keeps serving.
    ctx.send(Fail("ignored".into())).await.unwrap();
    // Calls are dispatched in arrival order, and Bump finishes without awaiting.
    let mut count = ctx.call(Count).await.unwrap();
    for _ in 0..50 {
        if count == 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        count = ctx.call(Count).await.unwrap();
    }
    assert_eq!(count, 30);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_all_answers_in_context_order() {
    let rt = runtime();
    let mut contexts = Vec::new();
    for _ in 0..5 {
        contexts.push(rt.local().await.unwrap());
    }
    let answers = call_all(&contexts, &Whoami).await;
    let pids: Vec<u32> = answers.into_iter().map(|a| a.unwrap().pid).collect();
    let expected: Vec<u32> = contexts.iter().map(|c| c.hello().pid).collect();
    assert_eq!(pids, expected);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_killed_agent_fails_waiting_calls_naming_it_and_others_keep_working() {
    let rt = runtime();
    let doomed = rt.local().await.unwrap();
    let other = rt.local().await.unwrap();
    let waiting = {
        let doomed = doomed.clone();
        tokio::spawn(async move { doomed.call(Sleep(60_000)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let killed_at = Instant::now();
    kill9(doomed.hello().pid);
    let err = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("no hang").unwrap().unwrap_err();
    assert!(killed_at.elapsed() < Duration::from_secs(1), "failed after {:?}", killed_at.elapsed());
    match &err {
        CallError::Disconnected { context, name, .. } => {
            assert_eq!(*context, doomed.id());
            assert!(name.contains(&doomed.hello().pid.to_string()), "{name}");
        }
        other => panic!("expected a disconnect, got {other}"),
    }
    assert!(err.to_string().contains(doomed.name()), "{err}");
    match doomed.closed().await {
        State::Disconnected { exit: Some(exit), .. } => assert_eq!(exit.signal, Some(libc::SIGKILL)),
        other => panic!("expected a disconnect with a signal, got {other:?}"),
    }
    // Later calls fail at once; the other context is untouched.
    assert!(doomed.call(Echo("x".into())).await.is_err());
    assert_eq!(other.call(Echo("fine".into())).await.unwrap(), "fine");
    rt.shutdown().await;
}

#[tokio::test]
async fn shutdown_is_graceful_and_observable() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let pid = ctx.hello().pid;
    let slow = {
        let ctx = ctx.clone();
        tokio::spawn(async move { ctx.call(Sleep(300)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let state = ctx.shutdown().await;
    assert_eq!(slow.await.unwrap().unwrap(), 300, "the call in flight finished");
    match state {
        State::ShutDown { graceful: true, exit: Some(exit) } => assert_eq!(exit.code, Some(0)),
        other => panic!("expected a graceful shutdown, got {other:?}"),
    }
    assert!(matches!(ctx.state(), State::ShutDown { .. }), "the handle sees the end too");
    assert!(!alive(pid));
    let err = ctx.call(Echo("late".into())).await.unwrap_err();
    assert!(matches!(err, CallError::NoRoute(_) | CallError::Disconnected { .. }), "{err}");
    // Shutting down twice is harmless.
    assert!(ctx.shutdown().await.is_terminal());
    rt.shutdown().await;
}

#[tokio::test]
async fn an_agent_stuck_past_its_grace_is_killed() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let stuck = {
        let ctx = ctx.clone();
        tokio::spawn(async move { ctx.call(Sleep(60_000)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let state = ctx.shutdown_within(Duration::from_millis(200)).await;
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(matches!(state, State::ShutDown { .. }), "{state:?}");
    assert!(stuck.await.unwrap().is_err(), "the stuck call fails instead of hanging");
    rt.shutdown().await;
}

#[tokio::test]
async fn agents_exit_when_their_controller_is_killed() {
    for pid in orphaned_contexts(3, None) {
        assert!(gone_within(pid, Duration::from_secs(5)).await, "agent {pid} outlived its controller");
    }
}

#[tokio::test]
async fn a_different_binary_is_refused_at_the_handshake() {
    let dir = std::env::temp_dir().join(format!("hypha-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("agent-copy");
    let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    bytes.extend_from_slice(b"a different build");
    std::fs::write(&copy, bytes).unwrap();
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let rt = runtime();
    let err = rt.start(Local::default().with_program(copy)).await.unwrap_err();
    assert!(matches!(err, BootError::Mismatch { what: "binary hash", .. }), "{err}");
    assert!(err.to_string().starts_with("local on "), "names the target: {err}");
    std::fs::remove_dir_all(&dir).unwrap();
    rt.shutdown().await;
}

#[tokio::test]
async fn a_program_that_is_no_agent_fails_clearly_and_fast() {
    let rt = runtime();
    let started = Instant::now();
    let err = rt.start(Local::default().with_program("/bin/false")).await.unwrap_err();
    assert!(matches!(err, BootError::Exited { .. }), "{err}");

    let err = rt.start(Local::default().with_program("/nonexistent/agent")).await.unwrap_err();
    assert!(matches!(err, BootError::Start { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/agent"), "{err}");

    // A program that waits for input and never prints a marker: the handshake deadline ends it.
    let silent = std::env::temp_dir().join(format!("hypha-silent-{}", std::process::id()));
    std::fs::write(&silent, "#!/bin/sh\nexec cat\n").unwrap();
    std::fs::set_permissions(&silent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let quick = Local::default().with_program(&silent).with_timeout(Duration::from_millis(300));
    let err = rt.start(quick).await.unwrap_err();
    assert!(matches!(err, BootError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let _ = std::fs::remove_file(&silent);
    // The runtime is fine afterwards.
    assert_eq!(rt.local().await.unwrap().call(Echo("ok".into())).await.unwrap(), "ok");
    rt.shutdown().await;
}

#[tokio::test]
async fn requests_and_responses_over_the_frame_limit_are_refused_and_nothing_breaks() {
    let rt = Runtime::with_options(handlers(), Options::default().with_max_frame(64 << 10)).unwrap();
    let ctx = rt.local().await.unwrap();
    let err = ctx.call(Echo("y".repeat(100 << 10))).await.unwrap_err();
    assert!(matches!(err, CallError::Encode { .. }), "{err}");
    assert!(err.to_string().contains("exceeds the maximum"), "{err}");
    let err = ctx.call(Big(100 << 10)).await.unwrap_err();
    let CallError::Remote(r) = &err else { panic!("{err}") };
    assert!(r.message.contains("exceeds the maximum frame"), "{err}");
    assert_eq!(ctx.call(Echo("small".into())).await.unwrap(), "small");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_downloads_stream_with_bounded_memory() {
    const SIZE: u64 = 256 << 20;
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let before = rss();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let n = ctx.upload(Sink, tokio::io::repeat(1).take_exact(SIZE)).await.unwrap();
    assert_eq!(n, SIZE);
    let mut counted = Counter(0);
    let n = ctx.download(Source(SIZE), &mut counted).await.unwrap();
    assert_eq!((n, counted.0), (SIZE, SIZE));
    sampler.abort();
    let grew = peak.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(before);
    assert!(grew < 64 << 20, "controller memory grew by {} MiB moving 2 x {} MiB", grew >> 20, SIZE >> 20);
    rt.shutdown().await;
}

#[tokio::test]
async fn an_upload_handler_that_gives_up_ends_the_call_with_its_error() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let started = Instant::now();
    let err = ctx.upload(SinkThenFail(1 << 20), tokio::io::repeat(0).take_exact(1 << 30)).await.unwrap_err();
    assert!(err.to_string().contains("refusing more than 1048576 bytes"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "did not send the whole GiB first");
    assert_eq!(ctx.call(Echo("after".into())).await.unwrap(), "after");
    rt.shutdown().await;
}

/// An `AsyncWrite` that only counts.
struct Counter(u64);

impl tokio::io::AsyncWrite for Counter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0 += buf.len() as u64;
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// `take` with an exact length, for readable call sites.
trait TakeExact: tokio::io::AsyncRead + Sized {
    fn take_exact(self, n: u64) -> tokio::io::Take<Self> {
        tokio::io::AsyncReadExt::take(self, n)
    }
}
impl<R: tokio::io::AsyncRead> TakeExact for R {}

#[tokio::test]
async fn a_secret_argument_never_prints_but_arrives() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let err = ctx.call(Reveal(hypha::Secret::new("s3cr3t-value".into()))).await.unwrap_err();
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains("s3cr3t-value"), "the secret leaked: {text}");
        // It arrived whole, and prints as a placeholder.
        assert!(text.contains("refusing Secret(..) (12 bytes)"), "{text}");
    }
    rt.shutdown().await;
}

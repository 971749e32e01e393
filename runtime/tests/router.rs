//! Routing and calls between routers joined by in-memory pipes.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::BytesMut;
use hypha_runtime::frame::{self, flags, handles, Header};
use hypha_runtime::{
    ByteReceiver, CallError, CloseReason, Cx, HandlerError, Handlers, LinkHandle, LinkOptions, Ping, RemoteErrorKind,
    Request, Role, Router, RouterConfig,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

#[derive(Debug, Serialize, Deserialize)]
struct Double(u64);
impl Request for Double {
    type Response = u64;
    const NAME: &'static str = "t.double";
}

#[derive(Debug, Serialize, Deserialize)]
struct Hang;
impl Request for Hang {
    type Response = ();
    const NAME: &'static str = "t.hang";
}

#[derive(Debug, Serialize, Deserialize)]
struct Slurp;
impl Request for Slurp {
    type Response = u64;
    const NAME: &'static str = "t.slurp";
}

#[derive(Debug, Serialize, Deserialize)]
struct Login(String, hypha_runtime::Secret<String>);
impl Request for Login {
    type Response = String;
    const NAME: &'static str = "t.login";
}

fn handlers() -> Handlers {
    Handlers::new()
        .on(|Login(user, _), _: Cx| async move { Ok::<_, HandlerError>(format!("welcome {user}")) })
        .on(|Double(n), _: Cx| async move { Ok::<_, HandlerError>(n * 2) })
        .on(|Hang, _: Cx| async move {
            std::future::pending::<()>().await;
            Ok::<_, HandlerError>(())
        })
        .on_upload(|Slurp, _: Cx, mut rx: ByteReceiver| async move {
            // A slow consumer: the sender must wait for credit rather than flood the pipe.
            let mut n = 0;
            while let Some(chunk) = rx.recv().await? {
                n += chunk.len() as u64;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok::<_, HandlerError>(n)
        })
}

fn config(id: u32, ancestors: Vec<u32>) -> RouterConfig {
    RouterConfig::new(id, ancestors, format!("test context {id}")).with_max_frame(1 << 20)
}

fn router(id: u32, ancestors: Vec<u32>) -> Router {
    Router::new(config(id, ancestors), handlers())
}

fn attach(router: &Router, role: Role, pipe: DuplexStream, initial: BytesMut) -> LinkHandle {
    let (r, w) = tokio::io::split(pipe);
    let opts = LinkOptions { role, name: format!("{role:?} pipe"), span: tracing::Span::none(), initial };
    router.attach(r, w, opts)
}

/// Controller 0 with child 1.
fn pair() -> (Router, Router, LinkHandle, LinkHandle) {
    let (a, b) = tokio::io::duplex(256 << 10);
    let parent = router(0, vec![]);
    let child = router(1, vec![0]);
    let down = attach(&parent, Role::Child(1), a, BytesMut::new());
    let up = attach(&child, Role::Parent, b, BytesMut::new());
    (parent, child, down, up)
}

#[tokio::test]
async fn calls_round_trip_and_many_fly_at_once() {
    let (parent, _child, _down, _up) = pair();
    assert_eq!(parent.call(1, &Double(21)).await.unwrap(), 42);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..500u64 {
        let p = parent.clone();
        set.spawn(async move { (i, p.call(1, &Double(i)).await.unwrap()) });
    }
    while let Some(r) = set.join_next().await {
        let (i, d) = r.unwrap();
        assert_eq!(d, i * 2);
    }
    assert_eq!(parent.pending_calls(), 0);
}

#[tokio::test]
async fn a_closing_link_fails_every_waiting_call_with_the_context_named() {
    let (parent, child, mut down, up) = pair();
    let mut waiting = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let p = parent.clone();
        waiting.spawn(async move { p.call(1, &Hang).await });
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(parent.pending_calls(), 10);
    child.close(up.id(), CloseReason::Local("test".into()));
    assert_eq!(down.closed().await, CloseReason::Eof);
    while let Some(r) = waiting.join_next().await {
        match r.unwrap() {
            Err(CallError::Disconnected { context: 1, name, reason }) => {
                assert_eq!(name, "Child(1) pipe");
                assert!(reason.contains("end of file"), "{reason}");
            }
            other => panic!("expected a disconnect, got {other:?}"),
        }
    }
    assert_eq!(parent.pending_calls(), 0);
    assert!(matches!(parent.call(1, &Ping).await, Err(CallError::NoRoute(1))));
}

#[tokio::test]
async fn garbage_on_a_link_closes_it_and_fails_its_calls() {
    let (near, mut far) = tokio::io::duplex(64 << 10);
    let parent = router(0, vec![]);
    let mut link = attach(&parent, Role::Child(1), near, BytesMut::new());
    let call = {
        let p = parent.clone();
        tokio::spawn(async move { p.call(1, &Ping).await })
    };
    let mut sink = vec![0; 4096];
    let _ = far.read(&mut sink).await.unwrap(); // the call arrived
    far.write_all(b"Welcome to the machine, have a nice day\n").await.unwrap();
    assert!(matches!(link.closed().await, CloseReason::Garbled(frame::FrameError::TooLarge { .. })));
    assert!(matches!(call.await.unwrap(), Err(CallError::Disconnected { .. })));
}

#[tokio::test]
async fn children_cannot_call_their_parent_or_forge_a_source() {
    let (parent, child, _down, _up) = pair();
    // A child calling its parent is refused: calls are accepted only from ancestors.
    let err = child.call(0, &Ping).await.unwrap_err();
    let CallError::Remote(r) = &err else { panic!("{err}") };
    assert_eq!(r.kind, RemoteErrorKind::Refused);
    assert_eq!(r.context, 0);

    // A frame claiming to come from a context that is not behind the link is dropped unanswered.
    let (near, mut far) = tokio::io::duplex(64 << 10);
    let _link = attach(&parent, Role::Child(7), near, BytesMut::new());
    let mut out = BytesMut::new();
    let forged = Header { dst: 0, src: 1, handle: handles::CALL, reply_to: 2000, flags: 0 };
    frame::encode(&forged, b"\xa1x", 1 << 20, &mut out).unwrap();
    far.write_all(&out).await.unwrap();
    let mut buf = [0u8; 64];
    let answered = tokio::time::timeout(Duration::from_millis(200), far.read(&mut buf)).await;
    assert!(answered.is_err(), "the forged call got an answer");
}

#[tokio::test]
async fn unknown_flags_and_mismatched_streams_are_errors_not_panics() {
    let (parent, _child, _down, _up) = pair();
    // An upload call to a plain handler is refused with a clear error, and the link survives.
    let err = parent.upload(1, &Double(1), &b"abc"[..]).await.unwrap_err();
    let CallError::Remote(r) = &err else { panic!("{err}") };
    assert_eq!(r.kind, RemoteErrorKind::BadRequest);
    assert_eq!(parent.call(1, &Double(2)).await.unwrap(), 4);
    assert_eq!(flags::KNOWN & (1 << 31), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_throttles_the_sender() {
    let (parent, _child, _down, _up) = pair();
    let size = 16u64 << 20;
    let n = parent.upload(1, &Slurp, tokio::io::repeat(9).take(size)).await.unwrap();
    assert_eq!(n, size);
}

#[derive(Debug, Serialize, Deserialize)]
struct Deep;
impl Request for Deep {
    type Response = u32;
    const NAME: &'static str = "t.deep";
}

#[tokio::test]
async fn frames_for_unknown_ids_go_to_the_parent_and_routes_forward() {
    // 0 — 1 — 2: the controller hears of 2 from 1, which it granted the id to.
    let (a, b) = tokio::io::duplex(64 << 10);
    let (c, d) = tokio::io::duplex(64 << 10);
    let zero = router(0, vec![]);
    let one = router(1, vec![0]);
    let two = Router::new(
        config(2, vec![1, 0]),
        Handlers::new().on(|Deep, cx: Cx| async move { Ok::<_, HandlerError>(cx.id()) }),
    );
    zero.grant((2, 3), 1);
    let _l0 = attach(&zero, Role::Child(1), a, BytesMut::new());
    let _l1 = attach(&one, Role::Parent, b, BytesMut::new());
    // Without a route to 2, the controller has nowhere to send the call.
    assert!(matches!(zero.call(2, &Deep).await, Err(CallError::NoRoute(2))));
    let _l2 = attach(&one, Role::Child(2), c, BytesMut::new());
    let _l3 = attach(&two, Role::Parent, d, BytesMut::new());
    // Attaching announced 2 up the tree; 2's answer goes to its parent, which knows no route to 0
    // and so sends it on to its own parent.
    one.call(0, &Ping).await.unwrap_err(); // refused, but after the announcement (frames stay in order)
    assert_eq!(zero.call(2, &Deep).await.unwrap(), 2);
    // 2 may not call 1: 2 is not among 1's ancestors.
    let err = two.call(1, &Ping).await.unwrap_err();
    assert!(err.to_string().contains("accepted only from ancestors"), "{err}");
}

/// Regression: a frame that arrived together with the handshake (already in `initial`) was dropped
/// when the reader ran before the link was registered as the parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_read_with_the_handshake_is_answered() {
    for _ in 0..200 {
        let (near, mut far) = tokio::io::duplex(64 << 10);
        let agent = router(1, vec![0]);
        let mut initial = BytesMut::new();
        let call = Header { dst: 1, src: 0, handle: handles::CALL, reply_to: 5000, flags: 0 };
        frame::encode(&call, b"\xaahypha.ping\xc0", 1 << 20, &mut initial).unwrap();
        let _link = attach(&agent, Role::Parent, near, initial);
        let mut buf = BytesMut::new();
        let reply = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                far.read_buf(&mut buf).await.unwrap();
                if let Some(f) = frame::decode(&mut buf, 1 << 20).unwrap() {
                    return f;
                }
            }
        })
        .await
        .expect("the call is answered");
        assert_eq!(reply.header.handle, 5000);
        assert_eq!(reply.header.flags, flags::REPLY);
    }
}

#[tokio::test]
async fn routes_are_announced_up_and_withdrawn_when_a_hop_dies() {
    // 0 — 1 — 2, as a via start would leave them: attaching 2 announces it to 1's parent.
    let (a, b) = tokio::io::duplex(64 << 10);
    let (c, d) = tokio::io::duplex(64 << 10);
    let zero = router(0, vec![]);
    let one = router(1, vec![0]);
    let two = router(2, vec![1, 0]);
    zero.grant((2, 3), 1);
    let _l0 = attach(&zero, Role::Child(1), a, BytesMut::new());
    let _l1 = attach(&one, Role::Parent, b, BytesMut::new());
    let l2 = attach(&one, Role::Child(2), c, BytesMut::new());
    let up = attach(&two, Role::Parent, d, BytesMut::new());
    // Frames on one link stay in order: an answer from 1 comes after its announcement.
    one.call(0, &Ping).await.unwrap_err(); // (refused: 1 may not call its parent, but the answer travels)
    assert_eq!(zero.call(2, &Double(4)).await.unwrap(), 8);

    // Hop 2 dies while a call waits on it: the call fails naming the lost hop, watchers hear it.
    let mut watch = zero.watch_route(2);
    let waiting = {
        let zero = zero.clone();
        tokio::spawn(async move { zero.call(2, &Hang).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    two.close(up.id(), CloseReason::Local("killed".into()));
    let err = tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("within 1 s").unwrap().unwrap_err();
    match &err {
        CallError::Disconnected { context: 2, name, reason } => {
            assert!(name.contains("lost hop: context 2"), "{err}");
            assert!(reason.contains("Child(2) pipe was lost"), "{err}");
        }
        other => panic!("{other:?}"),
    }
    let why = watch.wait_for(Option::is_some).await.unwrap().clone().unwrap();
    assert!(why.contains("Child(2) pipe was lost"), "{why}");
    assert!(matches!(zero.call(2, &Ping).await, Err(CallError::NoRoute(2)) | Err(CallError::Disconnected { .. })));
    // The rest of the tree keeps working.
    assert_eq!(zero.call(1, &Double(1)).await.unwrap(), 2);
    drop(l2);
}

#[tokio::test]
async fn a_call_without_an_answer_times_out_naming_context_and_handler() {
    let (parent, _child, _down, _up) = pair();
    let err = parent.call_within(1, &Hang, Duration::from_millis(100)).await.unwrap_err();
    match &err {
        CallError::Timeout { context: 1, handler: "t.hang", after } => assert_eq!(*after, Duration::from_millis(100)),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("t.hang in context 1 did not answer within 0.1 s"), "{err}");
    assert_eq!(parent.pending_calls(), 0);
    // The default deadline is the router's.
    let (a, b) = tokio::io::duplex(64 << 10);
    let quick = Router::new(config(0, vec![]).with_call_timeout(Duration::from_millis(50)), handlers());
    let child = router(1, vec![0]);
    let _l = attach(&quick, Role::Child(1), a, BytesMut::new());
    let _m = attach(&child, Role::Parent, b, BytesMut::new());
    assert!(matches!(quick.call(1, &Hang).await, Err(CallError::Timeout { .. })));
    assert_eq!(quick.call(1, &Double(2)).await.unwrap(), 4);
}

#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_call_is_logged_with_its_arguments_and_result_cut_short_and_secrets_never() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let (parent, _child, _down, _up) = pair();
    let user = "a-user-name-long-enough-to-be-cut-in-the-log-".repeat(3);
    let login = Login(user.clone(), hypha_runtime::Secret::new("pa55word-xyz".into()));
    assert!(parent.call(1, &login).await.unwrap().starts_with("welcome"));
    let short = Login("bob".into(), hypha_runtime::Secret::new("pa55word-xyz".into()));
    parent.call(1, &short).await.unwrap();
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(!text.contains("pa55word-xyz"), "the secret was logged:\n{text}");
    // The long call: its arguments cut at 50 characters and marked; its result too.
    let cut = hypha_runtime::logged::cut(&login, 50, "<...>");
    assert_eq!(cut.chars().count(), 50 + "<...>".len());
    assert!(text.contains(&format!("args={cut}")), "{text}");
    assert!(text.contains("handler=\"t.login\"") && text.contains("result=\"welcome a-user"), "{text}");
    // The short one whole, with the secret as a placeholder.
    assert!(text.contains(r#"args=Login("bob", Secret(..))"#), "{text}");
}

//! Hostile and broken peers, played by the test with raw frames: forged calls and control
//! messages, credit ignored, abandoned streams, a peer that stops reading, one that goes silent.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hypha_runtime::frame::{self, flags, handles, Frame, Header};
use hypha_runtime::proto::Control;
use hypha_runtime::{
    ByteReceiver, ByteSender, CallError, CloseReason, Cx, HandlerError, Handlers, LinkHandle, LinkOptions, RemoteError,
    RemoteErrorKind, Request, Role, Router, RouterConfig,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

#[derive(Debug, Serialize, Deserialize)]
struct Touch;
impl Request for Touch {
    type Response = u32;
    const NAME: &'static str = "t.touch";
}

#[derive(Debug, Serialize, Deserialize)]
struct Slow(u64);
impl Request for Slow {
    type Response = u64;
    const NAME: &'static str = "t.slow";
}

#[derive(Debug, Serialize, Deserialize)]
struct Nap;
impl Request for Nap {
    type Response = u64;
    const NAME: &'static str = "t.nap";
}

#[derive(Debug, Serialize, Deserialize)]
struct Drip;
impl Request for Drip {
    type Response = u64;
    const NAME: &'static str = "t.drip";
}

#[derive(Debug, Serialize, Deserialize)]
struct Quit;
impl Request for Quit {
    type Response = u64;
    const NAME: &'static str = "t.quit";
}

/// A context of the test: its router, how often `t.touch` ran in it, what control messages reached
/// it, and when its stream handlers got going and how they ended.
struct Node {
    router: Router,
    touched: Arc<AtomicUsize>,
    control: mpsc::UnboundedReceiver<Control>,
    ended: mpsc::UnboundedReceiver<String>,
}

fn node(cfg: RouterConfig) -> Node {
    let touched = Arc::new(AtomicUsize::new(0));
    let (ended_tx, ended) = mpsc::unbounded_channel();
    let t = touched.clone();
    let (e1, e2) = (ended_tx.clone(), ended_tx);
    let handlers = Handlers::new()
        .on(move |Touch, cx: Cx| {
            t.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, HandlerError>(cx.id()) }
        })
        .on(|Slow(n), _: Cx| async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, HandlerError>(n * 2)
        })
        // Takes an upload but sleeps before reading any of it.
        .on_upload(|Nap, _: Cx, mut rx: ByteReceiver| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            rx.drain().await.map_err(HandlerError::from)
        })
        // Reads an upload slowly; says how it ended.
        .on_upload(move |Drip, _: Cx, mut rx: ByteReceiver| {
            let ended = e1.clone();
            async move {
                let mut n = 0;
                let end = loop {
                    match rx.recv().await {
                        Ok(Some(chunk)) => {
                            if n == 0 {
                                let _ = ended.send("started".into());
                            }
                            n += chunk.len() as u64
                        }
                        Ok(None) => break "complete".to_owned(),
                        Err(e) => break e.to_string(),
                    }
                };
                let _ = ended.send(end);
                Ok::<_, HandlerError>(n)
            }
        })
        // Sends without end; says how it ended.
        .on_download(move |Quit, _: Cx, mut tx: ByteSender| {
            let ended = e2.clone();
            async move {
                let chunk = Bytes::from(vec![1u8; 64 << 10]);
                let mut first = true;
                let end = loop {
                    if let Err(e) = tx.send(chunk.clone()).await {
                        break e.to_string();
                    }
                    if std::mem::take(&mut first) {
                        let _ = ended.send("started".into());
                    }
                };
                let _ = ended.send(end);
                Ok::<_, HandlerError>(0)
            }
        });
    let router = Router::new(cfg, handlers);
    let (tx, control) = mpsc::unbounded_channel();
    router.set_control(tx);
    Node { router, touched, control, ended }
}

fn cfg(id: u32, ancestors: Vec<u32>) -> RouterConfig {
    RouterConfig::new(id, ancestors, format!("context {id}")).with_max_frame(1 << 20)
}

fn attach(router: &Router, role: Role, pipe: DuplexStream) -> LinkHandle {
    let (r, w) = tokio::io::split(pipe);
    let opts = LinkOptions { role, name: format!("{role:?}"), span: tracing::Span::none(), initial: BytesMut::new() };
    router.attach(r, w, opts)
}

/// Join `parent` and `child` (a router whose parent is `parent`).
fn join(parent: &Router, child: &Router) -> (LinkHandle, LinkHandle) {
    let (a, b) = tokio::io::duplex(256 << 10);
    (attach(parent, Role::Child(child.id()), a), attach(child, Role::Parent, b))
}

/// The far end of a link, written and read frame by frame by the test.
struct Raw {
    r: ReadHalf<DuplexStream>,
    w: WriteHalf<DuplexStream>,
    buf: BytesMut,
}

impl Raw {
    /// A raw peer at the far end of a new link of `router`.
    fn attach(router: &Router, role: Role) -> (Raw, LinkHandle) {
        Raw::attach_with(router, role, 1 << 20)
    }

    /// ... with a pipe of `capacity` bytes between them.
    fn attach_with(router: &Router, role: Role, capacity: usize) -> (Raw, LinkHandle) {
        let (near, far) = tokio::io::duplex(capacity);
        let link = attach(router, role, near);
        let (r, w) = tokio::io::split(far);
        (Raw { r, w, buf: BytesMut::new() }, link)
    }

    async fn send(&mut self, header: Header, body: &[u8]) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        frame::encode(&header, body, 1 << 20, &mut out).unwrap();
        self.w.write_all(&out).await
    }

    async fn call<R: Request>(&mut self, src: u32, dst: u32, req: &R, reply_to: u32) {
        let mut body = rmp_serde::to_vec(R::NAME).unwrap();
        body.extend(rmp_serde::to_vec(req).unwrap());
        let h = Header { dst, src, handle: handles::CALL, reply_to, flags: 0 };
        self.send(h, &body).await.unwrap();
    }

    async fn control(&mut self, src: u32, dst: u32, msg: &Control) {
        let h = Header { dst, src, handle: handles::CONTROL, reply_to: 0, flags: 0 };
        self.send(h, &rmp_serde::to_vec(msg).unwrap()).await.unwrap();
    }

    /// The next frame other than a heartbeat, if one comes within `within`.
    async fn recv(&mut self, within: Duration) -> Option<Frame> {
        tokio::time::timeout(within, async {
            loop {
                if let Some(f) = frame::decode(&mut self.buf, 1 << 20).unwrap() {
                    if f.header.handle != handles::HEARTBEAT {
                        return f;
                    }
                    continue;
                }
                if self.r.read_buf(&mut self.buf).await.unwrap() == 0 {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .ok()
    }
}

fn refusal(f: &Frame) -> RemoteError {
    assert_ne!(f.header.flags & flags::ERROR, 0, "an error answer");
    rmp_serde::from_slice(&f.body).unwrap()
}

const QUIET: Duration = Duration::from_millis(300);

/// 0 — 1 — {rogue 2 (raw), 3}, and a rogue 4 under 3: the ids are granted as the controller and
/// the via starts would grant them.
struct Tree {
    zero: Node,
    one: Node,
    three: Node,
    rogue: Raw,
    grandchild: Raw,
    _links: Vec<LinkHandle>,
}

/// Grants as the controller and the hops would make them: the controller's own for every id, the
/// hop's for the blocks of the children it started, and the controller's to the hop (`grant_at`)
/// for the grandchild 4 started via 3.
async fn settled_tree() -> Tree {
    let (zero, one, three) = (node(cfg(0, vec![])), node(cfg(1, vec![0])), node(cfg(3, vec![1, 0])));
    for (ids, under) in [((1, 2), 1), ((2, 3), 1), ((3, 4), 1), ((4, 5), 3), ((100, 200), 2), ((200, 300), 3)] {
        zero.router.grant(ids, under);
    }
    one.router.grant((100, 200), 2);
    one.router.grant((200, 300), 3);
    let (a, b) = join(&zero.router, &one.router);
    let (c, d) = join(&one.router, &three.router);
    let (rogue, e) = Raw::attach(&one.router, Role::Child(2));
    zero.router.grant_at(1, (4, 5), 3).await.unwrap();
    zero.router.call(1, &hypha_runtime::Ping).await.unwrap(); // the grant has arrived
    let (grandchild, f) = Raw::attach(&three.router, Role::Child(4));
    let mut t = Tree { zero, one, three, rogue, grandchild, _links: vec![a, b, c, d, e, f] };
    settle(&mut t).await;
    t
}

/// Everything sent so far, by anyone, has been handled everywhere: each raw peer's frames have
/// been read by its neighbour (which answers a ping only after the frames before it), and what
/// they forwarded has reached the controller ahead of the controller's own pings.
async fn settle(t: &mut Tree) {
    for (raw, src, dst) in [(&mut t.rogue, 2, 1), (&mut t.grandchild, 4, 3)] {
        raw.call(src, dst, &hypha_runtime::Ping, 9999).await;
        while raw.recv(Duration::from_secs(5)).await.expect("the barrier's answer").header.handle != 9999 {}
    }
    for id in [1, 3] {
        t.zero.router.call(id, &hypha_runtime::Ping).await.unwrap();
    }
}

fn no_control(n: &mut Node) {
    assert!(n.control.try_recv().is_err(), "a forged control message got through");
}

#[tokio::test]
async fn forged_calls_from_a_child_a_grandchild_and_a_sibling_are_refused_and_nothing_runs() {
    let mut t = settled_tree().await;
    // The child calls its parent, as itself: refused, with an answer that says so.
    t.rogue.call(2, 1, &Touch, 5000).await;
    let answer = t.rogue.recv(Duration::from_secs(2)).await.expect("an answer");
    assert_eq!(refusal(&answer).kind, RemoteErrorKind::Refused);
    // ... claiming to be the controller or its parent: dropped on arrival (reverse path).
    t.rogue.call(0, 1, &Touch, 5001).await;
    t.rogue.call(1, 1, &Touch, 5002).await;
    // ... the controller, and its sibling: refused there.
    t.rogue.call(2, 0, &Touch, 5003).await;
    t.rogue.call(2, 3, &Touch, 5004).await;
    for _ in 0..2 {
        let answer = t.rogue.recv(Duration::from_secs(2)).await.expect("an answer");
        assert_eq!(refusal(&answer).kind, RemoteErrorKind::Refused);
    }
    assert!(t.rogue.recv(QUIET).await.is_none(), "the forged sources got no answer");
    // A grandchild calls its grandparent and the controller, as itself and as them.
    for (src, dst) in [(4, 1), (4, 0), (1, 1), (0, 0), (3, 1)] {
        t.grandchild.call(src, dst, &Touch, 6000).await;
    }
    settle(&mut t).await;
    for node in [&t.zero, &t.one, &t.three] {
        assert_eq!(node.touched.load(Ordering::SeqCst), 0, "a forged call ran");
    }
    // The tree still works for its real ancestors.
    assert_eq!(t.zero.router.call(1, &Touch).await.unwrap(), 1);
}

#[tokio::test]
async fn forged_control_messages_are_refused() {
    let mut t = settled_tree().await;
    let shutdown = Control::Shutdown { grace_ms: 0 };
    // Shutdown, from a child to its parent, to the controller and to its sibling; from a
    // grandchild to its grandparent; each as itself and as an ancestor of the target.
    for (src, dst) in [(2, 1), (0, 1), (2, 0), (2, 3), (1, 3)] {
        t.rogue.control(src, dst, &shutdown).await;
    }
    for (src, dst) in [(4, 1), (3, 1), (0, 1), (4, 0)] {
        t.grandchild.control(src, dst, &shutdown).await;
    }
    // Routes: the sibling's id, its block, the parent's and the controller's own ids, an id nobody
    // was given, and the removal of the sibling's route.
    for id in [3, 250, 1, 0, 999] {
        t.rogue.control(2, 1, &Control::AddRoute { id }).await;
    }
    t.rogue.control(2, 1, &Control::DelRoute { id: 3, lost: 3, reason: "forged".into() }).await;
    t.grandchild.control(4, 3, &Control::AddRoute { id: 2 }).await;
    t.grandchild.control(4, 3, &Control::AddRoute { id: 150 }).await;
    // Down from a parent, route messages are refused too.
    t.rogue.control(2, 3, &Control::AddRoute { id: 2 }).await;
    // Grants come only from ancestors: the rogue grants itself ids, then claims one.
    t.rogue.control(2, 1, &Control::Grant { ids: (5000, 6000), under: 2 }).await;
    t.grandchild.control(4, 3, &Control::Grant { ids: (7000, 8000), under: 4 }).await;
    t.rogue.control(2, 1, &Control::AddRoute { id: 5500 }).await;
    t.grandchild.control(4, 3, &Control::AddRoute { id: 7500 }).await;
    // An Init (the id grant of the handshake) after the handshake.
    let init = Header { dst: 1, src: 2, handle: handles::INIT, reply_to: 0, flags: 0 };
    t.rogue.send(init, b"\x90").await.unwrap();
    settle(&mut t).await;
    for node in [&mut t.zero, &mut t.one, &mut t.three] {
        no_control(node);
    }
    // Routes are as they were: the sibling answers, its block and the others are not the rogue's.
    assert_eq!(t.zero.router.call(3, &Touch).await.unwrap(), 3);
    assert_eq!(t.one.router.call(3, &Touch).await.unwrap(), 3);
    assert!(matches!(t.zero.router.call(999, &Touch).await, Err(CallError::NoRoute(999))));
    for id in [150, 5500, 7500] {
        assert!(matches!(t.zero.router.call(id, &Touch).await, Err(CallError::NoRoute(_))), "{id} is routed");
        // Regression: the controller's "no route" answer was dropped as not from the context called.
        match t.one.router.call_within(id, &Touch, Duration::from_secs(5)).await {
            Err(CallError::Remote(r)) => assert_eq!(r.kind, RemoteErrorKind::NoRoute, "{id}: {r}"),
            other => panic!("{id} is routed at the hop: {other:?}"),
        }
    }
    // A route the rogue may announce (an id from its own block) is taken, as for any child.
    t.rogue.control(2, 1, &Control::AddRoute { id: 120 }).await;
    settle(&mut t).await;
    t.zero.router.call_within(120, &Touch, QUIET).await.unwrap_err();
    let call = t.rogue.recv(Duration::from_secs(2)).await.expect("the call reached the rogue");
    assert_eq!((call.header.dst, call.header.handle), (120, handles::CALL));
    assert_eq!(t.one.router.allocate_ids(1), None, "no ids were granted by the forged Init");
}

#[tokio::test]
async fn a_flood_of_route_announcements_is_refused_and_stalls_nobody_else() {
    let mut t = settled_tree().await;
    let before = t.one.router.route_count();
    // Ids nobody granted: refused at the hop already...
    for id in 1_000_000..1_070_000 {
        t.rogue.control(2, 1, &Control::AddRoute { id }).await;
    }
    // ...and an id of the rogue's own block, announced again and again, is one route.
    for _ in 0..70_000 {
        t.rogue.control(2, 1, &Control::AddRoute { id: 130 }).await;
    }
    settle(&mut t).await;
    assert_eq!(t.one.router.route_count() - before, 1, "the hop holds one more route: 130");
    assert_eq!(t.zero.router.route_count(), 5, "the controller took only the ids it granted (1-4, 130)");
    assert_eq!(t.zero.router.call(3, &Touch).await.unwrap(), 3, "the hop's link upwards is fine");
}

#[tokio::test]
async fn a_forged_answer_is_ignored_and_the_real_one_arrives() {
    let mut t = settled_tree().await;
    let call = {
        let zero = t.zero.router.clone();
        tokio::spawn(async move { zero.call(3, &Slow(21)).await })
    };
    // The rogue sprays answers at every plausible reply handle of the controller's.
    for handle in handles::FIRST_DYNAMIC..handles::FIRST_DYNAMIC + 64 {
        let h = Header { dst: 0, src: 2, handle, reply_to: 0, flags: flags::REPLY };
        t.rogue.send(h, &rmp_serde::to_vec(&666u64).unwrap()).await.unwrap();
    }
    assert_eq!(call.await.unwrap().unwrap(), 42);
}

/// The test plays the parent of `victim`: a raw link above it.
fn raw_parent(victim: &Node) -> (Raw, LinkHandle) {
    Raw::attach(&victim.router, Role::Parent)
}

/// The test, as `victim`'s parent, calls its upload handler that sleeps before reading. Returns
/// the header of that upload's data frames.
async fn napping_upload(victim: &Node) -> (Raw, LinkHandle, Header) {
    let (mut parent, link) = raw_parent(victim);
    let h = Header { dst: 1, src: 0, handle: handles::CALL, reply_to: 7000, flags: flags::UPLOAD };
    let mut body = rmp_serde::to_vec(Nap::NAME).unwrap();
    body.extend(rmp_serde::to_vec(&Nap).unwrap());
    parent.send(h, &body).await.unwrap();
    let data = Header { dst: 1, src: 0, handle: handles::STREAM, reply_to: 7000, flags: flags::DATA };
    (parent, link, data)
}

#[tokio::test]
async fn a_peer_that_ignores_credit_is_cut_off_when_its_data_arrives() {
    let victim = node(cfg(1, vec![0]));
    let (mut parent, mut link, data) = napping_upload(&victim).await;
    // 64 windows of data, without waiting for credit.
    let chunk = vec![0u8; 256 << 10];
    let mut sent = 0u64;
    let mut refused = false;
    while sent < 64 * hypha_runtime::stream::WINDOW {
        if parent.send(data, &chunk).await.is_err() {
            refused = true;
            break;
        }
        sent += chunk.len() as u64;
    }
    let reason = tokio::time::timeout(Duration::from_secs(5), link.closed()).await.expect("the link closed");
    match &reason {
        CloseReason::Protocol(why) => assert!(why.contains("context 0 sent stream data past the credit"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(refused, "the victim stopped reading the violator");
    assert!(sent < 2 * hypha_runtime::stream::WINDOW + (1 << 20), "{sent} bytes went in before the cut");
}

#[tokio::test]
async fn a_flood_of_empty_chunks_is_a_violation_too() {
    let victim = node(cfg(1, vec![0]));
    let (mut parent, mut link, data) = napping_upload(&victim).await;
    let mut batch = BytesMut::new();
    for _ in 0..1024 {
        frame::encode(&data, b"", 1 << 20, &mut batch).unwrap();
    }
    for _ in 0..1024 {
        if parent.w.write_all(&batch).await.is_err() {
            break;
        }
    }
    let reason = tokio::time::timeout(Duration::from_secs(5), link.closed()).await.expect("the link closed");
    assert!(matches!(reason, CloseReason::Protocol(_)), "{reason:?}");
}

#[tokio::test]
async fn a_callee_that_ignores_credit_fails_the_download_naming_it() {
    let caller = node(cfg(0, vec![]));
    let (mut child, mut link) = Raw::attach(&caller.router, Role::Child(1));
    // The download's consumer takes one byte and then nothing.
    let (stuck, _never_read) = tokio::io::duplex(1);
    let download = {
        let router = caller.router.clone();
        tokio::spawn(async move { router.download(1, &Quit, stuck).await })
    };
    let call = child.recv(Duration::from_secs(2)).await.expect("the call");
    let data = Header { dst: 0, src: 1, handle: call.header.reply_to, reply_to: 0, flags: flags::DATA };
    let chunk = vec![0u8; 256 << 10];
    for _ in 0..64 {
        if child.send(data, &chunk).await.is_err() {
            break;
        }
    }
    let reason = tokio::time::timeout(Duration::from_secs(5), link.closed()).await.expect("the link closed");
    match &reason {
        CloseReason::Protocol(why) => assert!(why.contains("context 1 sent stream data past the credit"), "{why}"),
        other => panic!("{other:?}"),
    }
    download.abort();
}

#[tokio::test]
async fn dropping_an_upload_or_a_download_ends_the_handler_and_drain_completes() {
    let (mut parent, mut child) = (node(cfg(0, vec![])), node(cfg(1, vec![0])));
    let _links = join(&parent.router, &child.router);
    // An endless upload, given up by the caller after a while.
    let upload = {
        let router = parent.router.clone();
        tokio::spawn(async move { router.upload(1, &Drip, tokio::io::repeat(3)).await })
    };
    assert_eq!(child.ended.recv().await.unwrap(), "started");
    upload.abort();
    let end = tokio::time::timeout(Duration::from_secs(5), child.ended.recv()).await.expect("the handler ended");
    assert!(end.unwrap().contains("aborted the stream: the sender gave up"));
    // An endless download, given up likewise.
    let download = {
        let router = parent.router.clone();
        tokio::spawn(async move { router.download(1, &Quit, tokio::io::sink()).await })
    };
    assert_eq!(child.ended.recv().await.unwrap(), "started");
    download.abort();
    let end = tokio::time::timeout(Duration::from_secs(5), child.ended.recv()).await.expect("the handler ended");
    assert!(end.unwrap().contains("aborted the stream: the receiver went away"));
    assert!(child.router.drain(Duration::from_secs(5)).await, "nothing is left running");
    assert_eq!(child.router.open_streams(), 0);
    assert_eq!(parent.router.pending_calls(), 0);
    drop(parent.ended.try_recv());
}

#[tokio::test]
async fn a_child_that_stops_reading_does_not_stall_its_siblings_or_its_parent() {
    let quick = |id, anc| cfg(id, anc).with_link_timeout(Duration::from_secs(2));
    let (zero, one) = (node(quick(0, vec![])), node(quick(1, vec![0])));
    let (two, four) = (node(quick(2, vec![1, 0])), node(quick(4, vec![1, 0])));
    for id in [2, 3, 4] {
        zero.router.grant((id, id + 1), 1);
    }
    let _a = join(&zero.router, &one.router);
    let _b = join(&one.router, &two.router);
    let _c = join(&one.router, &four.router);
    zero.router.call(1, &hypha_runtime::Ping).await.unwrap(); // the routes have come up
                                                              // Child 3 reads nothing and says nothing but heartbeats... nor those: it is stopped.
    let (_stalled, mut stalled_link) = Raw::attach_with(&one.router, Role::Child(3), 64 << 10);
    assert_eq!(zero.router.call(2, &Touch).await.unwrap(), 2);
    // Fill everything between the hop and the stalled child, and more.
    let flood: Vec<_> = (0..20_000)
        .map(|_| {
            let zero = zero.router.clone();
            tokio::spawn(async move { zero.call(3, &Touch).await })
        })
        .collect();
    // Every call of the flood is on its way before the siblings are asked.
    while zero.router.pending_calls() < flood.len() {
        tokio::task::yield_now().await;
    }
    for (id, who) in [(2, 2), (4, 4), (1, 1)] {
        let answer = zero.router.call_within(id, &Touch, Duration::from_secs(1)).await;
        assert_eq!(answer.unwrap(), who, "context {id} answered within 1 s");
    }
    // The stalled child is closed alone, and the calls waiting on it fail naming it.
    let reason = tokio::time::timeout(Duration::from_secs(10), stalled_link.closed()).await.unwrap();
    assert!(matches!(reason, CloseReason::Stalled(..) | CloseReason::Silent(_)), "{reason:?}");
    for call in flood {
        let err = call.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("Child(3)"), "{err}");
    }
    assert_eq!(zero.router.call(4, &Touch).await.unwrap(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_lost_and_a_quiet_one_is_not() {
    let t = Duration::from_secs(8);
    let (zero, one) = (node(cfg(0, vec![]).with_link_timeout(t)), node(cfg(1, vec![0]).with_link_timeout(t)));
    let (mut down, _up) = join(&zero.router, &one.router);
    // Quiet for ten timeouts: heartbeats keep the link.
    tokio::time::sleep(10 * t).await;
    assert_eq!(zero.router.call(1, &Touch).await.unwrap(), 1);
    // A peer that says nothing at all.
    let (_mute, mut link) = Raw::attach(&zero.router, Role::Child(2));
    let started = tokio::time::Instant::now();
    let reason = link.closed().await;
    assert!(matches!(reason, CloseReason::Silent(_)), "{reason:?}");
    assert!(started.elapsed() <= t, "declared lost after {:?}", started.elapsed());
    assert!(started.elapsed() >= t / 2);
    assert!(tokio::time::timeout(Duration::from_millis(1), down.closed()).await.is_err(), "the quiet link stays");
}

//! A router's delivery of arbitrary frames from its neighbours.
//!
//! One router (the controller, id 0, or an agent, id 1 below the controller) with a plain, a
//! sleeping, an upload, a download and a relaying handler has two links over in-memory pipes: to
//! children 1 and 2 (controller), or to its parent 0 and child 2 (agent). The input is a sequence
//! of steps: structured frames written by one of the neighbours (well-formed calls, control
//! messages, stream frames, with arbitrary addressing and flags), raw bytes, calls the router
//! makes itself (so that answers and stream frames find pending calls), a neighbour hanging up,
//! and time passing. Time is virtual (paused), so every deadline is reached at once: a
//! handler that naps for a minute costs nothing.
//!
//! Checked: nothing panics; everything the router writes is a valid frame within its maximum;
//! pending calls and open streams never outnumber the calls that could have made them (its own,
//! and one per frame's worth of bytes its neighbours wrote, for handlers that call onwards); and once
//! every neighbour has hung up and the deadlines have passed, nothing is left: no pending call,
//! no open stream, no task.

#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::{BufMut, BytesMut};
use hypha_runtime::frame::{self, flags, handles, Header};
use hypha_runtime::proto::Control;
use hypha_runtime::{
    ByteReceiver, ByteSender, Cx, HandlerError, Handlers, LinkOptions, Ping, Request, Role, Router, RouterConfig,
};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf, WriteHalf};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

const LINK_TIMEOUT: Duration = Duration::from_secs(4);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Longer than any deadline above: once it has passed with every neighbour gone, all is over.
const SETTLE: Duration = Duration::from_secs(120);
/// The most a download handler sends, so one step cannot make the fuzzer slow.
const DOWN_MAX: u32 = 1 << 20;
/// Ids the controller grants below child 1.
const GRANTED: (u32, u32) = (1 << 24, (1 << 24) + 64);

#[derive(Debug, Serialize, Deserialize)]
struct Echo(Vec<u8>);
impl Request for Echo {
    type Response = Vec<u8>;
    const NAME: &'static str = "f.echo";
}

#[derive(Debug, Serialize, Deserialize)]
struct Nap(u16);
impl Request for Nap {
    type Response = u16;
    const NAME: &'static str = "f.nap";
}

#[derive(Debug, Serialize, Deserialize)]
struct Up;
impl Request for Up {
    type Response = u64;
    const NAME: &'static str = "f.up";
}

#[derive(Debug, Serialize, Deserialize)]
struct Down(u32);
impl Request for Down {
    type Response = u32;
    const NAME: &'static str = "f.down";
}

#[derive(Debug, Serialize, Deserialize)]
struct Relay(u32);
impl Request for Relay {
    type Response = ();
    const NAME: &'static str = "f.relay";
}

fn handlers() -> Handlers {
    static H: OnceLock<Handlers> = OnceLock::new();
    H.get_or_init(|| {
        Handlers::new()
            .on(|Echo(v), _: Cx| async move { Ok::<_, HandlerError>(v) })
            .on(|Nap(ms), _: Cx| async move {
                tokio::time::sleep(Duration::from_millis(ms.into())).await;
                Ok::<_, HandlerError>(ms)
            })
            .on_upload(|Up, _: Cx, mut rx: ByteReceiver| async move { Ok::<_, HandlerError>(rx.drain().await?) })
            .on_download(|Down(n), _: Cx, mut tx: ByteSender| async move {
                let n = n.min(DOWN_MAX);
                let mut left = n as usize;
                while left > 0 {
                    let piece = left.min(300 << 10);
                    tx.send(vec![0x5a; piece].into()).await?;
                    left -= piece;
                }
                Ok::<_, HandlerError>(n)
            })
            .on(|Relay(dst), cx: Cx| async move {
                cx.call_within(dst, &Ping, Duration::from_secs(1)).await?;
                Ok::<_, HandlerError>(())
            })
    })
    .clone()
}

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("a tokio runtime")
    })
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// An agent (id 1, parent 0) instead of the controller.
    agent: bool,
    /// Whether descendants may call too.
    open: bool,
    /// Maximum frame: 64 bytes and this many KiB.
    max_kib: u8,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// A neighbour writes a frame.
    Frame { second: bool, frame: Wire },
    /// A neighbour writes raw bytes.
    Raw { second: bool, bytes: Vec<u8> },
    /// The router calls another context itself.
    Call { dst: Id, kind: Outgoing },
    /// A neighbour closes its side.
    Hangup { second: bool },
    /// Time passes.
    Sleep { ms: u16 },
}

#[derive(Arbitrary, Debug, Clone)]
enum Outgoing {
    Plain(Vec<u8>),
    /// This many KiB.
    Upload(u8),
    Download(u32),
    Fire,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Id {
    Controller,
    One,
    Two,
    Three,
    Granted(u8),
    Any(u32),
}

impl Id {
    fn get(self) -> u32 {
        match self {
            Id::Controller => 0,
            Id::One => 1,
            Id::Two => 2,
            Id::Three => 3,
            Id::Granted(n) => GRANTED.0 + u32::from(n % 128),
            Id::Any(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Handle {
    Call,
    Control,
    Stream,
    Hello,
    Init,
    Heartbeat,
    /// One of the first reply handles the router allocates.
    Reply(u8),
    Any(u32),
}

impl Handle {
    fn get(&self) -> u32 {
        match self {
            Handle::Call => handles::CALL,
            Handle::Control => handles::CONTROL,
            Handle::Stream => handles::STREAM,
            Handle::Hello => handles::HELLO,
            Handle::Init => handles::INIT,
            Handle::Heartbeat => handles::HEARTBEAT,
            Handle::Reply(n) => handles::FIRST_DYNAMIC + u32::from(*n % 32),
            Handle::Any(n) => *n,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Wire {
    dst: Id,
    src: Id,
    handle: Handle,
    /// 0, a small reply handle, or any.
    reply_to: Option<Result<u8, u32>>,
    /// Masked to the known bits: unknown ones close the link (raw steps cover that).
    flags: u16,
    body: Body,
}

#[derive(Arbitrary, Debug)]
enum Body {
    Empty,
    Call(Name, Req),
    Control(Ctl),
    Credit(u64),
    Abort(String),
    Data(Vec<u8>),
    /// Data of this many KiB, to reach windows and limits with little input.
    Zeros(u8),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Name {
    Ping,
    Echo,
    Nap,
    Up,
    Down,
    Relay,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Req {
    Unit,
    Echo(Vec<u8>),
    Nap(u16),
    Down(u32),
    Relay(Id),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Ctl {
    Shutdown(u64),
    AddRoute(Id),
    DelRoute(Id, Id, String),
}

impl Wire {
    fn encode(&self, max: usize, out: &mut BytesMut) {
        let reply_to = match self.reply_to {
            None => 0,
            Some(Ok(n)) => handles::FIRST_DYNAMIC + u32::from(n % 32),
            Some(Err(n)) => n,
        };
        let header = Header {
            dst: self.dst.get(),
            src: self.src.get(),
            handle: self.handle.get(),
            reply_to,
            flags: u32::from(self.flags) & flags::KNOWN,
        };
        let body = self.body.encode();
        // Too large for the router: sent anyway, as a hostile peer would (it closes the link).
        if frame::encode(&header, &body, max, out).is_err() {
            let mut tmp = BytesMut::new();
            frame::encode(&header, &body, usize::MAX, &mut tmp).expect("encodes without a limit");
            out.extend_from_slice(&tmp);
        }
    }
}

impl Body {
    fn encode(&self) -> Vec<u8> {
        match self {
            Body::Empty => Vec::new(),
            Body::Call(name, req) => {
                let name = match name {
                    Name::Ping => Ping::NAME,
                    Name::Echo => Echo::NAME,
                    Name::Nap => Nap::NAME,
                    Name::Up => Up::NAME,
                    Name::Down => Down::NAME,
                    Name::Relay => Relay::NAME,
                    Name::Other(s) => s.as_str(),
                };
                let mut out = call_name(name);
                out.extend_from_slice(&match req {
                    Req::Unit => msgpack(&Ping),
                    Req::Echo(v) => msgpack(&Echo(v.clone())),
                    Req::Nap(ms) => msgpack(&Nap(*ms)),
                    Req::Down(n) => msgpack(&Down(*n)),
                    Req::Relay(id) => msgpack(&Relay(id.get())),
                    Req::Raw(v) => v.clone(),
                });
                out
            }
            Body::Control(c) => msgpack(&match c {
                Ctl::Shutdown(ms) => Control::Shutdown { grace_ms: *ms },
                Ctl::AddRoute(id) => Control::AddRoute { id: id.get() },
                Ctl::DelRoute(id, lost, reason) => {
                    Control::DelRoute { id: id.get(), lost: lost.get(), reason: reason.clone() }
                }
            }),
            Body::Credit(n) => msgpack(n),
            Body::Abort(why) => msgpack(why),
            Body::Data(v) | Body::Raw(v) => v.clone(),
            Body::Zeros(kib) => vec![0; usize::from(*kib) << 10],
        }
    }
}

/// A call body starts with the handler's name as a msgpack string (fixstr, or str8 when longer).
fn call_name(name: &str) -> Vec<u8> {
    let name = &name.as_bytes()[..name.len().min(255)];
    let mut out = Vec::with_capacity(2 + name.len());
    if name.len() < 32 {
        out.put_u8(0xa0 | name.len() as u8);
    } else {
        out.put_u8(0xd9);
        out.put_u8(name.len() as u8);
    }
    out.extend_from_slice(name);
    out
}

fn msgpack<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).expect("plain values encode")
}

/// An upload source of `n` bytes that never waits.
struct Zeros(usize);

impl AsyncRead for Zeros {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let n = self.0.min(buf.remaining());
        buf.initialize_unfilled_to(n).fill(0);
        buf.advance(n);
        self.0 -= n;
        Poll::Ready(Ok(()))
    }
}

/// One neighbour: the end of the pipe the router does not hold.
struct Neighbour {
    writer: Option<WriteHalf<tokio::io::DuplexStream>>,
    /// Reads and checks everything the router writes to this neighbour.
    reader: JoinHandle<()>,
}

fn neighbour(router: &Router, role: Role, max: usize) -> Neighbour {
    let (near, far) = tokio::io::duplex(256 << 10);
    let (r, w) = tokio::io::split(near);
    let opts = LinkOptions { role, name: format!("{role:?}"), span: tracing::Span::none(), initial: BytesMut::new() };
    router.attach(r, w, opts);
    let (mut far_r, far_w) = tokio::io::split(far);
    let reader = tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(64 << 10);
        loop {
            while let Some(f) = frame::decode(&mut buf, max).expect("the router writes only valid frames") {
                assert!(f.header.flags & !flags::KNOWN == 0);
            }
            buf.reserve(16 << 10);
            match far_r.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    });
    Neighbour { writer: Some(far_w), reader }
}

fuzz_target!(|input: Input| {
    runtime().block_on(run(input));
});

async fn run(input: Input) {
    let max = 64 + (usize::from(input.max_kib) << 10);
    let (id, ancestors) = if input.agent { (1, vec![0]) } else { (0, vec![]) };
    let cfg = RouterConfig::new(id, ancestors, "fuzz")
        .with_max_frame(max)
        .with_link_timeout(LINK_TIMEOUT)
        .with_call_timeout(CALL_TIMEOUT);
    let router = Router::new(cfg, handlers());
    router.accept_calls_from_descendants(input.open);
    let (control_tx, mut control) = tokio::sync::mpsc::unbounded_channel();
    router.set_control(control_tx);
    let first = if input.agent {
        Role::Parent
    } else {
        router.grant(GRANTED, 1);
        Role::Child(1)
    };
    let mut links = [neighbour(&router, first, max), neighbour(&router, Role::Child(2), max)];
    let mut calls: Vec<JoinHandle<()>> = Vec::new();
    // Bytes the neighbours wrote: each call that reached the router took at least a header.
    let mut written = 0;

    for step in &input.steps {
        match step {
            Step::Frame { second, frame } => {
                let mut out = BytesMut::new();
                frame.encode(max, &mut out);
                written += out.len();
                write(&mut links[usize::from(*second)], &out).await;
            }
            Step::Raw { second, bytes } => {
                written += bytes.len();
                write(&mut links[usize::from(*second)], bytes).await
            }
            Step::Call { dst, kind } => calls.push(call_out(&router, dst.get(), kind)),
            Step::Hangup { second } => {
                if let Some(mut w) = links[usize::from(*second)].writer.take() {
                    let _ = w.shutdown().await;
                }
            }
            Step::Sleep { ms } => tokio::time::sleep(Duration::from_millis((*ms).into())).await,
        }
        // Let everything the step set off run until nothing is left to do but wait.
        tokio::time::sleep(Duration::from_millis(1)).await;
        while control.try_recv().is_ok() {}
        let delivered = written / (frame::LEN_PREFIX + frame::HEADER_LEN);
        assert!(router.pending_calls() <= calls.len() + delivered, "more pending calls than calls made");
        assert!(router.open_streams() <= delivered, "more open streams than calls delivered");
    }

    for link in &mut links {
        if let Some(mut w) = link.writer.take() {
            let _ = w.shutdown().await;
        }
    }
    tokio::time::sleep(SETTLE).await;
    assert_eq!(router.pending_calls(), 0, "calls still pending after every link closed");
    assert_eq!(router.open_streams(), 0, "streams still open after every link closed");
    for call in calls {
        assert!(call.is_finished(), "a call outlived every link and its deadline");
    }
    for link in links {
        assert!(link.reader.is_finished(), "a link's writer outlived the link");
    }
    drop(router);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let alive = tokio::runtime::Handle::current().metrics().num_alive_tasks();
    assert_eq!(alive, 0, "tasks left behind");
}

/// Write `bytes` as a neighbour; a link the router stopped reading gives up at its deadline.
async fn write(link: &mut Neighbour, bytes: &[u8]) {
    if let Some(w) = link.writer.as_mut() {
        if !matches!(tokio::time::timeout(SETTLE, w.write_all(bytes)).await, Ok(Ok(()))) {
            link.writer = None;
        }
    }
}

fn call_out(router: &Router, dst: u32, kind: &Outgoing) -> JoinHandle<()> {
    let (router, kind) = (router.clone(), kind.clone());
    tokio::spawn(async move {
        let _ = match kind {
            Outgoing::Plain(v) => router.call(dst, &Echo(v)).await.map(drop),
            Outgoing::Upload(kib) => router.upload(dst, &Up, Zeros(usize::from(kib) << 10)).await.map(drop),
            Outgoing::Download(n) => router.download(dst, &Down(n), tokio::io::sink()).await.map(drop),
            Outgoing::Fire => router.send(dst, &Echo(Vec::new())).await,
        };
    })
}

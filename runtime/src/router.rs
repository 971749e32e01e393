//! The router: links to neighbouring contexts, the route table, reply handles and call dispatch.
//!
//! Every context (the controller and each agent) has one [`Router`]. A *link* is a byte stream to
//! a neighbour: the parent, or a child. Each link has a reader task, which decodes frames and hands
//! them to [`Router`] for delivery, and a writer task, which batches queued frames into few writes.
//! Frames for this context are dispatched by handle; frames for other contexts are forwarded along
//! the route table (`dst` → link), and frames for ids not in the table go to the parent.
//!
//! When a link closes, every call waiting on an answer through it fails with
//! [`CallError::Disconnected`] naming the context, and its routes are removed.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::{debug, warn, Instrument, Span};

use crate::call::{self, CallError, Cx, Failure, RemoteError, RemoteErrorKind, Request, Shape, StreamArg};
use crate::frame::{self, flags, handles, Frame, FrameError, Header};
use crate::proto::Control;
use crate::stream::{ByteReceiver, ByteSender, StreamItem, CHUNK, WINDOW};
use crate::{ContextId, Handlers};

/// Identifies one link of a router.
pub type LinkId = u64;

/// Frames queued for one link's writer before senders wait.
const LINK_QUEUE: usize = 256;
/// Bodies at least this large are written straight from their buffer instead of copied into the
/// writer's batch.
const WRITE_DIRECT: usize = 16 << 10;
/// The reader reads into at least this much free room...
const READ_MIN: usize = 4 << 10;
/// ...and makes room for a whole stream chunk when it has less: one read per chunk of bulk data,
/// and a fresh buffer only every few thousand small frames.
const READ_BATCH: usize = CHUNK + frame::HEADER_LEN + frame::LEN_PREFIX;
/// The writer stops batching more frames once this much is buffered.
const WRITE_BATCH: usize = 64 << 10;

/// Who this router is.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// This context's id (0 for the controller).
    pub id: ContextId,
    /// Ancestors, nearest first. Calls are accepted only on their authority.
    pub ancestors: Vec<ContextId>,
    /// Where this context runs, for errors: `user@host pid N`.
    pub origin: String,
    /// Largest frame accepted or sent on any link.
    pub max_frame: usize,
}

/// Which neighbour a link leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The parent: frames for unknown ids go here.
    Parent,
    /// A child with this context id.
    Child(ContextId),
}

/// How to attach a byte stream as a link.
#[derive(Debug)]
pub struct LinkOptions {
    /// Parent or child.
    pub role: Role,
    /// Name of the context at the far end, for errors (`local pid 42 on web1`).
    pub name: String,
    /// Span the link's tasks log in.
    pub span: Span,
    /// Bytes already read from the stream (read past the handshake).
    pub initial: BytesMut,
}

/// Why a link closed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The far end closed its side.
    Eof,
    /// Reading or writing failed.
    Io(String),
    /// The far end sent bytes that are not a frame.
    Garbled(FrameError),
    /// This side closed the link.
    Local(String),
    /// A context on the way lost its route to the context (a hop died, or the context did).
    Lost(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Eof => f.write_str("the stream closed (end of file)"),
            CloseReason::Io(e) => write!(f, "I/O error: {e}"),
            CloseReason::Garbled(e) => write!(f, "garbled stream: {e}"),
            CloseReason::Local(why) => write!(f, "closed here: {why}"),
            CloseReason::Lost(why) => f.write_str(why),
        }
    }
}

/// Watches one link: resolves when it closes.
#[derive(Debug)]
pub struct LinkHandle {
    id: LinkId,
    closed: watch::Receiver<Option<CloseReason>>,
}

impl LinkHandle {
    /// The link's id in its router.
    pub fn id(&self) -> LinkId {
        self.id
    }

    /// Wait until the link closes, and say why.
    pub async fn closed(&mut self) -> CloseReason {
        match self.closed.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(CloseReason::Eof),
            Err(_) => CloseReason::Local("router dropped".into()),
        }
    }
}

/// A request encoded once, to send to many contexts (see [`Router::call_encoded`]).
pub struct EncodedRequest<R> {
    body: Bytes,
    _request: std::marker::PhantomData<fn() -> R>,
}

impl<R> Clone for EncodedRequest<R> {
    fn clone(&self) -> Self {
        EncodedRequest { body: self.body.clone(), _request: std::marker::PhantomData }
    }
}

impl<R> fmt::Debug for EncodedRequest<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncodedRequest({} bytes)", self.body.len())
    }
}

impl<R: Request> EncodedRequest<R> {
    /// Encode `req`.
    pub fn new(req: &R) -> Result<Self, CallError> {
        Ok(EncodedRequest { body: call::encode_call(req)?, _request: std::marker::PhantomData })
    }
}

struct Link {
    tx: mpsc::Sender<Frame>,
    /// The child at the far end, if this link leads to one.
    peer: Option<ContextId>,
    name: Arc<str>,
    closed: watch::Sender<Option<CloseReason>>,
    reader: Option<AbortHandle>,
    writer: Option<JoinHandle<()>>,
}

struct Pending {
    via: LinkId,
    dst: ContextId,
    tx: PendingTx,
}

enum PendingTx {
    Once(oneshot::Sender<Result<Frame, CallError>>),
    Stream(mpsc::UnboundedSender<StreamItem>),
}

/// One context's router. Cheap to clone; all clones are the same router.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("id", &self.inner.cfg.id)
            .field("links", &self.inner.links.len())
            .field("pending", &self.inner.pending.len())
            .finish()
    }
}

struct Inner {
    cfg: RouterConfig,
    handlers: Handlers,
    links: DashMap<LinkId, Link>,
    routes: DashMap<ContextId, LinkId>,
    /// Link to the parent, 0 when there is none (the controller).
    parent: AtomicU64,
    pending: DashMap<u32, Pending>,
    /// Stream frames addressed to [`handles::STREAM`], by (peer, peer's reply handle).
    inbound: DashMap<(ContextId, u32), mpsc::UnboundedSender<StreamItem>>,
    /// Who waits to hear that a context became unreachable.
    watchers: DashMap<ContextId, watch::Sender<Option<String>>>,
    next_handle: AtomicU32,
    next_link: AtomicU64,
    accepting: AtomicBool,
    /// Whether descendants may call too (see `accept_calls_from_descendants`).
    open_to_descendants: AtomicBool,
    /// Handlers descendants may call even so (see `open_handler_to_descendants`).
    open_handlers: std::sync::RwLock<Vec<String>>,
    in_flight: AtomicUsize,
    idle: Notify,
    control: Mutex<Option<mpsc::UnboundedSender<Control>>>,
    /// Ids this context may give to children it starts by itself.
    ids: Mutex<crate::proto::IdBlock>,
}

impl Router {
    /// A router with no links yet.
    pub fn new(cfg: RouterConfig, handlers: Handlers) -> Self {
        Router {
            inner: Arc::new(Inner {
                cfg,
                handlers,
                links: DashMap::new(),
                routes: DashMap::new(),
                parent: AtomicU64::new(0),
                pending: DashMap::new(),
                inbound: DashMap::new(),
                watchers: DashMap::new(),
                next_handle: AtomicU32::new(handles::FIRST_DYNAMIC),
                next_link: AtomicU64::new(1),
                accepting: AtomicBool::new(true),
                open_to_descendants: AtomicBool::new(false),
                open_handlers: Default::default(),
                in_flight: AtomicUsize::new(0),
                idle: Notify::new(),
                control: Mutex::new(None),
                ids: Mutex::new((0, 0)),
            }),
        }
    }

    /// This context's id.
    pub fn id(&self) -> ContextId {
        self.inner.cfg.id
    }

    /// This router's configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.inner.cfg
    }

    /// Number of calls waiting for an answer (for tests and metrics).
    pub fn pending_calls(&self) -> usize {
        self.inner.pending.len()
    }

    /// Start pumping `reader`/`writer` as a link. Must be called within a tokio runtime; the link's
    /// tasks run there.
    pub fn attach<R, W>(&self, reader: R, writer: W, opts: LinkOptions) -> LinkHandle
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let id = self.inner.next_link.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let (closed_tx, closed_rx) = watch::channel(None);
        let max = self.inner.cfg.max_frame;

        let router = self.clone();
        let writer = tokio::spawn(
            async move {
                if let Err(e) = write_loop(rx, writer, max).await {
                    debug!(error = %e, "link writer stopped");
                    router.close(id, CloseReason::Io(e.to_string()));
                }
            }
            .instrument(opts.span.clone()),
        );
        let peer = match opts.role {
            Role::Child(peer) => Some(peer),
            Role::Parent => None,
        };
        // The link and its route exist before the reader starts: a frame read at once must pass
        // the reverse-path check (regression: the first call into an agent was sometimes dropped).
        self.inner.links.insert(
            id,
            Link { tx, peer, name: opts.name.into(), closed: closed_tx, reader: None, writer: Some(writer) },
        );
        match opts.role {
            Role::Parent => self.inner.parent.store(id, Ordering::Release),
            Role::Child(peer) => {
                self.inner.routes.insert(peer, id);
            }
        }
        let router = self.clone();
        let reader = tokio::spawn(
            async move {
                let reason = router.read_loop(id, reader, opts.initial).await;
                router.close(id, reason);
            }
            .instrument(opts.span),
        );
        match self.inner.links.get_mut(&id) {
            Some(mut link) => link.reader = Some(reader.abort_handle()),
            None => reader.abort(), // closed already
        }
        LinkHandle { id, closed: closed_rx }
    }

    /// Route frames for `dst` (a context behind a child) over `via`. Frames for ids without a route
    /// go to the parent.
    pub fn add_route(&self, dst: ContextId, via: LinkId) {
        self.inner.routes.insert(dst, via);
    }

    /// Close a link: its routes go, calls waiting through it fail, streams through it end. Returns
    /// the writer task, which finishes once the frames already queued are written.
    pub fn close(&self, link: LinkId, reason: CloseReason) -> Option<JoinHandle<()>> {
        let (_, mut entry) = self.inner.links.remove(&link)?;
        debug!(link, %reason, "link closed");
        if let Some(reader) = &entry.reader {
            reader.abort();
        }
        let _ = self.inner.parent.compare_exchange(link, 0, Ordering::AcqRel, Ordering::Acquire);
        let gone: Vec<ContextId> = self.inner.routes.iter().filter(|r| *r.value() == link).map(|r| *r.key()).collect();
        self.inner.routes.retain(|_, via| *via != link);

        let failed: Vec<u32> = self.inner.pending.iter().filter(|p| p.via == link).map(|p| *p.key()).collect();
        for handle in failed {
            if let Some((_, p)) = self.inner.pending.remove(&handle) {
                let err = CallError::Disconnected {
                    context: p.dst,
                    name: entry.name.to_string(),
                    reason: reason.to_string(),
                };
                match p.tx {
                    PendingTx::Once(tx) => drop(tx.send(Err(err))),
                    PendingTx::Stream(tx) => drop(tx.send(Err(err))),
                }
            }
        }
        // Streams from contexts we can no longer reach end: dropping their sender ends the receiver.
        self.inner.inbound.retain(|(src, _), _| self.link_for(*src).is_some());
        let why = format!("{} was lost: {reason}", entry.name);
        for id in &gone {
            if let Some((_, watch)) = self.inner.watchers.remove(id) {
                let _ = watch.send(Some(why.clone()));
            }
        }
        // Tell the ancestors which contexts went with this link, naming the hop that was lost.
        if let (Some(lost), Ok(rt)) = (entry.peer, tokio::runtime::Handle::try_current()) {
            let router = self.clone();
            rt.spawn(async move {
                for id in gone {
                    router.announce(Control::DelRoute { id, lost, reason: why.clone() }).await;
                }
            });
        }
        let _ = entry.closed.send(Some(reason));
        entry.writer.take()
    }

    /// The ids this context may give to the children it starts by itself (from its Init).
    pub fn grant_ids(&self, block: crate::proto::IdBlock) {
        *self.inner.ids.lock().unwrap_or_else(|e| e.into_inner()) = block;
    }

    /// Take `n` ids from this context's block, if it has that many left.
    pub fn allocate_ids(&self, n: ContextId) -> Option<crate::proto::IdBlock> {
        let mut ids = self.inner.ids.lock().unwrap_or_else(|e| e.into_inner());
        let (start, end) = *ids;
        if end.saturating_sub(start) < n {
            return None;
        }
        ids.0 = start + n;
        Some((start, start + n))
    }

    /// Deliver [`Control`] messages from ancestors to `tx`.
    pub fn set_control(&self, tx: mpsc::UnboundedSender<Control>) {
        *self.inner.control.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }

    /// Refuse new calls and wait up to `grace` for calls in flight to finish. True if they did.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.inner.accepting.store(false, Ordering::Release);
        let wait = async {
            loop {
                let idle = self.inner.idle.notified();
                if self.inner.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(grace, wait).await.is_ok()
    }

    /// Call `req` in context `dst` and wait for its answer.
    pub async fn call<R: Request>(&self, dst: ContextId, req: &R) -> Result<R::Response, CallError> {
        self.call_encoded(dst, &EncodedRequest::new(req)?).await
    }

    /// Call an already encoded request (encode once, call many contexts).
    pub async fn call_encoded<R: Request>(
        &self,
        dst: ContextId,
        req: &EncodedRequest<R>,
    ) -> Result<R::Response, CallError> {
        let (handle, rx, _guard) = self.expect_reply(dst, PendingTx::Once, oneshot::channel)?;
        self.send_call(dst, req.body.clone(), handle, 0).await?;
        let frame = rx.await.map_err(|_| self.lost(dst))??;
        decode_reply::<R>(&frame)
    }

    /// Send `req` to context `dst` without waiting for, or getting, an answer. A failure of the
    /// handler is logged in `dst`.
    pub async fn send<R: Request>(&self, dst: ContextId, req: &R) -> Result<(), CallError> {
        let body = call::encode_call(req)?;
        self.send_call(dst, body, 0, flags::NO_REPLY).await
    }

    /// Call `req` in `dst`, streaming everything `reader` yields to the handler, which was
    /// registered with [`Handlers::on_upload`]. Memory use is bounded by the flow-control window,
    /// whatever the size of the data.
    pub async fn upload<R, S>(&self, dst: ContextId, req: &R, mut reader: S) -> Result<R::Response, CallError>
    where
        R: Request,
        S: AsyncRead + Unpin,
    {
        let (data, rx, _guard) = self.stream_call(dst, req, flags::UPLOAD, flags::DATA).await?;
        let mut tx = ByteSender::new(self.clone(), data, rx, WINDOW);
        let stream_err = |reason: String| CallError::Stream { handler: R::NAME, reason };
        loop {
            let mut chunk = BytesMut::with_capacity(CHUNK);
            let n = reader.read_buf(&mut chunk).await.map_err(|e| stream_err(format!("reading the upload: {e}")))?;
            if n == 0 {
                tx.finish().await.map_err(|e| stream_err(e.to_string()))?;
                break;
            }
            if tx.send(chunk.freeze()).await.is_err() {
                // The handler answered (or the link died) before taking everything; its answer
                // (or the disconnect) says why.
                break;
            }
        }
        let frame = tx.into_reply().await?;
        decode_reply::<R>(&frame)
    }

    /// Call `req` in `dst` and write the bytes its handler (registered with
    /// [`Handlers::on_download`]) sends to `writer`, with bounded memory.
    pub async fn download<R, W>(&self, dst: ContextId, req: &R, mut writer: W) -> Result<R::Response, CallError>
    where
        R: Request,
        W: AsyncWrite + Unpin,
    {
        let (credit, rx, _guard) = self.stream_call(dst, req, flags::DOWNLOAD, flags::CREDIT).await?;
        let mut rx = ByteReceiver::new(self.clone(), credit, rx);
        let stream_err = |reason: String| CallError::Stream { handler: R::NAME, reason };
        while let Some(chunk) = rx.recv().await.map_err(|e| e.into_call_error(R::NAME))? {
            writer.write_all(&chunk).await.map_err(|e| stream_err(format!("writing the download: {e}")))?;
        }
        writer.flush().await.map_err(|e| stream_err(format!("writing the download: {e}")))?;
        let frame = rx.take_reply().ok_or_else(|| stream_err("stream ended without an answer".into()))?;
        decode_reply::<R>(&frame)
    }

    /// Send a control message to context `dst` on this context's authority.
    pub async fn send_control(&self, dst: ContextId, msg: &Control) -> Result<(), CallError> {
        let body =
            call::encode_value(msg).map_err(|e| CallError::Encode { handler: "control", reason: e.to_string() })?;
        let id = self.id();
        let header = Header { dst, src: id, auth: id, handle: handles::CONTROL, reply_to: 0, flags: 0 };
        self.send_frame(Frame { header, body }).await
    }

    /// Send a call that comes with a stream (`kind`: UPLOAD or DOWNLOAD). Returns the header this
    /// side's stream frames (`frames`: DATA or CREDIT) carry to the callee, and where its answers
    /// arrive.
    async fn stream_call<R: Request>(
        &self,
        dst: ContextId,
        req: &R,
        kind: u32,
        frames: u32,
    ) -> Result<(Header, mpsc::UnboundedReceiver<StreamItem>, PendingGuard<'_>), CallError> {
        let body = call::encode_call(req)?;
        let (handle, rx, guard) = self.expect_reply(dst, PendingTx::Stream, mpsc::unbounded_channel)?;
        self.send_call(dst, body, handle, kind).await?;
        let id = self.id();
        let header = Header { dst, src: id, auth: id, handle: handles::STREAM, reply_to: handle, flags: frames };
        Ok((header, rx, guard))
    }

    /// Queue `frame` on the link towards its destination.
    pub async fn send_frame(&self, frame: Frame) -> Result<(), CallError> {
        let dst = frame.header.dst;
        if frame.body.len() + frame::HEADER_LEN > self.inner.cfg.max_frame {
            return Err(CallError::Encode {
                handler: "frame",
                reason: FrameError::TooLarge {
                    len: frame.body.len() + frame::HEADER_LEN,
                    max: self.inner.cfg.max_frame,
                }
                .to_string(),
            });
        }
        let link = self.link_for(dst).ok_or(CallError::NoRoute(dst))?;
        let tx = self.inner.links.get(&link).map(|l| l.tx.clone()).ok_or_else(|| self.lost(dst))?;
        tx.send(frame).await.map_err(|_| self.lost(dst))
    }

    /// Link that frames for `dst` leave on: its route, or else the parent.
    fn link_for(&self, dst: ContextId) -> Option<LinkId> {
        if let Some(via) = self.inner.routes.get(&dst) {
            return Some(*via);
        }
        match self.inner.parent.load(Ordering::Acquire) {
            0 => None,
            parent => Some(parent),
        }
    }

    fn lost(&self, dst: ContextId) -> CallError {
        CallError::Disconnected { context: dst, name: format!("context {dst}"), reason: "the link closed".into() }
    }

    fn alloc_handle(&self) -> u32 {
        loop {
            let h = self.inner.next_handle.fetch_add(1, Ordering::Relaxed);
            if h >= handles::FIRST_DYNAMIC && !self.inner.pending.contains_key(&h) {
                return h;
            }
        }
    }

    /// Register a reply handle for a call to `dst`; the guard removes it if the call is dropped.
    fn expect_reply<T, Rx>(
        &self,
        dst: ContextId,
        wrap: impl FnOnce(T) -> PendingTx,
        channel: impl FnOnce() -> (T, Rx),
    ) -> Result<(u32, Rx, PendingGuard<'_>), CallError> {
        let via = self.link_for(dst).ok_or(CallError::NoRoute(dst))?;
        let handle = self.alloc_handle();
        let (tx, rx) = channel();
        self.inner.pending.insert(handle, Pending { via, dst, tx: wrap(tx) });
        let guard = PendingGuard { router: self, handle };
        // A link that closed before the insert did not see this entry: fail now instead of waiting.
        if !self.inner.links.contains_key(&via) {
            return Err(self.lost(dst));
        }
        Ok((handle, rx, guard))
    }

    async fn send_call(&self, dst: ContextId, body: Bytes, reply_to: u32, flags: u32) -> Result<(), CallError> {
        let id = self.id();
        let header = Header { dst, src: id, auth: id, handle: handles::CALL, reply_to, flags };
        self.send_frame(Frame { header, body }).await
    }

    async fn read_loop<R: AsyncRead + Unpin>(&self, link: LinkId, mut reader: R, mut buf: BytesMut) -> CloseReason {
        let max = self.inner.cfg.max_frame;
        loop {
            loop {
                match frame::decode(&mut buf, max) {
                    Ok(Some(frame)) => self.deliver(frame, link).await,
                    Ok(None) => break,
                    Err(e) => return CloseReason::Garbled(e),
                }
            }
            // Room for a batch of small frames; `decode` reserves exactly what a large one needs.
            if buf.capacity() - buf.len() < READ_MIN {
                buf.reserve(READ_BATCH);
            }
            match reader.read_buf(&mut buf).await {
                Ok(0) => return CloseReason::Eof,
                Ok(_) => {}
                Err(e) => return CloseReason::Io(e.to_string()),
            }
        }
    }

    async fn deliver(&self, frame: Frame, from: LinkId) {
        let h = frame.header;
        // Reverse-path check: a frame must arrive on the link its source is routed through.
        if self.link_for(h.src) != Some(from) {
            warn!(
                src = h.src,
                dst = h.dst,
                link = from,
                "dropped a frame whose source is not behind the link it came on"
            );
            return;
        }
        if h.dst != self.id() {
            return self.forward(frame).await;
        }
        match h.handle {
            handles::CALL => self.dispatch(frame).await,
            handles::CONTROL => self.control(frame, from).await,
            handles::STREAM => {
                if let Some(tx) = self.inner.inbound.get(&(h.src, h.reply_to)) {
                    let _ = tx.send(Ok(frame));
                }
            }
            handle if handle >= handles::FIRST_DYNAMIC => {
                if h.flags & flags::REPLY != 0 {
                    if let Some((_, p)) = self.inner.pending.remove(&handle) {
                        match p.tx {
                            PendingTx::Once(tx) => drop(tx.send(Ok(frame))),
                            PendingTx::Stream(tx) => drop(tx.send(Ok(frame))),
                        }
                    }
                } else if let Some(p) = self.inner.pending.get(&handle) {
                    if let PendingTx::Stream(tx) = &p.tx {
                        let _ = tx.send(Ok(frame));
                    }
                }
            }
            other => debug!(handle = other, "dropped a frame for an unknown handle"),
        }
    }

    async fn forward(&self, frame: Frame) {
        let h = frame.header;
        if let Err(e) = self.send_frame(frame).await {
            debug!(dst = h.dst, error = %e, "could not forward a frame");
            if h.handle == handles::CALL && h.flags & flags::NO_REPLY == 0 {
                let f = Failure::new(RemoteErrorKind::NoRoute, e.to_string());
                self.reply(h, "(forwarded call)", Err(f)).await;
            }
        }
    }

    fn is_ancestor(&self, id: ContextId) -> bool {
        self.inner.cfg.ancestors.contains(&id)
    }

    /// Whether context `auth` may call handler `name` here: an ancestor, or a descendant after this
    /// context opted in, for every handler or for this one.
    fn may_call(&self, auth: ContextId, name: &str) -> bool {
        self.is_ancestor(auth)
            || self.is_descendant(auth)
                && (self.inner.open_to_descendants.load(Ordering::Acquire)
                    || self.inner.open_handlers.read().unwrap_or_else(|e| e.into_inner()).iter().any(|n| n == name))
    }

    /// A context routed below this one (its route came up a child link).
    fn is_descendant(&self, id: ContextId) -> bool {
        self.inner.routes.contains_key(&id)
    }

    /// Also take calls from descendants (by default only ancestors may call): for a context that
    /// serves its children, as the controller may. Siblings and unrelated contexts stay refused.
    pub fn accept_calls_from_descendants(&self, open: bool) {
        self.inner.open_to_descendants.store(open, Ordering::Release);
    }

    /// Let descendants call handler `name` (only that one; by default only ancestors may call):
    /// for a handler that serves the contexts below this one and checks for itself what each
    /// caller may do, as the controller's ssh-agent relay does.
    pub fn open_handler_to_descendants(&self, name: &str) {
        let mut open = self.inner.open_handlers.write().unwrap_or_else(|e| e.into_inner());
        if !open.iter().any(|n| n == name) {
            open.push(name.to_owned());
        }
    }

    async fn control(&self, frame: Frame, from: LinkId) {
        let msg = match call::decode_value::<Control>(&frame.body) {
            Ok(msg) => msg,
            Err(e) => return warn!(error = %e, "dropped an undecodable control message"),
        };
        let from_parent = self.inner.parent.load(Ordering::Acquire) == from;
        match msg {
            // Routes are announced by descendants, up the tree, and apply to the link they came on.
            Control::AddRoute { id } if !from_parent => {
                if let Some(via) = self.inner.routes.get(&id).map(|v| *v) {
                    if via != from {
                        return warn!(id, "refused a route for a context already reachable another way");
                    }
                }
                if id == self.id() || self.is_ancestor(id) {
                    return warn!(id, "refused a route for this context or an ancestor");
                }
                self.inner.routes.insert(id, from);
                self.announce(Control::AddRoute { id }).await;
            }
            Control::DelRoute { id, lost, reason } if !from_parent => {
                if self.inner.routes.remove_if(&id, |_, via| *via == from).is_some() {
                    self.route_lost(id, lost, &reason);
                    self.announce(Control::DelRoute { id, lost, reason }).await;
                }
            }
            Control::AddRoute { .. } | Control::DelRoute { .. } => {
                warn!("dropped a route message that came down from the parent");
            }
            other => {
                if !self.is_ancestor(frame.header.auth) {
                    return warn!(
                        auth = frame.header.auth,
                        "refused a control message from a context that is not an ancestor"
                    );
                }
                let guard = self.inner.control.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(tx) = guard.as_ref() {
                    let _ = tx.send(other);
                }
            }
        }
    }

    /// Tell the parent, if any, about a route change below this context. Awaited, so it leaves
    /// before any frame this context sends or forwards afterwards.
    pub async fn announce(&self, msg: Control) {
        if let Some(&parent) = self.inner.cfg.ancestors.first() {
            if let Err(e) = self.send_control(parent, &msg).await {
                debug!(error = %e, "could not tell the parent about a route change");
            }
        }
    }

    /// Context `id` is unreachable: fail the calls waiting on it and tell who watches it.
    fn route_lost(&self, id: ContextId, lost: ContextId, reason: &str) {
        let failed: Vec<u32> = self.inner.pending.iter().filter(|p| p.dst == id).map(|p| *p.key()).collect();
        for handle in failed {
            if let Some((_, p)) = self.inner.pending.remove(&handle) {
                let err = CallError::Disconnected {
                    context: id,
                    name: format!("lost hop: context {lost}"),
                    reason: reason.to_owned(),
                };
                match p.tx {
                    PendingTx::Once(tx) => drop(tx.send(Err(err))),
                    PendingTx::Stream(tx) => drop(tx.send(Err(err))),
                }
            }
        }
        if let Some((_, watch)) = self.inner.watchers.remove(&id) {
            let _ = watch.send(Some(reason.to_owned()));
        }
    }

    /// Resolves (to the reason) when context `id` becomes unreachable from here: its route is
    /// deleted, or the link it was behind closes.
    pub fn watch_route(&self, id: ContextId) -> watch::Receiver<Option<String>> {
        self.inner.watchers.entry(id).or_insert_with(|| watch::channel(None).0).subscribe()
    }

    async fn dispatch(&self, frame: Frame) {
        let h = frame.header;
        let Some((name, req)) = call::split_call(&frame.body) else {
            return self
                .reply(h, "(unreadable)", Err(Failure::new(RemoteErrorKind::BadRequest, "the body is not a call")))
                .await;
        };
        let refuse = |kind, msg: String| Err(Failure::new(kind, msg));
        if !self.may_call(h.auth, name) {
            let msg = format!(
                "calls are accepted only from ancestors {:?}, not from context {}",
                self.inner.cfg.ancestors, h.auth
            );
            return self.reply(h, name, refuse(RemoteErrorKind::Refused, msg)).await;
        }
        if !self.inner.accepting.load(Ordering::Acquire) {
            return self.reply(h, name, refuse(RemoteErrorKind::ShuttingDown, "no new calls are taken".into())).await;
        }
        let Some(entry) = self.inner.handlers.get(name).cloned() else {
            let msg = format!("it knows {}", self.inner.handlers.names().join(", "));
            return self.reply(h, name, refuse(RemoteErrorKind::UnknownHandler, msg)).await;
        };
        let shape = match h.flags & (flags::UPLOAD | flags::DOWNLOAD) {
            0 => Shape::Plain,
            flags::UPLOAD => Shape::Upload,
            flags::DOWNLOAD => Shape::Download,
            _ => Shape::Plain, // both bits: refused below as a mismatch unless the handler is plain
        };
        if shape != entry.shape || h.flags & flags::UPLOAD != 0 && h.flags & flags::DOWNLOAD != 0 {
            let msg = format!("the handler takes a {:?} call, this one is {:?}", entry.shape, shape);
            return self.reply(h, name, refuse(RemoteErrorKind::BadRequest, msg)).await;
        }

        let id = self.id();
        let stream = match shape {
            Shape::Plain => StreamArg::None,
            Shape::Upload => {
                let (tx, rx) = mpsc::unbounded_channel();
                self.inner.inbound.insert((h.src, h.reply_to), tx);
                let credit =
                    Header { dst: h.src, src: id, auth: id, handle: h.reply_to, reply_to: 0, flags: flags::CREDIT };
                StreamArg::Upload(ByteReceiver::new(self.clone(), credit, rx))
            }
            Shape::Download => {
                let (tx, rx) = mpsc::unbounded_channel();
                self.inner.inbound.insert((h.src, h.reply_to), tx);
                let data =
                    Header { dst: h.src, src: id, auth: id, handle: h.reply_to, reply_to: 0, flags: flags::DATA };
                StreamArg::Download(ByteSender::new(self.clone(), data, rx, WINDOW))
            }
        };
        let name: Arc<str> = name.into();
        let req = frame.body.slice(frame.body.len() - req.len()..);
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        let cx = Cx { router: self.clone(), caller: h.src };
        let mut run = Box::pin(call::run_caught(entry, req, cx, stream));
        // Most handlers answer without waiting: poll once here and spare them a task. One that is
        // still pending goes on in a task of its own, whose first poll registers a real waker.
        let first = run.as_mut().poll(&mut TaskContext::from_waker(Waker::noop()));
        match first {
            Poll::Ready(result) => self.finish_call(h, &name, result).await,
            Poll::Pending => {
                let router = self.clone();
                let span = tracing::debug_span!("call", handler = %name, caller = h.src);
                tokio::spawn(
                    async move {
                        let result = run.await;
                        router.finish_call(h, &name, result).await;
                    }
                    .instrument(span),
                );
            }
        }
    }

    /// Answer a call whose handler has finished, and count it out.
    async fn finish_call(&self, h: Header, name: &str, result: call::Reply) {
        self.inner.inbound.remove(&(h.src, h.reply_to));
        if h.flags & flags::NO_REPLY == 0 {
            self.reply(h, name, result).await;
        } else if let Err(f) = result {
            warn!(handler = %name, error = %self.remote_error(name, f), "a fire-and-forget call failed");
        }
        if self.inner.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }

    fn remote_error(&self, handler: &str, f: Failure) -> RemoteError {
        RemoteError {
            kind: f.kind,
            handler: handler.to_owned(),
            message: f.message,
            causes: f.causes,
            context: self.id(),
            origin: self.inner.cfg.origin.clone(),
        }
    }

    async fn reply(&self, call: Header, handler: &str, result: Result<Bytes, Failure>) {
        if call.flags & flags::NO_REPLY != 0 || call.reply_to == 0 {
            if let Err(f) = result {
                warn!(handler, error = %self.remote_error(handler, f), "a call without a reply handle failed");
            }
            return;
        }
        let id = self.id();
        let mut header =
            Header { dst: call.src, src: id, auth: id, handle: call.reply_to, reply_to: 0, flags: flags::REPLY };
        let body = match result {
            Ok(body) if body.len() + frame::HEADER_LEN <= self.inner.cfg.max_frame => body,
            Ok(body) => {
                let f = Failure::new(
                    RemoteErrorKind::Handler,
                    format!(
                        "the response ({} bytes) exceeds the maximum frame of {} bytes",
                        body.len(),
                        self.inner.cfg.max_frame
                    ),
                );
                header.flags |= flags::ERROR;
                self.encode_error(handler, f)
            }
            Err(f) => {
                header.flags |= flags::ERROR;
                self.encode_error(handler, f)
            }
        };
        if let Err(e) = self.send_frame(Frame { header, body }).await {
            debug!(handler, error = %e, "could not send a reply");
        }
    }

    fn encode_error(&self, handler: &str, f: Failure) -> Bytes {
        // A RemoteError holds only strings and integers: encoding cannot fail.
        call::encode_value(&self.remote_error(handler, f)).unwrap_or_default()
    }
}

struct PendingGuard<'a> {
    router: &'a Router,
    handle: u32,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.router.inner.pending.remove(&self.handle);
    }
}

fn decode_reply<R: Request>(frame: &Frame) -> Result<R::Response, CallError> {
    if frame.header.flags & flags::ERROR != 0 {
        let err = call::decode_value::<RemoteError>(&frame.body)
            .map_err(|e| CallError::Decode { handler: R::NAME, reason: format!("error answer: {e}") })?;
        return Err(CallError::Remote(err));
    }
    call::decode_value(&frame.body).map_err(|e| CallError::Decode { handler: R::NAME, reason: e.to_string() })
}

async fn write_loop<W: AsyncWrite + Unpin>(mut rx: mpsc::Receiver<Frame>, mut w: W, max: usize) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(WRITE_BATCH + CHUNK);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(f) = next.take() {
            if f.body.len() >= WRITE_DIRECT {
                if frame::encode_header(&f.header, f.body.len(), max, &mut buf).is_ok() {
                    w.write_all_buf(&mut buf).await?;
                    w.write_all(&f.body).await?;
                }
            } else if let Err(e) = frame::encode(&f.header, &f.body, max, &mut buf) {
                warn!(error = %e, "dropped an oversized frame");
            }
            if buf.len() < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            w.write_all_buf(&mut buf).await?;
        }
        w.flush().await?;
    }
    w.shutdown().await
}

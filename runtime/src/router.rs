//! The router: links to neighbouring contexts, the route table, reply handles and call dispatch.
//!
//! Every context (the controller and each agent) has one [`Router`]. A *link* is a byte stream to
//! a neighbour: the parent, or a child. Each link has a reader task, which decodes frames and hands
//! them to [`Router`] for delivery, a writer task, which batches queued frames into few writes, and
//! a watchdog, which sends heartbeats and closes a link whose peer went silent or stopped reading.
//! Frames for this context are dispatched by handle; frames for other contexts are forwarded along
//! the route table (`dst` → link), and frames for ids not in the table go to the parent.
//!
//! Authority comes from where a frame arrived: its source must be routed through the link it came
//! on (the reverse-path check), and what it may do follows from where that source sits in the tree
//! (an ancestor may call and command; a descendant may call what this context opened to it; route
//! announcements come only from child links and only for ids granted below them). No header field
//! carries authority.
//!
//! When a link closes, every call waiting on an answer through it fails with
//! [`CallError::Disconnected`] naming the context, and its routes are removed.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::{debug, warn, Instrument, Span};

use crate::call::{self, Cx, Failure, Request, Shape, StreamArg};
use crate::codec;
use crate::error::{CallError, RemoteError, RemoteErrorKind};
use crate::frame::{self, flags, handles, Frame, FrameError, Header};
use crate::link::{self, LinkState, Outbox, PushError, Verdict};
use crate::proto::{Control, IdBlock};
use crate::stream::{ByteReceiver, ByteSender, Shared, StreamError, Violation, CHUNK, WINDOW};
use crate::{ContextId, Handlers};

/// Identifies one link of a router.
pub type LinkId = u64;

/// The reader reads into at least this much free room...
const READ_MIN: usize = 4 << 10;
/// ...and makes room for a whole stream chunk when it has less: one read per chunk of bulk data,
/// and a fresh buffer only every few thousand small frames.
const READ_BATCH: usize = CHUNK + frame::HEADER_LEN + frame::LEN_PREFIX;
/// Default [`RouterConfig::link_timeout`].
pub const DEFAULT_LINK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`RouterConfig::call_timeout`].
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Who this router is.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RouterConfig {
    /// This context's id (0 for the controller).
    pub id: ContextId,
    /// Ancestors, nearest first. They may call and command this context.
    pub ancestors: Vec<ContextId>,
    /// Where this context runs, for errors: `user@host pid N`.
    pub origin: String,
    /// Largest frame accepted or sent on any link.
    pub max_frame: usize,
    /// A link that brings nothing for this long (give or take a quarter) is lost, and so is one
    /// whose peer takes nothing from it for as long. Every link sends a heartbeat each quarter of
    /// it, so a quiet peer is not a silent one. Both ends of a link should agree: a parent passes
    /// its own in the Init.
    pub link_timeout: Duration,
    /// How long a call waits for its answer (a stream: for anything to move) unless the caller
    /// says otherwise.
    pub call_timeout: Duration,
}

impl RouterConfig {
    /// Context `id` with these ancestors (nearest first), the default frame limit and deadlines.
    pub fn new(id: ContextId, ancestors: Vec<ContextId>, origin: impl Into<String>) -> Self {
        RouterConfig {
            id,
            ancestors,
            origin: origin.into(),
            max_frame: frame::DEFAULT_MAX_FRAME,
            link_timeout: DEFAULT_LINK_TIMEOUT,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// Set [`RouterConfig::max_frame`].
    pub fn with_max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Set [`RouterConfig::link_timeout`].
    pub fn with_link_timeout(mut self, timeout: Duration) -> Self {
        self.link_timeout = timeout;
        self
    }

    /// Set [`RouterConfig::call_timeout`].
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }
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
    /// Nothing arrived on the link for this long: the peer (or the path to it) went silent.
    Silent(Duration),
    /// The peer took nothing from the link for this long, with this many bytes waiting for it.
    Stalled(Duration, usize),
    /// The peer fell this many bytes behind, more than a link may hold for it.
    Overflow(usize),
    /// The peer broke the protocol (sent stream data past its credit).
    Protocol(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Eof => f.write_str("the stream closed (end of file)"),
            CloseReason::Io(e) => write!(f, "I/O error: {e}"),
            CloseReason::Garbled(e) => write!(f, "garbled stream: {e}"),
            CloseReason::Local(why) => write!(f, "closed here: {why}"),
            CloseReason::Lost(why) => f.write_str(why),
            CloseReason::Silent(after) => write!(f, "silent: nothing arrived for {} s", after.as_secs_f32()),
            CloseReason::Stalled(after, queued) => {
                write!(f, "stalled: it took nothing for {} s with {queued} bytes waiting for it", after.as_secs_f32())
            }
            CloseReason::Overflow(queued) => write!(f, "it fell {queued} bytes behind, more than a link may hold"),
            CloseReason::Protocol(why) => write!(f, "protocol violation: {why}"),
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
    outbox: Outbox,
    /// The context at the far end: the child, or the parent.
    peer: ContextId,
    is_parent: bool,
    name: Arc<str>,
    closed: watch::Sender<Option<CloseReason>>,
    tasks: Vec<AbortHandle>,
    writer: Option<JoinHandle<()>>,
}

struct Pending {
    via: LinkId,
    dst: ContextId,
    tx: PendingTx,
}

enum PendingTx {
    Once(oneshot::Sender<Result<Frame, CallError>>),
    Stream(Arc<Shared>),
}

/// Ids `[start, end)` that may be announced only from below context `under`.
#[derive(Clone, Copy, Debug)]
struct Grant {
    end: ContextId,
    under: ContextId,
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
    /// Streams of calls this context serves, by (caller, caller's reply handle).
    inbound: DashMap<(ContextId, u32), Arc<Shared>>,
    /// Which ids may be announced from where (see `Router::grant`), by first id.
    grants: Mutex<BTreeMap<ContextId, Grant>>,
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
    ids: Mutex<IdBlock>,
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
                grants: Mutex::new(BTreeMap::new()),
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

    /// Number of contexts routed below this one (for tests and metrics).
    pub fn route_count(&self) -> usize {
        self.inner.routes.len()
    }

    /// Number of streams of calls this context serves that are still open (for tests and metrics).
    pub fn open_streams(&self) -> usize {
        self.inner.inbound.len()
    }

    /// Start pumping `reader`/`writer` as a link. Must be called within a tokio runtime; the link's
    /// tasks run there. A child's route is announced to this context's parent before this returns
    /// (so nothing this context sends afterwards can overtake the announcement).
    pub fn attach<R, W>(&self, reader: R, writer: W, opts: LinkOptions) -> LinkHandle
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let id = self.inner.next_link.fetch_add(1, Ordering::Relaxed);
        let max = self.inner.cfg.max_frame;
        let (outbox, rx) = Outbox::new(max);
        let (closed_tx, closed_rx) = watch::channel(None);
        let (peer, is_parent) = match opts.role {
            Role::Child(peer) => (peer, false),
            Role::Parent => (self.inner.cfg.ancestors.first().copied().unwrap_or(0), true),
        };

        let router = self.clone();
        let state = outbox.state();
        let writer = tokio::spawn(
            async move {
                if let Err(e) = link::write_loop(rx, writer, max, state).await {
                    debug!(error = %e, "link writer stopped");
                    router.close(id, CloseReason::Io(e.to_string()));
                }
            }
            .instrument(opts.span.clone()),
        );
        // The link and its route exist before the reader starts: a frame read at once must pass
        // the reverse-path check (regression: the first call into an agent was sometimes dropped).
        let link = Link {
            outbox: outbox.clone(),
            peer,
            is_parent,
            name: opts.name.into(),
            closed: closed_tx,
            tasks: Vec::new(),
            writer: Some(writer),
        };
        self.inner.links.insert(id, link);
        match opts.role {
            Role::Parent => self.inner.parent.store(id, Ordering::Release),
            Role::Child(peer) => {
                self.inner.routes.insert(peer, id);
                self.announce(Control::AddRoute { id: peer });
            }
        }
        let router = self.clone();
        let state = outbox.state();
        let reader = tokio::spawn(
            async move {
                let reason = router.read_loop(id, reader, opts.initial, state, is_parent).await;
                router.close(id, reason);
            }
            .instrument(opts.span.clone()),
        );
        let router = self.clone();
        let (me, timeout) = (self.id(), self.inner.cfg.link_timeout);
        let heartbeat = move || Frame {
            header: Header { dst: peer, src: me, handle: handles::HEARTBEAT, reply_to: 0, flags: 0 },
            body: Bytes::new(),
        };
        let watchdog = tokio::spawn(
            async move {
                let reason = match link::watch(outbox, timeout, heartbeat).await {
                    Verdict::Silent(after) => CloseReason::Silent(after),
                    Verdict::Stalled(after, queued) => CloseReason::Stalled(after, queued),
                };
                warn!(%reason, "closing the link");
                router.close(id, reason);
            }
            .instrument(opts.span),
        );
        match self.inner.links.get_mut(&id) {
            Some(mut link) => link.tasks = vec![reader.abort_handle(), watchdog.abort_handle()],
            None => {
                // Closed already.
                reader.abort();
                watchdog.abort();
            }
        }
        LinkHandle { id, closed: closed_rx }
    }

    /// Close a link: its routes go, calls waiting through it fail, streams through it end. Closed
    /// here ([`CloseReason::Local`]), the link's writer goes on until the frames already queued are
    /// written, and is returned to wait for; closed for any other reason, what was queued for the
    /// peer is dropped with it.
    pub fn close(&self, link: LinkId, reason: CloseReason) -> Option<JoinHandle<()>> {
        let (_, mut entry) = self.inner.links.remove(&link)?;
        debug!(link, %reason, "link closed");
        for task in &entry.tasks {
            task.abort();
        }
        if !matches!(reason, CloseReason::Local(_)) {
            if let Some(writer) = entry.writer.take() {
                writer.abort();
            }
        }
        entry.outbox.close();
        let _ = self.inner.parent.compare_exchange(link, 0, Ordering::AcqRel, Ordering::Acquire);
        let gone: Vec<ContextId> = self.inner.routes.iter().filter(|r| *r.value() == link).map(|r| *r.key()).collect();
        self.inner.routes.retain(|_, via| *via != link);

        let failed: Vec<u32> = self.inner.pending.iter().filter(|p| p.via == link).map(|p| *p.key()).collect();
        let err =
            |dst| CallError::Disconnected { context: dst, name: entry.name.to_string(), reason: reason.to_string() };
        for handle in failed {
            if let Some((_, p)) = self.inner.pending.remove(&handle) {
                match p.tx {
                    PendingTx::Once(tx) => drop(tx.send(Err(err(p.dst)))),
                    PendingTx::Stream(s) => s.fail(StreamError::Call(err(p.dst))),
                }
            }
        }
        // Streams from contexts this link led to end: behind a child, those routed through it;
        // behind the parent, everything not routed below this context.
        self.inner.inbound.retain(|(src, _), s| {
            let lost = gone.contains(src) || entry.is_parent && !self.inner.routes.contains_key(src);
            if lost {
                s.fail(StreamError::Call(err(*src)));
            }
            !lost
        });
        self.forget_grants(&gone);
        let why = format!("{} was lost: {reason}", entry.name);
        for id in &gone {
            if let Some((_, watch)) = self.inner.watchers.remove(id) {
                let _ = watch.send(Some(why.clone()));
            }
        }
        // Tell the ancestors which contexts went with this link, naming the hop that was lost.
        if !entry.is_parent {
            for id in gone {
                self.announce(Control::DelRoute { id, lost: entry.peer, reason: why.clone() });
            }
        }
        let _ = entry.closed.send(Some(reason));
        entry.writer.take()
    }

    /// Let ids `ids` be announced (as new contexts) only from below context `under`: its own link
    /// if it is a child, or the link its route came up. Announcements of ids nobody granted are
    /// refused, so every context on the way up must hear of an id first: the controller grants
    /// every id it gives out, and tells the hops above a via start ([`Router::grant_at`]); a hop
    /// grants the blocks of the children it starts. Grants do not nest (blocks are disjoint), so
    /// the one that starts nearest below an id is the one that covers it, if any does.
    pub fn grant(&self, ids: IdBlock, under: ContextId) {
        if ids.0 < ids.1 {
            let mut grants = self.inner.grants.lock().unwrap_or_else(|e| e.into_inner());
            grants.insert(ids.0, Grant { end: ids.1, under });
        }
    }

    /// Tell context `hop` (a descendant) to [`grant`](Router::grant) `ids` below `under`; frames
    /// stay in order, so a start sent afterwards along the same path finds it there.
    pub async fn grant_at(&self, hop: ContextId, ids: IdBlock, under: ContextId) -> Result<(), CallError> {
        let frame = self.control_frame(hop, &Control::Grant { ids, under })?;
        self.send_frame(frame).await
    }

    fn granted(&self, id: ContextId) -> Option<ContextId> {
        let grants = self.inner.grants.lock().unwrap_or_else(|e| e.into_inner());
        let (_, g) = grants.range(..=id).next_back()?;
        (id < g.end).then_some(g.under)
    }

    fn forget_grants(&self, gone: &[ContextId]) {
        if !gone.is_empty() {
            let mut grants = self.inner.grants.lock().unwrap_or_else(|e| e.into_inner());
            grants.retain(|_, g| !gone.contains(&g.under));
        }
    }

    /// The ids this context may give to the children it starts by itself (from its Init).
    pub fn grant_ids(&self, block: IdBlock) {
        *self.inner.ids.lock().unwrap_or_else(|e| e.into_inner()) = block;
    }

    /// Take `n` ids from this context's block, if it has that many left.
    pub fn allocate_ids(&self, n: ContextId) -> Option<IdBlock> {
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

    /// Call `req` in context `dst` and wait for its answer, at most [`RouterConfig::call_timeout`].
    pub async fn call<R: Request>(&self, dst: ContextId, req: &R) -> Result<R::Response, CallError> {
        self.call_encoded(dst, &EncodedRequest::new(req)?).await
    }

    /// [`Router::call`], waiting at most `timeout` for the answer.
    pub async fn call_within<R: Request>(
        &self,
        dst: ContextId,
        req: &R,
        timeout: Duration,
    ) -> Result<R::Response, CallError> {
        self.call_encoded_within(dst, &EncodedRequest::new(req)?, timeout).await
    }

    /// Call an already encoded request (encode once, call many contexts).
    pub async fn call_encoded<R: Request>(
        &self,
        dst: ContextId,
        req: &EncodedRequest<R>,
    ) -> Result<R::Response, CallError> {
        self.call_encoded_within(dst, req, self.inner.cfg.call_timeout).await
    }

    /// [`Router::call_encoded`], waiting at most `timeout` for the answer.
    pub async fn call_encoded_within<R: Request>(
        &self,
        dst: ContextId,
        req: &EncodedRequest<R>,
        timeout: Duration,
    ) -> Result<R::Response, CallError> {
        let (tx, rx) = oneshot::channel();
        let (handle, _guard) = self.expect_reply(dst, PendingTx::Once(tx))?;
        self.send_call(dst, req.body.clone(), handle, 0).await?;
        let frame = match tokio::time::timeout(timeout, rx).await {
            Ok(answer) => answer.map_err(|_| self.lost(dst))??,
            Err(_) => return Err(CallError::Timeout { context: dst, handler: R::NAME, after: timeout }),
        };
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
    /// whatever the size of the data. Dropping the future aborts the stream on the far side too.
    pub async fn upload<R, S>(&self, dst: ContextId, req: &R, mut reader: S) -> Result<R::Response, CallError>
    where
        R: Request,
        S: AsyncRead + Unpin,
    {
        let (data, shared, _guard) = self.stream_call(dst, req, flags::UPLOAD, flags::DATA).await?;
        let mut tx = ByteSender::new(self.clone(), data, shared, true);
        let stream_err = |reason: String| CallError::Stream { handler: R::NAME, reason };
        loop {
            let mut chunk = BytesMut::with_capacity(CHUNK);
            let n = reader.read_buf(&mut chunk).await.map_err(|e| stream_err(format!("reading the upload: {e}")))?;
            let sent = if n == 0 { tx.finish().await } else { tx.send(chunk.freeze()).await };
            match sent {
                Ok(()) if n == 0 => break,
                Ok(()) => {}
                // The handler answered, or stopped taking data: its answer says why.
                Err(StreamError::Closed | StreamError::Aborted(_)) => break,
                Err(e) => return Err(e.into_call_error(dst, R::NAME)),
            }
        }
        let frame = tx.into_reply().await.map_err(|e| e.into_call_error(dst, R::NAME))?;
        decode_reply::<R>(&frame)
    }

    /// Call `req` in `dst` and write the bytes its handler (registered with
    /// [`Handlers::on_download`]) sends to `writer`, with bounded memory. Dropping the future
    /// aborts the stream on the far side too.
    pub async fn download<R, W>(&self, dst: ContextId, req: &R, mut writer: W) -> Result<R::Response, CallError>
    where
        R: Request,
        W: AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt;
        let (credit, shared, _guard) = self.stream_call(dst, req, flags::DOWNLOAD, flags::CREDIT).await?;
        let mut rx = ByteReceiver::new(self.clone(), credit, shared);
        let stream_err = |reason: String| CallError::Stream { handler: R::NAME, reason };
        while let Some(chunk) = rx.recv().await.map_err(|e| e.into_call_error(dst, R::NAME))? {
            writer.write_all(&chunk).await.map_err(|e| stream_err(format!("writing the download: {e}")))?;
        }
        writer.flush().await.map_err(|e| stream_err(format!("writing the download: {e}")))?;
        let frame = rx.take_reply().ok_or_else(|| stream_err("stream ended without an answer".into()))?;
        decode_reply::<R>(&frame)
    }

    /// Ask context `dst` (a descendant) to stop taking calls, let calls in flight finish for up to
    /// `grace`, and exit. Only its ancestors are obeyed.
    pub async fn request_shutdown(&self, dst: ContextId, grace: Duration) -> Result<(), CallError> {
        let msg = Control::Shutdown { grace_ms: grace.as_millis().try_into().unwrap_or(u64::MAX) };
        let frame = self.control_frame(dst, &msg)?;
        self.send_frame(frame).await
    }

    fn control_frame(&self, dst: ContextId, msg: &Control) -> Result<Frame, CallError> {
        let body =
            codec::encode_value(msg).map_err(|e| CallError::Encode { handler: "control", reason: e.to_string() })?;
        let header = Header { dst, src: self.id(), handle: handles::CONTROL, reply_to: 0, flags: 0 };
        Ok(Frame { header, body })
    }

    /// Send a call that comes with a stream (`kind`: UPLOAD or DOWNLOAD). Returns the header this
    /// side's stream frames (`frames`: DATA or CREDIT) carry to the callee, and the stream's state.
    async fn stream_call<R: Request>(
        &self,
        dst: ContextId,
        req: &R,
        kind: u32,
        frames: u32,
    ) -> Result<(Header, Arc<Shared>, PendingGuard<'_>), CallError> {
        let body = call::encode_call(req)?;
        let shared = Shared::new(WINDOW);
        let (handle, guard) = self.expect_reply(dst, PendingTx::Stream(shared.clone()))?;
        self.send_call(dst, body, handle, kind).await?;
        let header = Header { dst, src: self.id(), handle: handles::STREAM, reply_to: handle, flags: frames };
        Ok((header, shared, guard))
    }

    /// Queue `frame` on the link towards its destination, first waiting while that link has more
    /// queued than it should (its writer makes progress, or the link closes).
    pub(crate) async fn send_frame(&self, frame: Frame) -> Result<(), CallError> {
        let (link, outbox) = self.outbox_for(&frame)?;
        outbox.room().await;
        self.push_to(link, &outbox, frame)
    }

    /// Queue `frame` on the link towards its destination without waiting.
    pub(crate) fn push_frame(&self, frame: Frame) -> Result<(), CallError> {
        let (link, outbox) = self.outbox_for(&frame)?;
        self.push_to(link, &outbox, frame)
    }

    fn outbox_for(&self, frame: &Frame) -> Result<(LinkId, Outbox), CallError> {
        let dst = frame.header.dst;
        let len = frame.body.len() + frame::HEADER_LEN;
        if len > self.inner.cfg.max_frame {
            let reason = FrameError::TooLarge { len, max: self.inner.cfg.max_frame }.to_string();
            return Err(CallError::Encode { handler: "frame", reason });
        }
        let link = self.link_for(dst).ok_or(CallError::NoRoute(dst))?;
        let outbox = self.inner.links.get(&link).map(|l| l.outbox.clone()).ok_or_else(|| self.lost(dst))?;
        Ok((link, outbox))
    }

    fn push_to(&self, link: LinkId, outbox: &Outbox, frame: Frame) -> Result<(), CallError> {
        let dst = frame.header.dst;
        match outbox.push(frame) {
            Ok(()) => Ok(()),
            Err(PushError::Closed) => Err(self.lost(dst)),
            Err(PushError::Overflow(queued)) => {
                self.close(link, CloseReason::Overflow(queued));
                Err(self.lost(dst))
            }
        }
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
    fn expect_reply(&self, dst: ContextId, tx: PendingTx) -> Result<(u32, PendingGuard<'_>), CallError> {
        let via = self.link_for(dst).ok_or(CallError::NoRoute(dst))?;
        let handle = self.alloc_handle();
        self.inner.pending.insert(handle, Pending { via, dst, tx });
        let guard = PendingGuard { router: self, handle };
        // A link that closed before the insert did not see this entry: fail now instead of waiting.
        if !self.inner.links.contains_key(&via) {
            return Err(self.lost(dst));
        }
        Ok((handle, guard))
    }

    async fn send_call(&self, dst: ContextId, body: Bytes, reply_to: u32, flags: u32) -> Result<(), CallError> {
        let header = Header { dst, src: self.id(), handle: handles::CALL, reply_to, flags };
        self.send_frame(Frame { header, body }).await
    }

    /// `from_parent`: frames read from the parent link are never held up (it carries frames for
    /// every context below this one); frames read from a child wait for room on the link they go
    /// to, which slows down that child only.
    async fn read_loop<R: AsyncRead + Unpin>(
        &self,
        link: LinkId,
        mut reader: R,
        mut buf: BytesMut,
        state: Arc<LinkState>,
        from_parent: bool,
    ) -> CloseReason {
        let max = self.inner.cfg.max_frame;
        loop {
            loop {
                match frame::decode(&mut buf, max) {
                    Ok(Some(frame)) => {
                        if let Err(reason) = self.deliver(frame, link, !from_parent).await {
                            return reason;
                        }
                    }
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
                Ok(_) => state.read_some(),
                Err(e) => return CloseReason::Io(e.to_string()),
            }
        }
    }

    /// Queue a frame produced while reading a link: waiting for room if `wait`, else not.
    async fn queue(&self, frame: Frame, wait: bool) -> Result<(), CallError> {
        if wait {
            self.send_frame(frame).await
        } else {
            self.push_frame(frame)
        }
    }

    /// Handle one frame read from link `from`. An error closes that link.
    async fn deliver(&self, frame: Frame, from: LinkId, wait: bool) -> Result<(), CloseReason> {
        let h = frame.header;
        // Reverse-path check: a frame must arrive on the link its source is routed through.
        if self.link_for(h.src) != Some(from) {
            warn!(
                src = h.src,
                dst = h.dst,
                link = from,
                "dropped a frame whose source is not behind the link it came on"
            );
            return Ok(());
        }
        if h.dst != self.id() {
            self.forward(frame, wait).await;
            return Ok(());
        }
        match h.handle {
            handles::CALL => self.dispatch(frame, wait).await,
            handles::CONTROL => self.control(frame, from, wait).await,
            handles::HEARTBEAT => {}
            handles::STREAM => {
                let stream = self.inner.inbound.get(&(h.src, h.reply_to)).map(|s| s.clone());
                if let Some(stream) = stream {
                    if h.flags & flags::REPLY != 0 {
                        return Ok(()); // only a callee answers, and this is the callee
                    }
                    if let Err(v) = stream.apply(frame) {
                        self.inner.inbound.remove(&(h.src, h.reply_to));
                        return self.violation(h, from, v);
                    }
                }
            }
            handle if handle >= handles::FIRST_DYNAMIC => return self.answer(frame, from),
            other => debug!(handle = other, src = h.src, "dropped a frame for an unknown handle"),
        }
        Ok(())
    }

    /// A frame for one of this context's reply handles: the answer to a call, or stream frames of
    /// one. Only the context that was called may send them.
    fn answer(&self, frame: Frame, from: LinkId) -> Result<(), CloseReason> {
        let h = frame.header;
        let stream = match self.inner.pending.get(&h.handle) {
            Some(p) if p.dst != h.src => {
                warn!(src = h.src, called = p.dst, "dropped an answer from a context that was not called");
                return Ok(());
            }
            Some(p) => match &p.tx {
                PendingTx::Stream(s) => Some(s.clone()),
                PendingTx::Once(_) => None,
            },
            None => return Ok(()),
        };
        if h.flags & flags::REPLY != 0 {
            if let Some((_, p)) = self.inner.pending.remove(&h.handle) {
                match p.tx {
                    PendingTx::Once(tx) => drop(tx.send(Ok(frame))),
                    PendingTx::Stream(s) => drop(s.apply(frame)),
                }
            }
        } else if let Some(stream) = stream {
            if let Err(v) = stream.apply(frame) {
                self.inner.pending.remove(&h.handle);
                return self.violation(h, from, v);
            }
        }
        Ok(())
    }

    /// Context `h.src` sent stream data past its credit. Its stream has failed; the peer is told,
    /// and if it is this link's own neighbour, the link closes (a stream of a context further away
    /// fails alone: it says nothing about the neighbour that carried it).
    fn violation(&self, h: Header, from: LinkId, v: Violation) -> Result<(), CloseReason> {
        let why = format!("context {} sent stream data past the credit it was given ({})", h.src, v.0);
        warn!(src = h.src, "{why}");
        // The other end of the stream: the caller's reply handle, or the callee's stream handle.
        let (handle, reply_to) =
            if h.handle == handles::STREAM { (h.reply_to, 0) } else { (handles::STREAM, h.handle) };
        let header = Header { dst: h.src, src: self.id(), handle, reply_to, flags: flags::ABORT };
        let _ = self.push_frame(Frame { header, body: codec::encode_value(&why).unwrap_or_default() });
        let neighbour = self.inner.links.get(&from).map(|l| l.peer);
        match neighbour {
            Some(peer) if peer == h.src => Err(CloseReason::Protocol(why)),
            _ => Ok(()),
        }
    }

    async fn forward(&self, frame: Frame, wait: bool) {
        let h = frame.header;
        if let Err(e) = self.queue(frame, wait).await {
            debug!(dst = h.dst, error = %e, "could not forward a frame");
            if h.handle == handles::CALL && h.flags & flags::NO_REPLY == 0 {
                let f = Failure::new(RemoteErrorKind::NoRoute, e.to_string());
                self.reply(h, "(forwarded call)", Err(f), wait).await;
            }
        }
    }

    fn is_ancestor(&self, id: ContextId) -> bool {
        self.inner.cfg.ancestors.contains(&id)
    }

    /// Whether context `caller` (a frame's checked source) may call handler `name` here: an
    /// ancestor, or a descendant after this context opted in, for every handler or for this one.
    fn may_call(&self, caller: ContextId, name: &str) -> bool {
        self.is_ancestor(caller)
            || self.is_descendant(caller)
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

    async fn control(&self, frame: Frame, from: LinkId, wait: bool) {
        let src = frame.header.src;
        let msg = match codec::decode_value::<Control>(&frame.body) {
            Ok(msg) => msg,
            Err(e) => return warn!(src, error = %e, "dropped an undecodable control message"),
        };
        let from_parent = self.inner.parent.load(Ordering::Acquire) == from;
        match msg {
            // Routes are announced by descendants, up the tree, and apply to the link they came on.
            Control::AddRoute { id } if !from_parent => {
                match self.inner.routes.get(&id).map(|v| *v) {
                    Some(via) if via == from => return, // known already: nothing new to pass on
                    Some(_) => return warn!(src, id, "refused a route for a context already reachable another way"),
                    None => {}
                }
                if id == self.id() || self.is_ancestor(id) {
                    return warn!(src, id, "refused a route for this context or an ancestor");
                }
                // Every id that may appear below a link was granted here first (by this context when
                // it started the child, or by the controller for a start further down).
                match self.granted(id) {
                    Some(under) if self.inner.routes.get(&under).map(|v| *v) == Some(from) => {}
                    Some(under) => {
                        return warn!(src, id, under, "refused a route for an id granted elsewhere in the tree");
                    }
                    None => return warn!(src, id, "refused a route for an id nobody granted below that link"),
                }
                self.inner.routes.insert(id, from);
                self.pass_up(Control::AddRoute { id }, wait).await;
            }
            Control::DelRoute { id, lost, reason } if !from_parent => {
                if self.inner.routes.remove_if(&id, |_, via| *via == from).is_some() {
                    self.route_lost(id, lost, &reason);
                    self.pass_up(Control::DelRoute { id, lost, reason }, wait).await;
                }
            }
            Control::AddRoute { .. } | Control::DelRoute { .. } => {
                warn!(src, "dropped a route message that came down from the parent");
            }
            Control::Grant { ids, under } => {
                if !from_parent || !self.is_ancestor(src) {
                    return warn!(src, "refused a grant from a context that is not an ancestor");
                }
                self.grant(ids, under);
            }
            other => {
                if !from_parent || !self.is_ancestor(src) {
                    return warn!(src, "refused a control message from a context that is not an ancestor");
                }
                let guard = self.inner.control.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(tx) = guard.as_ref() {
                    let _ = tx.send(other);
                }
            }
        }
    }

    /// Pass a route change read from a child on to the parent, waiting for room as anything else
    /// read from a child does.
    async fn pass_up(&self, msg: Control, wait: bool) {
        if let Some(&parent) = self.inner.cfg.ancestors.first() {
            let sent = match self.control_frame(parent, &msg) {
                Ok(frame) => self.queue(frame, wait).await,
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                debug!(error = %e, "could not tell the parent about a route change");
            }
        }
    }

    /// Tell the parent, if any, about a route change below this context. Queued at once, so it
    /// leaves before any frame this context sends or forwards afterwards.
    fn announce(&self, msg: Control) {
        if let Some(&parent) = self.inner.cfg.ancestors.first() {
            let sent = self.control_frame(parent, &msg).and_then(|f| self.push_frame(f));
            if let Err(e) = sent {
                debug!(error = %e, "could not tell the parent about a route change");
            }
        }
    }

    /// Context `id` is unreachable: fail the calls waiting on it and tell who watches it.
    fn route_lost(&self, id: ContextId, lost: ContextId, reason: &str) {
        let err = || CallError::Disconnected {
            context: id,
            name: format!("lost hop: context {lost}"),
            reason: reason.to_owned(),
        };
        let failed: Vec<u32> = self.inner.pending.iter().filter(|p| p.dst == id).map(|p| *p.key()).collect();
        for handle in failed {
            if let Some((_, p)) = self.inner.pending.remove(&handle) {
                match p.tx {
                    PendingTx::Once(tx) => drop(tx.send(Err(err()))),
                    PendingTx::Stream(s) => s.fail(StreamError::Call(err())),
                }
            }
        }
        self.inner.inbound.retain(|(src, _), s| {
            if *src == id {
                s.fail(StreamError::Call(err()));
            }
            *src != id
        });
        self.forget_grants(&[id]);
        if let Some((_, watch)) = self.inner.watchers.remove(&id) {
            let _ = watch.send(Some(reason.to_owned()));
        }
    }

    /// Resolves (to the reason) when context `id` becomes unreachable from here: its route is
    /// deleted, or the link it was behind closes.
    pub fn watch_route(&self, id: ContextId) -> watch::Receiver<Option<String>> {
        self.inner.watchers.entry(id).or_insert_with(|| watch::channel(None).0).subscribe()
    }

    async fn dispatch(&self, frame: Frame, wait: bool) {
        let h = frame.header;
        let Some((name, req)) = call::split_call(&frame.body) else {
            let f = Failure::new(RemoteErrorKind::BadRequest, "the body is not a call");
            return self.reply(h, "(unreadable)", Err(f), wait).await;
        };
        let refuse = |kind, msg: String| Err(Failure::new(kind, msg));
        if !self.may_call(h.src, name) {
            let msg = format!(
                "calls are accepted only from ancestors {:?}, not from context {}",
                self.inner.cfg.ancestors, h.src
            );
            return self.reply(h, name, refuse(RemoteErrorKind::Refused, msg), wait).await;
        }
        if !self.inner.accepting.load(Ordering::Acquire) {
            let f = refuse(RemoteErrorKind::ShuttingDown, "no new calls are taken".into());
            return self.reply(h, name, f, wait).await;
        }
        let Some(entry) = self.inner.handlers.get(name).cloned() else {
            let msg = format!("it knows {}", self.inner.handlers.names().join(", "));
            return self.reply(h, name, refuse(RemoteErrorKind::UnknownHandler, msg), wait).await;
        };
        let shape = match h.flags & (flags::UPLOAD | flags::DOWNLOAD) {
            0 => Shape::Plain,
            flags::UPLOAD => Shape::Upload,
            flags::DOWNLOAD => Shape::Download,
            _ => Shape::Plain, // both bits: refused below as a mismatch unless the handler is plain
        };
        if shape != entry.shape || h.flags & flags::UPLOAD != 0 && h.flags & flags::DOWNLOAD != 0 {
            let msg = format!("the handler takes a {:?} call, this one is {:?}", entry.shape, shape);
            return self.reply(h, name, refuse(RemoteErrorKind::BadRequest, msg), wait).await;
        }
        if shape != Shape::Plain && (h.reply_to == 0 || h.flags & flags::NO_REPLY != 0) {
            let msg = "a call with a stream needs a reply handle".to_owned();
            return self.reply(h, name, refuse(RemoteErrorKind::BadRequest, msg), wait).await;
        }

        let id = self.id();
        let stream = match shape {
            Shape::Plain => StreamArg::None,
            Shape::Upload => {
                let shared = Shared::new(0);
                self.inner.inbound.insert((h.src, h.reply_to), shared.clone());
                let credit = Header { dst: h.src, src: id, handle: h.reply_to, reply_to: 0, flags: flags::CREDIT };
                StreamArg::Upload(ByteReceiver::new(self.clone(), credit, shared))
            }
            Shape::Download => {
                let shared = Shared::new(WINDOW);
                self.inner.inbound.insert((h.src, h.reply_to), shared.clone());
                let data = Header { dst: h.src, src: id, handle: h.reply_to, reply_to: 0, flags: flags::DATA };
                StreamArg::Download(ByteSender::new(self.clone(), data, shared, false))
            }
        };
        let name: Arc<str> = name.into();
        let req = frame.body.slice(frame.body.len() - req.len()..);
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        let cx = Cx::new(self.clone(), h.src);
        let mut run = Box::pin(call::run_caught(entry, req, cx, stream));
        // Most handlers answer without waiting: poll once here and spare them a task. One that is
        // still pending goes on in a task of its own, whose first poll registers a real waker.
        let first = run.as_mut().poll(&mut TaskContext::from_waker(Waker::noop()));
        match first {
            Poll::Ready(result) => self.finish_call(h, &name, result, wait).await,
            Poll::Pending => {
                let router = self.clone();
                let span = tracing::debug_span!("call", handler = %name, caller = h.src);
                tokio::spawn(
                    async move {
                        let result = run.await;
                        router.finish_call(h, &name, result, true).await;
                    }
                    .instrument(span),
                );
            }
        }
    }

    /// Answer a call whose handler has finished, and count it out.
    async fn finish_call(&self, h: Header, name: &str, result: call::Reply, wait: bool) {
        self.inner.inbound.remove(&(h.src, h.reply_to));
        if h.flags & flags::NO_REPLY == 0 {
            self.reply(h, name, result, wait).await;
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
            error_kind: f.error_kind,
        }
    }

    async fn reply(&self, call: Header, handler: &str, result: Result<Bytes, Failure>, wait: bool) {
        if call.flags & flags::NO_REPLY != 0 || call.reply_to == 0 {
            if let Err(f) = result {
                warn!(handler, error = %self.remote_error(handler, f), "a call without a reply handle failed");
            }
            return;
        }
        // From the context called: this one, or (a call this hop could not forward) the one it was
        // for, on whose behalf the hop answers; the caller takes answers only from there.
        let mut header =
            Header { dst: call.src, src: call.dst, handle: call.reply_to, reply_to: 0, flags: flags::REPLY };
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
        if let Err(e) = self.queue(Frame { header, body }, wait).await {
            debug!(handler, error = %e, "could not send a reply");
        }
    }

    fn encode_error(&self, handler: &str, f: Failure) -> Bytes {
        // A RemoteError holds only strings and integers: encoding cannot fail.
        codec::encode_value(&self.remote_error(handler, f)).unwrap_or_default()
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
        let err = codec::decode_value::<RemoteError>(&frame.body)
            .map_err(|e| CallError::Decode { handler: R::NAME, reason: format!("error answer: {e}") })?;
        return Err(CallError::Remote(err));
    }
    codec::decode_value(&frame.body).map_err(|e| CallError::Decode { handler: R::NAME, reason: e.to_string() })
}

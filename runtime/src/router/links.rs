//! A router's links: attaching a byte stream (its reader, writer and watchdog tasks), closing a
//! link and what goes with it, and queueing frames on the link towards a destination.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};
use tracing::{debug, warn, Instrument, Span};

use super::calls::PendingTx;
use super::outbox::{self, LinkState, Outbox, PushError, Verdict};
use super::Router;
use crate::error::CallError;
use crate::frame::{self, handles, Frame, FrameError, Header};
use crate::proto::Control;
use crate::stream::{StreamError, CHUNK};
use crate::ContextId;

/// Identifies one link of a router.
pub type LinkId = u64;

/// The reader reads into at least this much free room...
const READ_MIN: usize = 4 << 10;
/// ...and makes room for a whole stream chunk when it has less: one read per chunk of bulk data,
/// and a fresh buffer only every few thousand small frames.
const READ_BATCH: usize = CHUNK + frame::HEADER_LEN + frame::LEN_PREFIX;

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

pub(super) struct Link {
    outbox: Outbox,
    /// The context at the far end: the child, or the parent.
    pub(super) peer: ContextId,
    is_parent: bool,
    name: Arc<str>,
    closed: watch::Sender<Option<CloseReason>>,
    tasks: Vec<AbortHandle>,
    writer: Option<JoinHandle<()>>,
}

impl Router {
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
                if let Err(e) = outbox::write_loop(rx, writer, max, state).await {
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
                let reason = match outbox::watch(outbox, timeout, heartbeat).await {
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

    pub(super) fn lost(&self, dst: ContextId) -> CallError {
        CallError::Disconnected { context: dst, name: format!("context {dst}"), reason: "the link closed".into() }
    }

    /// Queue a frame produced while reading a link: waiting for room if `wait`, else not.
    pub(super) async fn queue(&self, frame: Frame, wait: bool) -> Result<(), CallError> {
        if wait {
            self.send_frame(frame).await
        } else {
            self.push_frame(frame)
        }
    }
}

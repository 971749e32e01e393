//! Byte streams that belong to a call, with credit-based flow control checked on arrival.
//!
//! Bulk data never travels as one frame: a [`ByteSender`] cuts it into chunks of at most [`CHUNK`]
//! bytes and may have at most [`WINDOW`] units of credit outstanding, a chunk costing its length plus
//! [`FRAME_COST`] (so a flood of tiny or empty chunks is bounded too). The [`ByteReceiver`] grants
//! credit back as its consumer takes chunks.
//!
//! The router applies every stream frame the moment it arrives (`Shared`): data is counted
//! against the credit granted so far, and a peer that sends past it is cut off there and then,
//! before anything is buffered; credit, the end marker, an abort and the call's answer only change
//! the stream's state. So what one stream can make its receiver hold is bounded by the window,
//! whatever the peer sends, and however slowly the consumer reads.
//!
//! Dropping either end before the stream is over tells the other end (an abort frame), so a
//! handler never waits for data from a caller that gave up, nor a caller for a handler's credit.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::call::Request;
use crate::codec;
use crate::error::CallError;
use crate::frame::{flags, Frame, Header};
use crate::router::{decode_reply, PendingGuard};
use crate::{ContextId, Router};

/// Largest chunk of stream data in one frame.
pub const CHUNK: usize = 256 << 10;
/// Credit a sender starts with: units it may send before it waits for more.
pub const WINDOW: u64 = 4 << 20;
/// What a chunk costs beyond its length, in credit units.
pub const FRAME_COST: u64 = 64;
/// Smaller chunks are copied out of the read buffer they arrived in, so a trickle of tiny chunks
/// cannot keep whole read buffers alive.
const COPY_BELOW: usize = 64 << 10;
/// An abort's reason is kept to this many bytes.
const REASON_MAX: usize = 1024;

/// Credit units that `len` bytes of data cost.
pub(crate) fn cost(len: usize) -> u64 {
    len as u64 + FRAME_COST
}

/// Why a stream stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The other side answered the call, or stopped taking data, before the stream ended.
    #[error("the other side stopped taking data")]
    Closed,
    /// The other side gave up on the stream.
    #[error("the other side aborted the stream: {0}")]
    Aborted(String),
    /// The link carrying the stream closed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The other side broke the flow-control rules.
    #[error("flow-control violation: {0}")]
    Protocol(String),
    /// Nothing moved on the stream for this long.
    #[error("nothing moved on the stream for {0:?}")]
    Timeout(Duration),
}

impl StreamError {
    /// As a [`CallError`] of the call to `handler` in `context` the stream belongs to.
    pub fn into_call_error(self, context: ContextId, handler: &'static str) -> CallError {
        match self {
            StreamError::Call(e) => e,
            StreamError::Timeout(after) => CallError::Timeout { context, handler, after },
            other => CallError::Stream { handler, reason: other.to_string() },
        }
    }
}

/// How a stream ended, as far as frames say. The data from the peer ends with END or the call's
/// answer (`Finished`); this side's own data may go on after the peer's has ended (a duplex call),
/// until the answer, an abort or a failure.
#[derive(Debug)]
enum End {
    /// The peer finished its data (END), or the call was answered.
    Finished,
    /// The other side aborted, saying why.
    Aborted(String),
    /// The link went, or the other side broke the rules.
    Failed(StreamError),
    /// A failure that was reported already.
    Gone,
}

#[derive(Debug, Default)]
struct State {
    data: VecDeque<Bytes>,
    /// Receiving side: units arrived and not yet granted back.
    unacked: u64,
    /// Sending side: units it may still send.
    credit: u64,
    end: Option<End>,
    /// Sending side: the peer stopped taking data, saying why.
    sink_gone: Option<String>,
    /// The call's answer, on the caller's side.
    reply: Option<Frame>,
}

/// One stream's state, shared by the router (which applies frames on arrival) and the end that
/// consumes it.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    state: Mutex<State>,
    wake: Notify,
}

/// A peer sent data past its credit.
#[derive(Debug)]
pub(crate) struct Violation(pub(crate) String);

impl Shared {
    pub(crate) fn new(credit: u64) -> Arc<Shared> {
        Arc::new(Shared { state: Mutex::new(State { credit, ..State::default() }), wake: Notify::new() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wake whoever waits on this stream: both ends of a duplex call wait on the one state (the
    /// handler's stdin reader and its output's sender), so every waiter is woken, and a permit is
    /// left for one that checked the state and is about to wait.
    fn wake_all(&self) {
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.wake_all();
    }

    /// Apply one stream frame that arrived from the peer.
    pub(crate) fn apply(&self, frame: Frame) -> Result<(), Violation> {
        let f = frame.header.flags;
        if f & flags::REPLY != 0 {
            self.update(|s| {
                s.reply = Some(frame);
                s.end.get_or_insert(End::Finished);
            });
        } else if f & flags::DATA != 0 {
            let mut s = self.lock();
            let cost = cost(frame.body.len());
            if s.end.is_some() {
                return Ok(()); // late data for a stream already over: dropped
            }
            if s.unacked + cost > WINDOW {
                let why = format!("{} units sent past a window of {WINDOW}", s.unacked + cost);
                s.end = Some(End::Failed(StreamError::Protocol(why.clone())));
                s.data.clear();
                drop(s);
                self.wake_all();
                return Err(Violation(why));
            }
            s.unacked += cost;
            let body = if frame.body.len() < COPY_BELOW { Bytes::copy_from_slice(&frame.body) } else { frame.body };
            s.data.push_back(body);
            drop(s);
            self.wake_all();
        } else if f & flags::CREDIT != 0 && f & flags::ABORT == 0 {
            let grant: u64 = codec::decode_value(&frame.body).unwrap_or(0);
            self.update(|s| s.credit = s.credit.saturating_add(grant));
        } else if f & flags::END != 0 {
            self.update(|s| {
                s.end.get_or_insert(End::Finished);
            });
        } else if f & flags::ABORT != 0 {
            let mut reason: String = codec::decode_value(&frame.body).unwrap_or_default();
            if reason.len() > REASON_MAX {
                let mut cut = REASON_MAX;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                reason.truncate(cut);
            }
            // With CREDIT, only the peer's receiving end went away; without, the whole stream
            // did (even after the peer's own data was complete).
            let whole = f & flags::CREDIT == 0;
            self.update(|s| {
                if whole && matches!(s.end, None | Some(End::Finished)) && s.reply.is_none() {
                    s.end = Some(End::Aborted(reason.clone()));
                }
                s.sink_gone.get_or_insert(reason);
            });
        }
        Ok(())
    }

    /// The stream cannot go on (its link closed, its peer was lost or broke the rules).
    pub(crate) fn fail(&self, err: StreamError) {
        self.update(|s| {
            s.data.clear();
            if !matches!(s.end, Some(End::Failed(_))) {
                s.end = Some(End::Failed(err));
            }
        });
    }

    /// Wait for the next change, at most `idle`.
    async fn changed(&self, idle: Duration) -> Result<(), StreamError> {
        tokio::time::timeout(idle, self.wake.notified()).await.map_err(|_| StreamError::Timeout(idle))
    }

    /// Take a failure out (it is reported once), or describe how the stream ended; `None` while it
    /// goes on or once it finished.
    fn ended(s: &mut State) -> Option<StreamError> {
        match s.end.take()? {
            End::Aborted(why) => {
                s.end = Some(End::Aborted(why.clone()));
                Some(StreamError::Aborted(why))
            }
            End::Failed(e) => {
                s.end = Some(End::Gone);
                Some(e)
            }
            end => {
                s.end = Some(end);
                None
            }
        }
    }

    /// Sending side: why this side can send nothing more, if it cannot. The peer's END does not
    /// stop it (in a duplex call each side ends its own data).
    fn send_closed(s: &mut State) -> Option<StreamError> {
        if s.reply.is_some() || matches!(s.end, Some(End::Gone)) {
            return Some(StreamError::Closed);
        }
        if let Some(why) = &s.sink_gone {
            return Some(StreamError::Aborted(why.clone()));
        }
        match s.end {
            Some(End::Failed(_)) => Shared::ended(s),
            _ => None,
        }
    }
}

/// A frame to send if an end is dropped before its stream is over.
#[derive(Debug)]
struct AbortOnDrop {
    router: Router,
    header: Header,
    why: &'static str,
}

impl AbortOnDrop {
    /// `whole`: the whole stream is off; otherwise only this receiving end went away.
    fn new(router: Router, mut header: Header, whole: bool, why: &'static str) -> Self {
        header.flags = if whole { flags::ABORT } else { flags::ABORT | flags::CREDIT };
        AbortOnDrop { router, header, why }
    }

    fn send(&self) {
        let body = codec::encode_value(self.why).unwrap_or_default();
        // Never waits: a drop cannot.
        let _ = self.router.push_frame(Frame { header: self.header, body });
    }
}

/// Sends the bytes of one stream, waiting for credit when the window is used up.
#[derive(Debug)]
pub struct ByteSender {
    router: Router,
    /// Template for data frames: addressing is fixed for the stream's life.
    data: Header,
    shared: Arc<Shared>,
    idle: Duration,
    finished: bool,
    /// Sent to the receiver if this end is dropped before the stream is over (caller side).
    abort: Option<AbortOnDrop>,
    /// The call's reply handle, when this end takes the answer (an upload's caller).
    call: Option<PendingGuard>,
}

impl ByteSender {
    /// `abort`: tell the receiver if this end is dropped unfinished (the caller's side of an
    /// upload; the handler's side of a download ends with its answer instead).
    pub(crate) fn new(router: Router, data: Header, shared: Arc<Shared>, abort: bool) -> Self {
        let idle = router.config().call_timeout;
        let abort = abort.then(|| AbortOnDrop::new(router.clone(), data, true, "the sender gave up"));
        ByteSender { router, data, shared, idle, finished: false, abort, call: None }
    }

    pub(crate) fn with_call(mut self, guard: PendingGuard) -> Self {
        self.call = Some(guard);
        self
    }

    /// Send `bytes`, in chunks of at most [`CHUNK`], waiting for credit as needed.
    pub async fn send(&mut self, mut bytes: Bytes) -> Result<(), StreamError> {
        if self.finished {
            return Err(StreamError::Closed);
        }
        while !bytes.is_empty() {
            let piece = bytes.split_to(bytes.len().min(CHUNK));
            self.take_credit(cost(piece.len())).await?;
            self.router.send_frame(Frame { header: self.data, body: piece }).await?;
        }
        Ok(())
    }

    /// Wait until the stream can carry nothing more: the receiver gave up, the call was answered,
    /// or the link went. Says why. For a handler that waits on something else between sends (a
    /// quiet process), to notice a caller that has gone.
    pub async fn closed(&self) -> StreamError {
        loop {
            if let Some(e) = Shared::send_closed(&mut self.shared.lock()) {
                return e;
            }
            self.shared.wake.notified().await;
        }
    }

    async fn take_credit(&mut self, units: u64) -> Result<(), StreamError> {
        loop {
            {
                let mut s = self.shared.lock();
                if let Some(e) = Shared::send_closed(&mut s) {
                    return Err(e);
                }
                if s.credit >= units {
                    s.credit -= units;
                    return Ok(());
                }
            }
            self.shared.changed(self.idle).await?;
        }
    }

    /// Say this side's bytes are complete (the caller's side of an upload or a duplex call; a
    /// handler's bytes end with its answer). Sending after this fails.
    pub async fn finish(&mut self) -> Result<(), StreamError> {
        if !self.finished {
            self.finished = true;
            let mut header = self.data;
            header.flags = flags::END;
            self.router.send_frame(Frame { header, body: Bytes::new() }).await?;
        }
        Ok(())
    }

    /// The caller's side of an upload ([`Router::open_upload`]): end the bytes and wait for the
    /// handler's answer. A handler that stopped taking them early says why in its answer.
    pub async fn answer<R: Request>(mut self) -> Result<R::Response, CallError> {
        let dst = self.data.dst;
        if self.call.is_none() {
            let reason = "only the caller's end of an upload takes the answer".into();
            return Err(CallError::Stream { handler: R::NAME, reason });
        }
        match self.finish().await {
            Ok(()) | Err(StreamError::Closed | StreamError::Aborted(_)) => {}
            Err(e) => return Err(e.into_call_error(dst, R::NAME)),
        }
        let frame = self.into_reply().await.map_err(|e| e.into_call_error(dst, R::NAME))?;
        decode_reply::<R>(&frame)
    }

    /// The handler's answer, once it comes.
    async fn into_reply(mut self) -> Result<Frame, StreamError> {
        loop {
            {
                let mut s = self.shared.lock();
                if let Some(reply) = s.reply.take() {
                    self.abort = None;
                    return Ok(reply);
                }
                // An abort is followed by the answer saying why; a failure is final.
                if let Some(End::Failed(_)) = s.end {
                    if let Some(e) = Shared::ended(&mut s) {
                        return Err(e);
                    }
                }
            }
            self.shared.changed(self.idle).await?;
        }
    }
}

impl Drop for ByteSender {
    fn drop(&mut self) {
        let Some(abort) = &self.abort else { return };
        if self.call.is_none() {
            // A duplex caller's sender: the call is its receiver's; dropping this one only ends
            // this side's bytes, as closing a pipe does. Never waits: a drop cannot.
            if !self.finished {
                let header = Header { flags: flags::END, ..self.data };
                let _ = self.router.push_frame(Frame { header, body: Bytes::new() });
            }
        } else if self.shared.lock().reply.is_none() {
            abort.send();
        }
    }
}

/// Receives the bytes of one stream, granting credit as they are taken.
#[derive(Debug)]
pub struct ByteReceiver {
    router: Router,
    /// Template for credit frames back to the sender.
    credit: Header,
    shared: Arc<Shared>,
    idle: Duration,
    /// Units taken since credit was last granted.
    taken: u64,
    done: bool,
    abort: AbortOnDrop,
    /// The call's reply handle, when this end takes the answer (a download's or a duplex caller).
    call: Option<PendingGuard>,
}

impl ByteReceiver {
    pub(crate) fn new(router: Router, credit: Header, shared: Arc<Shared>) -> Self {
        let idle = router.config().call_timeout;
        let abort = AbortOnDrop::new(router.clone(), credit, false, "the receiver went away");
        ByteReceiver { router, credit, shared, idle, taken: 0, done: false, abort, call: None }
    }

    pub(crate) fn with_call(mut self, guard: PendingGuard) -> Self {
        self.call = Some(guard);
        self
    }

    /// The next chunk, or `None` once the stream has ended.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, StreamError> {
        loop {
            let next = {
                let mut s = self.shared.lock();
                match s.data.pop_front() {
                    Some(chunk) => Some(Ok(Some(chunk))),
                    None => match Shared::ended(&mut s) {
                        Some(e) => Some(Err(e)),
                        None if s.end.is_some() => Some(Ok(None)),
                        None => None,
                    },
                }
            };
            match next {
                Some(Ok(Some(chunk))) => {
                    self.taken += cost(chunk.len());
                    if self.taken >= WINDOW / 4 {
                        self.grant().await?;
                    }
                    return Ok(Some(chunk));
                }
                Some(end) => {
                    self.done = true;
                    return end;
                }
                None => self.shared.changed(self.idle).await?,
            }
        }
    }

    /// Read the whole stream, discarding it, and return its length.
    pub async fn drain(&mut self) -> Result<u64, StreamError> {
        let mut n = 0;
        while let Some(chunk) = self.recv().await? {
            n += chunk.len() as u64;
        }
        Ok(n)
    }

    async fn grant(&mut self) -> Result<(), StreamError> {
        let body = codec::encode_value(&self.taken).map_err(|e| StreamError::Protocol(e.to_string()))?;
        {
            // Counted out before the grant leaves: the sender cannot use it before this.
            let mut s = self.shared.lock();
            s.unacked = s.unacked.saturating_sub(self.taken);
        }
        self.taken = 0;
        self.router.send_frame(Frame { header: self.credit, body }).await?;
        Ok(())
    }

    /// The caller's side of a download or a duplex call: the handler's answer, after the bytes not
    /// read yet (read and dropped).
    pub async fn answer<R: Request>(mut self) -> Result<R::Response, CallError> {
        let dst = self.credit.dst;
        if self.call.is_none() {
            let reason = "only the caller's end of a download takes the answer".into();
            return Err(CallError::Stream { handler: R::NAME, reason });
        }
        self.drain().await.map_err(|e| e.into_call_error(dst, R::NAME))?;
        let reply = self.shared.lock().reply.take();
        let reason = || "the stream ended without an answer".to_owned();
        let frame = reply.ok_or_else(|| CallError::Stream { handler: R::NAME, reason: reason() })?;
        decode_reply::<R>(&frame)
    }
}

impl Drop for ByteReceiver {
    fn drop(&mut self) {
        if !self.done {
            self.abort.send();
        }
    }
}

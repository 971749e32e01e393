//! Calls this context makes: reply handles and the calls waiting on them, plain calls, calls with
//! a byte stream, and the answers that arrive for them.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::oneshot;
use tracing::warn;

use super::links::{CloseReason, LinkId};
use super::Router;
use crate::call::{self, Request};
use crate::codec;
use crate::error::{CallError, RemoteError};
use crate::frame::{flags, handles, Frame, Header};
use crate::stream::{ByteReceiver, ByteSender, Shared, StreamError, CHUNK, WINDOW};
use crate::ContextId;

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

pub(super) struct Pending {
    pub(super) via: LinkId,
    pub(super) dst: ContextId,
    pub(super) tx: PendingTx,
}

pub(super) enum PendingTx {
    Once(oneshot::Sender<Result<Frame, CallError>>),
    Stream(Arc<Shared>),
}

/// A call's reply handle, removed when the call is over or dropped. The end of a stream call that
/// receives the answer owns it.
pub(crate) struct PendingGuard {
    router: Router,
    handle: u32,
}

impl fmt::Debug for PendingGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PendingGuard({})", self.handle)
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.router.inner.pending.remove(&self.handle);
    }
}

/// A call's answer: the response, or the [`RemoteError`] the handler's side sent.
pub(crate) fn decode_reply<R: Request>(frame: &Frame) -> Result<R::Response, CallError> {
    if frame.header.flags & flags::ERROR != 0 {
        let err = codec::decode_value::<RemoteError>(&frame.body)
            .map_err(|e| CallError::Decode { handler: R::NAME, reason: format!("error answer: {e}") })?;
        return Err(CallError::Remote(Box::new(err)));
    }
    codec::decode_value(&frame.body).map_err(|e| CallError::Decode { handler: R::NAME, reason: e.to_string() })
}

impl Router {
    /// Call `req` in context `dst` and wait for its answer, at most
    /// [`RouterConfig::call_timeout`](crate::RouterConfig::call_timeout).
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
    /// registered with [`Handlers::on_upload`](crate::Handlers::on_upload). Memory use is bounded
    /// by the flow-control window, whatever the size of the data. Dropping the future aborts the
    /// stream on the far side too.
    pub async fn upload<R, S>(&self, dst: ContextId, req: &R, mut reader: S) -> Result<R::Response, CallError>
    where
        R: Request,
        S: AsyncRead + Unpin,
    {
        let mut tx = self.open_upload(dst, req).await?;
        let stream_err = |reason: String| CallError::Stream { handler: R::NAME, reason };
        loop {
            let mut chunk = BytesMut::with_capacity(CHUNK);
            let n = reader.read_buf(&mut chunk).await.map_err(|e| stream_err(format!("reading the upload: {e}")))?;
            if n == 0 {
                break;
            }
            match tx.send(chunk.freeze()).await {
                Ok(()) => {}
                // The handler answered, or stopped taking data: its answer says why.
                Err(StreamError::Closed | StreamError::Aborted(_)) => break,
                Err(e) => return Err(e.into_call_error(dst, R::NAME)),
            }
        }
        tx.answer::<R>().await
    }

    /// Call `req` in `dst` and write the bytes its handler (registered with
    /// [`Handlers::on_download`](crate::Handlers::on_download)) sends to `writer`, with bounded
    /// memory. Dropping the future aborts the stream on the far side too.
    pub async fn download<R, W>(&self, dst: ContextId, req: &R, mut writer: W) -> Result<R::Response, CallError>
    where
        R: Request,
        W: AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt;
        let mut rx = self.open_download(dst, req).await?;
        let stream_err = |reason: String| CallError::Stream { handler: R::NAME, reason };
        while let Some(chunk) = rx.recv().await.map_err(|e| e.into_call_error(dst, R::NAME))? {
            writer.write_all(&chunk).await.map_err(|e| stream_err(format!("writing the download: {e}")))?;
        }
        writer.flush().await.map_err(|e| stream_err(format!("writing the download: {e}")))?;
        rx.answer::<R>().await
    }

    /// Call `req` in `dst` (an upload handler) and return the end that sends its bytes; the answer
    /// comes with [`ByteSender::answer`]. Dropping the sender before that aborts the call.
    pub async fn open_upload<R: Request>(&self, dst: ContextId, req: &R) -> Result<ByteSender, CallError> {
        let (header, shared, guard) = self.stream_call(dst, req, flags::UPLOAD).await?;
        Ok(ByteSender::new(self.clone(), Header { flags: flags::DATA, ..header }, shared, true).with_call(guard))
    }

    /// Call `req` in `dst` (a download handler) and return the end that receives its bytes; the
    /// answer comes with [`ByteReceiver::answer`]. Dropping the receiver before that aborts the call.
    pub async fn open_download<R: Request>(&self, dst: ContextId, req: &R) -> Result<ByteReceiver, CallError> {
        let (header, shared, guard) = self.stream_call(dst, req, flags::DOWNLOAD).await?;
        Ok(ByteReceiver::new(self.clone(), Header { flags: flags::CREDIT, ..header }, shared).with_call(guard))
    }

    /// Call `req` in `dst`, whose handler was registered with
    /// [`Handlers::on_duplex`](crate::Handlers::on_duplex): bytes go both ways at once, each way
    /// with its own credit. The sender ends this side's bytes ([`ByteSender::finish`]); the receiver
    /// takes the handler's, then its answer ([`ByteReceiver::answer`]). Dropping either end before
    /// the answer aborts the call.
    pub async fn open_duplex<R: Request>(
        &self,
        dst: ContextId,
        req: &R,
    ) -> Result<(ByteSender, ByteReceiver), CallError> {
        let (header, shared, guard) = self.stream_call(dst, req, flags::UPLOAD | flags::DOWNLOAD).await?;
        let tx = ByteSender::new(self.clone(), Header { flags: flags::DATA, ..header }, shared.clone(), true);
        let rx = ByteReceiver::new(self.clone(), Header { flags: flags::CREDIT, ..header }, shared).with_call(guard);
        Ok((tx, rx))
    }

    /// Send a call that comes with a stream (`kind`: UPLOAD, DOWNLOAD or both). Returns the header
    /// this side's stream frames carry to the callee (flags to be set), the stream's state, and
    /// the reply handle's guard.
    async fn stream_call<R: Request>(
        &self,
        dst: ContextId,
        req: &R,
        kind: u32,
    ) -> Result<(Header, Arc<Shared>, PendingGuard), CallError> {
        let body = call::encode_call(req)?;
        let shared = Shared::new(WINDOW);
        let (handle, guard) = self.expect_reply(dst, PendingTx::Stream(shared.clone()))?;
        self.send_call(dst, body, handle, kind).await?;
        let header = Header { dst, src: self.id(), handle: handles::STREAM, reply_to: handle, flags: 0 };
        Ok((header, shared, guard))
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
    fn expect_reply(&self, dst: ContextId, tx: PendingTx) -> Result<(u32, PendingGuard), CallError> {
        let via = self.link_for(dst).ok_or(CallError::NoRoute(dst))?;
        let handle = self.alloc_handle();
        self.inner.pending.insert(handle, Pending { via, dst, tx });
        let guard = PendingGuard { router: self.clone(), handle };
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

    /// A frame for one of this context's reply handles: the answer to a call, or stream frames of
    /// one. Only the context that was called may send them.
    pub(super) fn answer(&self, frame: Frame, from: LinkId) -> Result<(), CloseReason> {
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
}

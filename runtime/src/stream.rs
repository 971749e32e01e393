//! Byte streams that belong to a call, with credit-based flow control.
//!
//! Bulk data never travels as one frame: a [`ByteSender`] cuts it into chunks of at most [`CHUNK`]
//! bytes and may have at most [`WINDOW`] bytes unacknowledged. The [`ByteReceiver`] grants credit back
//! as its consumer takes chunks, so a slow consumer slows the producer down instead of making
//! anyone buffer without limit.

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::call::{self, CallError};
use crate::frame::{flags, Frame, Header};
use crate::Router;

/// Largest chunk of stream data in one frame.
pub const CHUNK: usize = 256 << 10;
/// Bytes a sender may have in flight before it waits for credit.
pub const WINDOW: u64 = 4 << 20;

/// What arrives for a stream: frames, or the reason none will come any more.
pub(crate) type StreamItem = Result<Frame, CallError>;

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
}

impl StreamError {
    pub(crate) fn into_call_error(self, handler: &'static str) -> CallError {
        match self {
            StreamError::Call(e) => e,
            other => CallError::Stream { handler, reason: other.to_string() },
        }
    }
}

/// Sends the bytes of one stream, waiting for credit when the window is used up.
#[derive(Debug)]
pub struct ByteSender {
    router: Router,
    /// Template for data frames: addressing is fixed for the stream's life.
    data: Header,
    credit: u64,
    rx: mpsc::UnboundedReceiver<StreamItem>,
    /// An answer to the call that arrived while sending (caller side of an upload).
    reply: Option<Frame>,
    finished: bool,
}

impl ByteSender {
    pub(crate) fn new(router: Router, data: Header, rx: mpsc::UnboundedReceiver<StreamItem>, credit: u64) -> Self {
        ByteSender { router, data, credit, rx, reply: None, finished: false }
    }

    /// Send `bytes`, in chunks of at most [`CHUNK`], waiting for credit as needed.
    pub async fn send(&mut self, mut bytes: Bytes) -> Result<(), StreamError> {
        if self.finished || self.reply.is_some() {
            return Err(StreamError::Closed);
        }
        while !bytes.is_empty() {
            let piece = bytes.split_to(bytes.len().min(CHUNK));
            while self.credit < piece.len() as u64 {
                self.wait_credit().await?;
            }
            self.credit -= piece.len() as u64;
            self.router.send_frame(Frame { header: self.data, body: piece }).await?;
        }
        Ok(())
    }

    /// Say the stream is complete. Only uploads need this: a download ends with the handler's answer.
    pub(crate) async fn finish(&mut self) -> Result<(), StreamError> {
        if !self.finished && self.reply.is_none() {
            self.finished = true;
            let mut header = self.data;
            header.flags = flags::END;
            self.router.send_frame(Frame { header, body: Bytes::new() }).await?;
        }
        Ok(())
    }

    async fn wait_credit(&mut self) -> Result<(), StreamError> {
        let frame = match self.rx.recv().await {
            Some(item) => item?,
            None => return Err(StreamError::Closed),
        };
        let f = frame.header.flags;
        if f & flags::REPLY != 0 {
            self.reply = Some(frame);
            return Err(StreamError::Closed);
        }
        if f & flags::ABORT != 0 {
            return Err(StreamError::Aborted(call::decode_value(&frame.body).unwrap_or_default()));
        }
        if f & flags::CREDIT != 0 {
            let grant: u64 = call::decode_value(&frame.body)
                .map_err(|e| StreamError::Protocol(format!("undecodable credit: {e}")))?;
            self.credit = self.credit.saturating_add(grant);
        }
        Ok(())
    }

    /// Caller side of an upload: the handler's answer, skipping credit still on its way.
    pub(crate) async fn into_reply(mut self) -> Result<Frame, CallError> {
        loop {
            if let Some(frame) = self.reply.take() {
                return Ok(frame);
            }
            match self.wait_credit().await {
                Ok(()) => {}
                Err(StreamError::Closed) if self.reply.is_some() => {}
                Err(e) => return Err(e.into_call_error("upload")),
            }
        }
    }
}

/// Receives the bytes of one stream, granting credit as they are taken.
#[derive(Debug)]
pub struct ByteReceiver {
    router: Router,
    /// Template for credit frames back to the sender.
    credit: Header,
    rx: mpsc::UnboundedReceiver<StreamItem>,
    /// Bytes taken since credit was last granted.
    taken: u64,
    /// Bytes received and not yet covered by a grant: more than [`WINDOW`] is a violation.
    outstanding: u64,
    reply: Option<Frame>,
    done: bool,
}

impl ByteReceiver {
    pub(crate) fn new(router: Router, credit: Header, rx: mpsc::UnboundedReceiver<StreamItem>) -> Self {
        ByteReceiver { router, credit, rx, taken: 0, outstanding: 0, reply: None, done: false }
    }

    /// The next chunk, or `None` once the stream has ended.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, StreamError> {
        while !self.done {
            let frame = match self.rx.recv().await {
                Some(item) => item?,
                None => return Err(StreamError::Aborted("the stream ended without its end marker".into())),
            };
            let f = frame.header.flags;
            if f & flags::DATA != 0 {
                let n = frame.body.len() as u64;
                self.outstanding += n;
                if self.outstanding > WINDOW {
                    return Err(StreamError::Protocol(format!(
                        "{} bytes sent past a window of {WINDOW}",
                        self.outstanding
                    )));
                }
                self.taken += n;
                if self.taken >= WINDOW / 4 {
                    self.grant().await?;
                }
                return Ok(Some(frame.body));
            } else if f & flags::END != 0 {
                self.done = true;
            } else if f & flags::REPLY != 0 {
                self.reply = Some(frame);
                self.done = true;
            } else if f & flags::ABORT != 0 {
                return Err(StreamError::Aborted(call::decode_value(&frame.body).unwrap_or_default()));
            }
        }
        Ok(None)
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
        let body = call::encode_value(&self.taken).map_err(|e| StreamError::Protocol(e.to_string()))?;
        self.outstanding -= self.taken;
        self.taken = 0;
        self.router.send_frame(Frame { header: self.credit, body }).await?;
        Ok(())
    }

    pub(crate) fn take_reply(&mut self) -> Option<Frame> {
        self.reply.take()
    }
}

//! Typed streams: a call that yields items to its caller, or takes items from it, with the byte
//! streams' flow control (Mitogen's and execnet's channels, typed).
//!
//! A request says what its stream carries: [`Yields`] (the handler sends `Item`s to the caller)
//! or [`Takes`] (the caller sends them to the handler). The handler is registered with
//! [`Handlers::on_yields`] or [`Handlers::on_takes`]; the caller opens the call with
//! [`Router::items`] or [`Router::feed`]. Either end may also wrap the ends of a byte stream
//! ([`ItemSender::new`], [`ItemReceiver::new`]), as a duplex call does for one of its ways.
//!
//! On the wire each item is a record in the call's byte stream: its length (`u32`, little-endian)
//! and its msgpack encoding. A receiver holds at most one record beyond what the window lets in,
//! and refuses one longer than its limit ([`MAX_ITEM`] unless set) before buffering it.

use std::future::Future;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::call::{HandlerError, Request};
use crate::error::CallError;
use crate::stream::{ByteReceiver, ByteSender, StreamError, CHUNK};
use crate::{ContextId, Cx, Handlers, Router};

/// Longest item a receiver takes, encoded, unless told otherwise ([`ItemReceiver::with_max_item`]).
pub const MAX_ITEM: usize = 16 << 20;

/// A request whose handler sends its caller a stream of `Item`s before it answers.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// struct Count(u32);
///
/// impl hypha_runtime::Request for Count {
///     type Response = ();
///     const NAME: &'static str = "example.count";
/// }
/// impl hypha_runtime::items::Yields for Count {
///     type Item = u32;
/// }
/// ```
pub trait Yields: Request {
    /// What the stream carries.
    type Item: Serialize + DeserializeOwned + Send + 'static;
}

/// A request whose handler takes a stream of `Item`s from its caller, then answers.
pub trait Takes: Request {
    /// What the stream carries.
    type Item: Serialize + DeserializeOwned + Send + 'static;
}

/// Sends typed items over one byte stream, waiting for credit when the receiver is behind.
#[derive(Debug)]
pub struct ItemSender<T> {
    bytes: ByteSender,
    buf: BytesMut,
    _item: PhantomData<fn(T)>,
}

impl<T: Serialize> ItemSender<T> {
    /// Send items over `bytes`.
    pub fn new(bytes: ByteSender) -> Self {
        ItemSender { bytes, buf: BytesMut::new(), _item: PhantomData }
    }

    /// Send one item.
    pub async fn send(&mut self, item: &T) -> Result<(), StreamError> {
        self.send_all(std::iter::once(item)).await
    }

    /// Send several items, in as few frames as their size allows (many small items share one).
    pub async fn send_all<'a>(&mut self, items: impl IntoIterator<Item = &'a T>) -> Result<(), StreamError>
    where
        T: 'a,
    {
        for item in items {
            let start = self.buf.len();
            self.buf.put_u32_le(0);
            let mut w = (&mut self.buf).writer();
            rmp_serde::encode::write(&mut w, item)
                .map_err(|e| StreamError::Protocol(format!("encoding an item: {e}")))?;
            let len = self.buf.len() - start - 4;
            let len = u32::try_from(len).map_err(|_| StreamError::Protocol(format!("an item of {len} bytes")))?;
            self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
            if self.buf.len() >= CHUNK {
                self.flush().await?;
            }
        }
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), StreamError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let batch = self.buf.split().freeze();
        self.bytes.send(batch).await
    }

    /// Wait until the stream can carry nothing more (the receiver gave up, or the link went).
    pub async fn closed(&self) -> StreamError {
        self.bytes.closed().await
    }

    /// The byte stream underneath (to finish it, or take the answer).
    pub fn into_inner(self) -> ByteSender {
        self.bytes
    }
}

/// Receives typed items from one byte stream, granting credit as they are taken.
#[derive(Debug)]
pub struct ItemReceiver<T> {
    bytes: ByteReceiver,
    buf: BytesMut,
    max_item: usize,
    _item: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> ItemReceiver<T> {
    /// Receive items from `bytes`.
    pub fn new(bytes: ByteReceiver) -> Self {
        ItemReceiver { bytes, buf: BytesMut::new(), max_item: MAX_ITEM, _item: PhantomData }
    }

    /// Refuse items longer than `max` bytes, encoded (a stream that sends one fails).
    pub fn with_max_item(mut self, max: usize) -> Self {
        self.max_item = max;
        self
    }

    /// The next item, or `None` once the stream has ended. A record that is too long, cut short
    /// or does not decode as `T` ends the stream with [`StreamError::Protocol`].
    pub async fn next(&mut self) -> Result<Option<T>, StreamError> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
                if len > self.max_item {
                    return Err(self.broken(format!("an item of {len} bytes, above the limit of {}", self.max_item)));
                }
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    let record = self.buf.split_to(len);
                    return match rmp_serde::from_slice(&record) {
                        Ok(item) => Ok(Some(item)),
                        Err(e) => {
                            Err(self.broken(format!("an item does not decode as {}: {e}", std::any::type_name::<T>())))
                        }
                    };
                }
            }
            match self.bytes.recv().await? {
                Some(chunk) => self.take(chunk),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(self.broken(format!("the stream ended inside an item ({} bytes)", self.buf.len()))),
            }
        }
    }

    fn take(&mut self, chunk: Bytes) {
        self.buf.extend_from_slice(&chunk);
    }

    fn broken(&mut self, why: String) -> StreamError {
        self.buf = BytesMut::new();
        StreamError::Protocol(why)
    }

    /// The byte stream underneath (to take the answer).
    pub fn into_inner(self) -> ByteReceiver {
        self.bytes
    }
}

/// The caller's end of a [`Yields`] call ([`Router::items`]): its items, then its answer.
/// Dropping it before the answer aborts the call.
#[derive(Debug)]
pub struct Items<R: Yields> {
    rx: ItemReceiver<R::Item>,
    at: Callee,
}

impl<R: Yields> Items<R> {
    /// The next item, or `None` once the handler has sent its last.
    pub async fn next(&mut self) -> Result<Option<R::Item>, CallError> {
        match self.rx.next().await {
            Ok(item) => Ok(item),
            Err(e) => Err(self.at.locate(e.into_call_error(self.at.dst, R::NAME))),
        }
    }

    /// The handler's answer (items not read yet are read and dropped).
    pub async fn answer(mut self) -> Result<R::Response, CallError> {
        while self.next().await?.is_some() {}
        let answer = self.rx.into_inner().answer::<R>().await;
        answer.map_err(|e| self.at.locate(e))
    }

    /// Not public API: the errors name this path of contexts (the caller's `Context` sets it).
    #[doc(hidden)]
    pub fn at_path(mut self, path: String) -> Self {
        self.at.path = Some(path);
        self
    }
}

/// The caller's end of a [`Takes`] call ([`Router::feed`]): send items, then take the answer.
/// Dropping it before the answer aborts the call.
#[derive(Debug)]
pub struct Feed<R: Takes> {
    tx: Option<ItemSender<R::Item>>,
    at: Callee,
}

/// The context a stream call went to, and the path of contexts its errors name.
#[derive(Debug)]
struct Callee {
    dst: ContextId,
    path: Option<String>,
}

impl Callee {
    /// A remote error from the context called names the path it came through, if known.
    fn locate(&self, e: CallError) -> CallError {
        match &self.path {
            Some(path) => e.located(self.dst, || path.clone()),
            None => e,
        }
    }
}

impl<R: Takes> Feed<R> {
    /// Send one item, waiting while the handler is behind. A handler that stopped taking items
    /// (it answered, or failed) makes this fail with its answer's error.
    pub async fn send(&mut self, item: &R::Item) -> Result<(), CallError> {
        self.send_all(std::iter::once(item)).await
    }

    /// Send several items, in as few frames as their size allows.
    pub async fn send_all<'a>(&mut self, items: impl IntoIterator<Item = &'a R::Item>) -> Result<(), CallError>
    where
        R::Item: 'a,
    {
        let Some(tx) = self.tx.as_mut() else {
            return Err(CallError::Stream { handler: R::NAME, reason: "the handler has answered".into() });
        };
        match tx.send_all(items).await {
            Ok(()) => Ok(()),
            Err(StreamError::Closed | StreamError::Aborted(_)) => {
                // The handler stopped taking items: its answer says why.
                let answer = self.take_answer().await;
                Err(answer.err().unwrap_or_else(|| CallError::Stream {
                    handler: R::NAME,
                    reason: "the handler answered before taking every item".into(),
                }))
            }
            Err(e) => Err(self.at.locate(e.into_call_error(self.at.dst, R::NAME))),
        }
    }

    /// Say the items are complete, and wait for the handler's answer.
    pub async fn answer(mut self) -> Result<R::Response, CallError> {
        self.take_answer().await
    }

    async fn take_answer(&mut self) -> Result<R::Response, CallError> {
        let Some(tx) = self.tx.take() else {
            return Err(CallError::Stream { handler: R::NAME, reason: "the answer was taken already".into() });
        };
        let answer = tx.into_inner().answer::<R>().await;
        answer.map_err(|e| self.at.locate(e))
    }

    /// Not public API: the errors name this path of contexts (the caller's `Context` sets it).
    #[doc(hidden)]
    pub fn at_path(mut self, path: String) -> Self {
        self.at.path = Some(path);
        self
    }
}

impl Router {
    /// Call `req` in `dst` and receive the items its handler (registered with
    /// [`Handlers::on_yields`]) sends, as they come; then its answer ([`Items::answer`]).
    pub async fn items<R: Yields>(&self, dst: ContextId, req: &R) -> Result<Items<R>, CallError> {
        let rx = ItemReceiver::new(self.open_download(dst, req).await?);
        Ok(Items { rx, at: Callee { dst, path: None } })
    }

    /// Call `req` in `dst` and send its handler (registered with [`Handlers::on_takes`]) items,
    /// with [`Feed::send`]; then take its answer ([`Feed::answer`]).
    pub async fn feed<R: Takes>(&self, dst: ContextId, req: &R) -> Result<Feed<R>, CallError> {
        let tx = ItemSender::new(self.open_upload(dst, req).await?);
        Ok(Feed { tx: Some(tx), at: Callee { dst, path: None } })
    }
}

impl Handlers {
    /// Register `f` as the handler for `R`, called with a sender for the items its caller
    /// receives ([`Router::items`]). The stream ends when `f` returns.
    pub fn on_yields<R, F, Fut, E>(self, f: F) -> Self
    where
        R: Yields,
        F: Fn(R, Cx, ItemSender<R::Item>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Response, E>> + Send + 'static,
        E: Into<HandlerError> + 'static,
    {
        self.on_download::<R, _, _, _>(move |req, cx, tx| f(req, cx, ItemSender::new(tx)))
    }

    /// Register `f` as the handler for `R`, called with the items its caller sends
    /// ([`Router::feed`]).
    pub fn on_takes<R, F, Fut, E>(self, f: F) -> Self
    where
        R: Takes,
        F: Fn(R, Cx, ItemReceiver<R::Item>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Response, E>> + Send + 'static,
        E: Into<HandlerError> + 'static,
    {
        self.on_upload::<R, _, _, _>(move |req, cx, rx| f(req, cx, ItemReceiver::new(rx)))
    }
}

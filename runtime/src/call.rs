//! Typed calls: request types and the handler registry. The errors a call can end in are defined
//! in `error.rs` and re-exported here.
//!
//! A request type names its response type and a stable name ([`Request`]). Both ends of a stream run
//! the same binary, so registering a handler once in [`Handlers`] makes it exist in every context.
//!
//! A call's body is two msgpack values back to back: the handler's name (a msgpack string) and the
//! request. The reply's body is the response, or a [`RemoteError`] when [`crate::frame::flags::ERROR`]
//! is set.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::encode_value;
use crate::kind::{ErrorKind, KindedError};
use crate::stream::{ByteReceiver, ByteSender};
use crate::{ContextId, Router};

pub use crate::error::{CallError, RemoteError, RemoteErrorKind};

/// A typed request: its response type and the stable name its handler is registered under.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// struct Add(i64, i64);
///
/// impl hypha_runtime::Request for Add {
///     type Response = i64;
///     const NAME: &'static str = "example.add";
/// }
/// ```
pub trait Request: Serialize + DeserializeOwned + Send + std::fmt::Debug + 'static {
    /// What the handler answers with.
    type Response: Serialize + DeserializeOwned + Send + std::fmt::Debug + 'static;
    /// The handler's name; the same in every copy of the binary. At most 255 bytes. Names starting
    /// with `hypha.` are reserved for the built-in handlers.
    const NAME: &'static str;
}

/// Liveness probe answered by every context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping;

impl Request for Ping {
    type Response = ();
    const NAME: &'static str = "hypha.ping";
}

/// What a handler learns about the call it serves, and how it calls onwards.
///
/// Handler code reaches other contexts only through calls: it cannot send raw frames or change
/// routes, and whoever it calls judges the call by where it came from.
#[derive(Clone, Debug)]
pub struct Cx {
    router: Router,
    caller: ContextId,
}

impl Cx {
    /// Not public API: hypha's own crates build one per call.
    #[doc(hidden)]
    pub fn new(router: Router, caller: ContextId) -> Self {
        Cx { router, caller }
    }

    /// The context that sent the call (checked: the frame came from where that context is).
    pub fn caller(&self) -> ContextId {
        self.caller
    }

    /// The id of the context the handler runs in.
    pub fn id(&self) -> ContextId {
        self.router.id()
    }

    /// Call `req` in context `dst` (which judges whether this context may).
    pub async fn call<R: Request>(&self, dst: ContextId, req: &R) -> Result<R::Response, CallError> {
        self.router.call(dst, req).await
    }

    /// [`Cx::call`], waiting at most `timeout` for the answer.
    pub async fn call_within<R: Request>(
        &self,
        dst: ContextId,
        req: &R,
        timeout: std::time::Duration,
    ) -> Result<R::Response, CallError> {
        self.router.call_within(dst, req, timeout).await
    }

    /// Send `req` to context `dst` without waiting for an answer.
    pub async fn send<R: Request>(&self, dst: ContextId, req: &R) -> Result<(), CallError> {
        self.router.send(dst, req).await
    }

    /// Not public API: hypha's own crates use the router to start children from handlers.
    #[doc(hidden)]
    pub fn router(&self) -> &Router {
        &self.router
    }
}

/// The error type handlers return: anything that converts into a boxed error, such as an
/// `anyhow::Error`, an `io::Error` or a `String`. Its `source()` chain travels to the caller.
pub type HandlerError = Box<dyn StdError + Send + Sync + 'static>;

/// A failure inside a handler, before the dispatcher adds where it happened.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) kind: RemoteErrorKind,
    pub(crate) message: String,
    pub(crate) causes: Vec<String>,
    pub(crate) error_kind: Option<ErrorKind>,
}

impl Failure {
    pub(crate) fn new(kind: RemoteErrorKind, message: impl Into<String>) -> Self {
        Failure { kind, message: message.into(), causes: Vec::new(), error_kind: None }
    }

    fn from_error(err: HandlerError) -> Self {
        let message = err.to_string();
        let mut causes: Vec<String> = Vec::new();
        let mut next = err.source();
        while let Some(cause) = next {
            // An error that prints its source already (`{path}: {source}`) does not say it twice.
            let text = cause.to_string();
            if !causes.last().unwrap_or(&message).ends_with(&text) {
                causes.push(text);
            }
            next = cause.source();
        }
        let error_kind = match (err.downcast_ref::<KindedError>(), err.downcast_ref::<CallError>()) {
            (Some(e), _) => Some(e.kind()),
            (None, Some(e)) => Some(e.kind()),
            (None, None) => None,
        };
        Failure { kind: RemoteErrorKind::Handler, message, causes, error_kind }
    }

    fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-string payload".to_owned()
        };
        Failure::new(RemoteErrorKind::Panic, message)
    }
}

/// The byte stream, if any, that arrives with a call.
#[derive(Debug)]
pub(crate) enum StreamArg {
    None,
    Upload(ByteReceiver),
    Download(ByteSender),
    Duplex(ByteReceiver, ByteSender),
}

/// Which kind of stream a handler takes; the call's flags must agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    Plain,
    Upload,
    Download,
    Duplex,
}

pub(crate) type Reply = Result<Bytes, Failure>;
type BoxReply = Pin<Box<dyn Future<Output = Reply> + Send>>;
type Erased = dyn Fn(&[u8], Cx, StreamArg) -> BoxReply + Send + Sync;

pub(crate) struct Entry {
    pub(crate) shape: Shape,
    pub(crate) run: Box<Erased>,
}

/// The handlers a context serves, by name. Cheap to clone.
///
/// Build it once and give the same value to the agent entry point and to the runtime, so every copy
/// of the binary serves the same names. [`Ping`] is always registered.
#[derive(Clone)]
pub struct Handlers {
    map: Arc<HashMap<&'static str, Arc<Entry>>>,
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

impl Default for Handlers {
    fn default() -> Self {
        Self::new()
    }
}

impl Handlers {
    /// A registry holding the built-in handlers.
    pub fn new() -> Self {
        Handlers { map: Arc::new(HashMap::new()) }.on(|_: Ping, _| async { Ok::<_, HandlerError>(()) })
    }

    /// Register `f` as the handler for `R`.
    ///
    /// # Panics
    /// If a handler for `R::NAME` is already registered or the name is longer than 255 bytes: both
    /// are mistakes in the program, not in its input.
    pub fn on<R, F, Fut, E>(self, f: F) -> Self
    where
        R: Request,
        F: Fn(R, Cx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Response, E>> + Send + 'static,
        E: Into<HandlerError> + 'static,
    {
        self.insert::<R>(Shape::Plain, move |req, cx, _| Box::pin(respond::<R, _, _>(f(req, cx))))
    }

    /// Register `f` as the handler for `R`, called with the bytes the caller uploads
    /// (see `Context::upload`).
    pub fn on_upload<R, F, Fut, E>(self, f: F) -> Self
    where
        R: Request,
        F: Fn(R, Cx, ByteReceiver) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Response, E>> + Send + 'static,
        E: Into<HandlerError> + 'static,
    {
        self.insert::<R>(Shape::Upload, move |req, cx, stream| match stream {
            StreamArg::Upload(rx) => Box::pin(respond::<R, _, _>(f(req, cx, rx))),
            _ => Box::pin(async { Err(Failure::new(RemoteErrorKind::BadRequest, "expected an upload")) }),
        })
    }

    /// Register `f` as the handler for `R`, called with a sender for bytes the caller downloads
    /// (see `Context::download`). The stream ends when `f` returns.
    pub fn on_download<R, F, Fut, E>(self, f: F) -> Self
    where
        R: Request,
        F: Fn(R, Cx, ByteSender) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Response, E>> + Send + 'static,
        E: Into<HandlerError> + 'static,
    {
        self.insert::<R>(Shape::Download, move |req, cx, stream| match stream {
            StreamArg::Download(tx) => Box::pin(respond::<R, _, _>(f(req, cx, tx))),
            _ => Box::pin(async { Err(Failure::new(RemoteErrorKind::BadRequest, "expected a download")) }),
        })
    }

    /// Register `f` as the handler for `R`, called with both ends of a duplex call (see
    /// `Router::open_duplex`): the bytes the caller sends, and a sender for bytes back, each way
    /// with its own credit. The caller's bytes end when it says so; the handler's end when `f`
    /// returns.
    pub fn on_duplex<R, F, Fut, E>(self, f: F) -> Self
    where
        R: Request,
        F: Fn(R, Cx, ByteReceiver, ByteSender) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Response, E>> + Send + 'static,
        E: Into<HandlerError> + 'static,
    {
        self.insert::<R>(Shape::Duplex, move |req, cx, stream| match stream {
            StreamArg::Duplex(rx, tx) => Box::pin(respond::<R, _, _>(f(req, cx, rx, tx))),
            _ => Box::pin(async { Err(Failure::new(RemoteErrorKind::BadRequest, "expected a duplex call")) }),
        })
    }

    fn insert<R: Request>(
        mut self,
        shape: Shape,
        typed: impl Fn(R, Cx, StreamArg) -> BoxReply + Send + Sync + 'static,
    ) -> Self {
        assert!(R::NAME.len() <= 255, "handler name {:?} is longer than 255 bytes", R::NAME);
        let run = move |body: &[u8], cx: Cx, stream: StreamArg| -> BoxReply {
            match rmp_serde::from_slice::<R>(body) {
                Ok(req) => {
                    tracing::debug!(handler = R::NAME, caller = cx.caller(), args = %crate::logged::logged(&req), "call");
                    typed(req, cx, stream)
                }
                Err(e) => {
                    let msg = format!("request does not decode as {}: {e}", std::any::type_name::<R>());
                    Box::pin(async move { Err(Failure::new(RemoteErrorKind::BadRequest, msg)) })
                }
            }
        };
        let map = Arc::make_mut(&mut self.map);
        let entry = Arc::new(Entry { shape, run: Box::new(run) });
        assert!(map.insert(R::NAME, entry).is_none(), "handler {:?} registered twice", R::NAME);
        self
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Entry>> {
        self.map.get(name)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.map.keys().copied().collect();
        names.sort_unstable();
        names
    }
}

async fn respond<R, Fut, E>(fut: Fut) -> Reply
where
    R: Request,
    Fut: Future<Output = Result<R::Response, E>>,
    E: Into<HandlerError>,
{
    match fut.await {
        Ok(resp) => {
            tracing::debug!(handler = R::NAME, result = %crate::logged::logged(&resp), "answered");
            encode_value(&resp)
                .map_err(|e| Failure::new(RemoteErrorKind::Handler, format!("response does not encode: {e}")))
        }
        Err(e) => {
            let e: HandlerError = e.into();
            tracing::debug!(handler = R::NAME, error = %crate::logged::logged(&e.to_string()), "failed");
            Err(Failure::from_error(e))
        }
    }
}

/// Run `run` on `body`, turning a panic while building or polling the handler's future into a
/// [`Failure`] of kind [`RemoteErrorKind::Panic`].
pub(crate) async fn run_caught(entry: Arc<Entry>, body: Bytes, cx: Cx, stream: StreamArg) -> Reply {
    let fut = match catch_unwind(AssertUnwindSafe(|| (entry.run)(&body, cx, stream))) {
        Ok(fut) => fut,
        Err(payload) => return Err(Failure::from_panic(payload)),
    };
    CatchUnwind(fut).await
}

struct CatchUnwind(BoxReply);

impl Future for CatchUnwind {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Reply> {
        let fut = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => Poll::Ready(Err(Failure::from_panic(payload))),
        }
    }
}

/// A call body: the name as a msgpack string, then the request.
pub(crate) fn encode_call<R: Request>(req: &R) -> Result<Bytes, CallError> {
    let name = R::NAME.as_bytes();
    let mut w = BytesMut::with_capacity(64 + name.len()).writer();
    let buf = w.get_mut();
    if name.len() < 32 {
        buf.put_u8(0xa0 | name.len() as u8); // fixstr
    } else {
        buf.put_u8(0xd9); // str8; names are at most 255 bytes (checked at registration)
        buf.put_u8(name.len() as u8);
    }
    buf.put_slice(name);
    rmp_serde::encode::write(&mut w, req).map_err(|e| CallError::Encode { handler: R::NAME, reason: e.to_string() })?;
    Ok(w.into_inner().freeze())
}

/// Split a call body into the handler name and the request bytes.
pub(crate) fn split_call(body: &[u8]) -> Option<(&str, &[u8])> {
    let (&tag, rest) = body.split_first()?;
    let (len, rest) = match tag {
        0xa0..=0xbf => ((tag & 0x1f) as usize, rest),
        0xd9 => {
            let (&len, rest) = rest.split_first()?;
            (len as usize, rest)
        }
        _ => return None,
    };
    if rest.len() < len {
        return None;
    }
    let (name, req) = rest.split_at(len);
    Some((std::str::from_utf8(name).ok()?, req))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode_value;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Long(String);
    impl Request for Long {
        type Response = ();
        const NAME: &'static str = "a.handler.name.longer.than.thirty.one.bytes";
    }

    #[test]
    fn call_body_round_trip() {
        for body in [encode_call(&Ping).unwrap(), encode_call(&Long("x".into())).unwrap()] {
            let (name, req) = split_call(&body).expect("splits");
            assert!(name == Ping::NAME || name == Long::NAME);
            if name == Long::NAME {
                assert_eq!(decode_value::<Long>(req).unwrap(), Long("x".into()));
            }
        }
    }

    #[test]
    fn garbage_call_bodies_do_not_split() {
        assert_eq!(split_call(b""), None);
        assert_eq!(split_call(&[0xa5, b'a']), None);
        assert_eq!(split_call(&[0x01, 0x02]), None);
        assert_eq!(split_call(&[0xa2, 0xff, 0xfe]), None);
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn duplicate_names_are_a_programming_error() {
        let _ = Handlers::new().on(|_: Ping, _| async { Ok::<_, HandlerError>(()) });
    }

    #[test]
    fn a_handler_error_keeps_the_kind_it_was_given() {
        let kinded = KindedError::new(ErrorKind::Authentication, "refused");
        assert_eq!(Failure::from_error(Box::new(kinded)).error_kind, Some(ErrorKind::Authentication));
        let passed_on = CallError::Timeout { context: 2, handler: "x", after: std::time::Duration::ZERO };
        assert_eq!(Failure::from_error(Box::new(passed_on)).error_kind, Some(ErrorKind::TimedOut));
        assert_eq!(Failure::from_error("plain".into()).error_kind, None);
    }
}

//! Calls this context serves: who may call, running the handler, and the reply (or the
//! [`RemoteError`] saying where and why it failed).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};

use bytes::Bytes;
use tracing::{debug, warn, Instrument};

use super::Router;
use crate::call::{self, Cx, Failure, Shape, StreamArg};
use crate::codec;
use crate::error::{RemoteError, RemoteErrorKind};
use crate::frame::{self, flags, Frame, Header};
use crate::stream::{ByteReceiver, ByteSender, Shared, WINDOW};
use crate::ContextId;

impl Router {
    /// A call for this context, read from a link: refuse it, or run its handler and answer.
    pub(super) async fn dispatch(&self, frame: Frame, wait: bool) {
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
        if !self.accepting() {
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
            _ => Shape::Duplex,
        };
        if shape != entry.shape {
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
            Shape::Duplex => {
                // One state for both ways: the caller's data and END come in, credit for ours too.
                let shared = Shared::new(WINDOW);
                self.inner.inbound.insert((h.src, h.reply_to), shared.clone());
                let back = Header { dst: h.src, src: id, handle: h.reply_to, reply_to: 0, flags: 0 };
                let rx = ByteReceiver::new(self.clone(), Header { flags: flags::CREDIT, ..back }, shared.clone());
                let tx = ByteSender::new(self.clone(), Header { flags: flags::DATA, ..back }, shared, false);
                StreamArg::Duplex(rx, tx)
            }
        };
        let name: Arc<str> = name.into();
        let req = frame.body.slice(frame.body.len() - req.len()..);
        self.call_started();
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
        self.call_finished();
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
            path: None,
        }
    }

    pub(super) async fn reply(&self, call: Header, handler: &str, result: Result<Bytes, Failure>, wait: bool) {
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

    /// Whether context `caller` (a frame's checked source) may call handler `name` here: an
    /// ancestor, or a descendant after this context opted in, for every handler or for this one.
    fn may_call(&self, caller: ContextId, name: &str) -> bool {
        self.is_ancestor(caller)
            || self.is_descendant(caller)
                && (self.inner.open_to_descendants.load(Ordering::Acquire)
                    || self.inner.open_handlers.read().unwrap_or_else(|e| e.into_inner()).iter().any(|n| n == name))
    }

    /// Also take calls from descendants (by default only ancestors may call): for a context that
    /// serves its children, as the controller may. Siblings and unrelated contexts stay refused.
    /// Every handler opens, the methods' too (`hypha.local`, a plugin's): a descendant may then
    /// start contexts here. To open only some, use [`Router::open_handler_to_descendants`].
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
}

//! `Context`: the `Send` handle callers use.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use hypha_runtime::proto::Hello;
use hypha_runtime::{CallError, ContextId, EncodedRequest, Request, Router};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::actor::{ContextActor, Shutdown, State};

/// How long `Context::shutdown` lets calls in flight finish.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// A handle to one running context. Cheap to clone; `Send` and `Sync`.
///
/// Calls go straight through the router from the calling task; the context's actor only sees
/// lifecycle events (start, link loss, shutdown).
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

struct Inner {
    id: ContextId,
    name: String,
    hello: Hello,
    uploaded: Option<u64>,
    router: Router,
    actor: Addr<ContextActor>,
    state: watch::Receiver<State>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .field("host", &self.inner.hello.host)
            .field("pid", &self.inner.hello.pid)
            .finish()
    }
}

impl Context {
    pub(crate) fn new(
        id: ContextId,
        name: String,
        (hello, uploaded): (Hello, Option<u64>),
        router: Router,
        actor: Addr<ContextActor>,
        state: watch::Receiver<State>,
    ) -> Self {
        Context { inner: Arc::new(Inner { id, name, hello, uploaded, router, actor, state }) }
    }

    /// The context's id.
    pub fn id(&self) -> ContextId {
        self.inner.id
    }

    /// The context's name, as used in logs and errors.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// What the agent said about itself at the handshake: pid, user, host, arch, binary hash.
    pub fn hello(&self) -> &Hello {
        &self.inner.hello
    }

    /// Bytes of agent uploaded to start this context, or `None` if it was found cached on the host
    /// (or started locally).
    pub fn uploaded(&self) -> Option<u64> {
        self.inner.uploaded
    }

    /// Call `req` in this context and wait for its typed answer.
    pub async fn call<R: Request>(&self, req: R) -> Result<R::Response, CallError> {
        self.inner.router.call(self.inner.id, &req).await
    }

    /// [`Context::call`], waiting at most `timeout` for the answer (instead of the runtime's
    /// `Options::call_timeout`).
    pub async fn call_within<R: Request>(&self, req: R, timeout: Duration) -> Result<R::Response, CallError> {
        self.inner.router.call_within(self.inner.id, &req, timeout).await
    }

    /// Call an already encoded request (see [`call_all`](crate::call_all)).
    pub async fn call_encoded<R: Request>(&self, req: &EncodedRequest<R>) -> Result<R::Response, CallError> {
        self.inner.router.call_encoded(self.inner.id, req).await
    }

    /// Send `req` without waiting for an answer. An error of the handler is logged by the context.
    pub async fn send<R: Request>(&self, req: R) -> Result<(), CallError> {
        self.inner.router.send(self.inner.id, &req).await
    }

    /// Call `req`, streaming everything `reader` yields to its upload handler. Memory stays bounded
    /// by the flow-control window, whatever the size of the data.
    pub async fn upload<R: Request>(&self, req: R, reader: impl AsyncRead + Unpin) -> Result<R::Response, CallError> {
        self.inner.router.upload(self.inner.id, &req, reader).await
    }

    /// Call `req` and write the bytes its download handler sends to `writer`.
    pub async fn download<R: Request>(
        &self,
        req: R,
        writer: impl AsyncWrite + Unpin,
    ) -> Result<R::Response, CallError> {
        self.inner.router.download(self.inner.id, &req, writer).await
    }

    /// Where the context is in its life now.
    pub fn state(&self) -> State {
        self.inner.state.borrow().clone()
    }

    /// Wait until the context has ended (shut down, disconnected), and say how.
    pub async fn closed(&self) -> State {
        let mut state = self.inner.state.clone();
        let end = state.wait_for(State::is_terminal).await.map(|s| s.clone());
        end.unwrap_or_else(|_| State::Disconnected { reason: "the runtime stopped".into(), exit: None })
    }

    /// Shut the context down: it stops taking calls, lets calls in flight finish for up to
    /// [`DEFAULT_GRACE`], and exits. Returns its final state.
    pub async fn shutdown(&self) -> State {
        self.shutdown_within(DEFAULT_GRACE).await
    }

    /// [`Context::shutdown`] with a grace period of your choice.
    pub async fn shutdown_within(&self, grace: Duration) -> State {
        match self.inner.actor.send(Shutdown { grace }).await {
            Ok(state) => state,
            // The actor has already stopped: the context had ended before.
            Err(_) => self.closed().await,
        }
    }
}

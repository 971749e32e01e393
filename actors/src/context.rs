//! `Context`: the `Send` handle callers use, and the events of a context's life.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use hypha_bootstrap::process::{Command, Exit, Line, Output, Run, Stream, MAX_OUTPUT};
use hypha_runtime::proto::Hello;
use hypha_runtime::{
    ByteSender, CallError, ContextId, EncodedRequest, Feed, ItemReceiver, Items, RemoteErrorKind, Request, Router,
    Takes, Yields,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::actor::{Lifecycle, Shutdown, State};

/// The lines of a command as it prints them ([`Context::lines`], [`Context::spawn`]). Dropping it
/// kills the command and everything it started.
#[derive(Debug)]
pub struct LineStream {
    rx: Option<ItemReceiver<Line>>,
    /// Why the output stopped before its end: `exit` says so.
    error: Option<CallError>,
    ctx: Context,
}

impl LineStream {
    /// The next line, or `None` once the command's output has ended (or broke: see
    /// [`LineStream::exit`]).
    pub async fn next(&mut self) -> Option<Line> {
        let rx = self.rx.as_mut()?;
        match rx.next().await {
            Ok(Some(line)) => Some(line),
            Ok(None) => None,
            Err(e) => {
                self.error = Some(self.ctx.located(e.into_call_error(self.ctx.inner.id, Run::NAME)));
                None
            }
        }
    }

    /// How the command ended, once it has (the lines not read yet are read and dropped).
    pub async fn exit(mut self) -> Result<Exit, CallError> {
        while self.next().await.is_some() {}
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let Some(rx) = self.rx.take() else {
            return Err(CallError::Stream { handler: Run::NAME, reason: "no call".into() });
        };
        rx.into_inner().answer::<Run>().await.map_err(|e| self.ctx.located(e))
    }
}

/// A command's stdin, streamed while it runs ([`Context::spawn`]). Dropping it (or
/// [`Stdin::close`]) closes the command's stdin.
#[derive(Debug)]
pub struct Stdin {
    tx: ByteSender,
    id: ContextId,
}

impl Stdin {
    /// Write `bytes`, waiting while the command is behind.
    pub async fn write(&mut self, bytes: impl Into<bytes::Bytes>) -> Result<(), CallError> {
        self.tx.send(bytes.into()).await.map_err(|e| e.into_call_error(self.id, Run::NAME))
    }

    /// Write everything `reader` yields, then close stdin. Returns the bytes written.
    pub async fn copy_from(mut self, mut reader: impl AsyncRead + Unpin) -> Result<u64, CallError> {
        use tokio::io::AsyncReadExt;
        let mut n = 0;
        loop {
            let mut chunk = bytes::BytesMut::with_capacity(hypha_runtime::stream::CHUNK);
            let read = reader.read_buf(&mut chunk).await.map_err(|e| CallError::Stream {
                handler: Run::NAME,
                reason: format!("reading the command's stdin: {e}"),
            })?;
            if read == 0 {
                self.close().await?;
                return Ok(n);
            }
            n += read as u64;
            self.write(chunk.freeze()).await?;
        }
    }

    /// Close the command's stdin (it reads end of file).
    pub async fn close(mut self) -> Result<(), CallError> {
        self.tx.finish().await.map_err(|e| e.into_call_error(self.id, Run::NAME))
    }
}

/// How long `Context::shutdown` lets calls in flight finish.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// Something that happened in a context's life, as [`Context::events`] yields them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A start is under way (attempt 0 is the first start; 1, 2, ... restarts).
    Connecting {
        /// Which try.
        attempt: u32,
    },
    /// The agent finished its handshake: calls are served.
    Ready {
        /// Its pid.
        pid: u32,
        /// Its host.
        host: String,
    },
    /// The link was lost without a shutdown being asked for.
    Lost {
        /// Why.
        reason: String,
    },
    /// It will start again after a pause ([`Restart::OnLoss`](crate::Restart::OnLoss)).
    Restarting {
        /// Which try comes next.
        attempt: u32,
        /// The pause before it.
        after: Duration,
    },
    /// It could not be started (for good: no tries left).
    Failed {
        /// Why.
        reason: String,
    },
    /// It was shut down.
    ShutDown,
}

/// The events of one context, from the moment [`Context::events`] was called.
#[derive(Debug)]
pub struct Events {
    rx: broadcast::Receiver<Event>,
    status: watch::Receiver<Status>,
}

impl Events {
    /// The next event, or `None` once the context has ended for good and every event was seen.
    /// A reader that falls far behind skips the oldest events.
    pub async fn next(&mut self) -> Option<Event> {
        use broadcast::error::{RecvError, TryRecvError};
        loop {
            tokio::select! {
                biased;
                event = self.rx.recv() => match event {
                    Ok(event) => return Some(event),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                },
                // Ended for good (or its actor is gone): what is buffered, then nothing. The
                // actor sends an event before the state it leads to.
                () = ended(&mut self.status) => loop {
                    match self.rx.try_recv() {
                        Ok(event) => return Some(event),
                        Err(TryRecvError::Lagged(_)) => continue,
                        Err(_) => return None,
                    }
                },
            }
        }
    }
}

/// True for the router's own "no route" (here, or at a hop on the way), not for a handler's own
/// error of that kind: the call never reached a handler.
fn never_delivered(e: &CallError) -> bool {
    match e {
        CallError::NoRoute(_) => true,
        CallError::Remote(r) => r.kind == RemoteErrorKind::NoRoute,
        _ => false,
    }
}

/// Resolves once the context has ended for good, or its actor is gone.
async fn ended(status: &mut watch::Receiver<Status>) {
    let _ = status.wait_for(|s| s.state.is_terminal()).await.map(drop);
}

/// How many events a slow reader may fall behind before it skips some.
pub(crate) const EVENTS: usize = 64;

/// What the actor tells the handles: the state, and the agent's Hello once it has one.
#[derive(Clone, Debug)]
pub(crate) struct Status {
    pub(crate) state: State,
    pub(crate) hello: Option<Arc<Hello>>,
    pub(crate) uploaded: Option<u64>,
    /// Counts changes: a call that found no route waits for the next one.
    pub(crate) generation: u64,
}

/// A handle to one context. Cheap to clone; `Send` and `Sync`.
///
/// Calls go straight through the router from the calling task; the context's actor only sees
/// lifecycle events (start, link loss, restart, shutdown).
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Arc<Inner>,
}

/// What a handle holds.
pub(crate) struct Inner {
    pub(crate) id: ContextId,
    pub(crate) name: String,
    pub(crate) router: Router,
    pub(crate) actor: Addr<Lifecycle>,
    pub(crate) status: watch::Receiver<Status>,
    pub(crate) events: broadcast::Sender<Event>,
    /// Calls wait for a restarted agent instead of failing at once.
    pub(crate) restarts: bool,
    /// The Hello of the first start.
    pub(crate) first: Arc<Hello>,
    /// The names of the contexts from the root of this process's tree to this one
    /// (`controller → gw1 → db1`).
    pub(crate) route: String,
    /// Its method and host.
    pub(crate) target: String,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hello = self.inner.status.borrow().hello.clone();
        f.debug_struct("Context")
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .field("host", &hello.as_ref().map(|h| h.host.clone()))
            .field("pid", &hello.as_ref().map(|h| h.pid))
            .finish()
    }
}

impl Context {
    pub(crate) fn new(inner: Inner) -> Self {
        Context { inner: Arc::new(inner) }
    }

    /// The context's id (the same across restarts).
    pub fn id(&self) -> ContextId {
        self.inner.id
    }

    /// The context's name, as used in logs and errors.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The contexts a call goes through to reach this one, and how this one was started:
    /// `controller → gw1 → db1 (sudo postgres on gw1)`. Errors from it carry it.
    pub fn path(&self) -> String {
        format!("{} ({})", self.inner.route, self.inner.target)
    }

    pub(crate) fn route(&self) -> &str {
        &self.inner.route
    }

    /// `err`, naming the path to this context if it happened here.
    pub(crate) fn located(&self, err: CallError) -> CallError {
        err.located(self.inner.id, || self.path())
    }

    /// What the agent said about itself at its handshake (the latest, after a restart): pid,
    /// user, host, arch, binary hash.
    pub fn hello(&self) -> Hello {
        let hello = self.inner.status.borrow().hello.clone();
        (*hello.unwrap_or_else(|| self.inner.first.clone())).clone()
    }

    /// Bytes of agent uploaded to start this context (its latest start), or `None` if it was
    /// found cached on the host (or started locally).
    pub fn uploaded(&self) -> Option<u64> {
        self.inner.status.borrow().uploaded
    }

    /// Call `req` in this context and wait for its typed answer, within the runtime's
    /// `Options::call_timeout`.
    pub async fn call<R: Request>(&self, req: R) -> Result<R::Response, CallError> {
        if !self.inner.restarts {
            return self.inner.router.call(self.inner.id, &req).await.map_err(|e| self.located(e));
        }
        self.call_within(req, self.inner.router.config().call_timeout).await
    }

    /// [`Context::call`], waiting at most `timeout` for the answer. While the context restarts,
    /// the call waits for the new agent (within `timeout`), then goes there.
    pub async fn call_within<R: Request>(&self, req: R, timeout: Duration) -> Result<R::Response, CallError> {
        let (router, id) = (&self.inner.router, self.inner.id);
        if !self.inner.restarts {
            return router.call_within(id, &req, timeout).await.map_err(|e| self.located(e));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.ready_by(deadline, R::NAME, timeout).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            match router.call_within(id, &req, left).await {
                // Never delivered (no route here, or at a hop on the way; not a handler's own error
                // of that kind): the agent is gone, and a new one may be on its way.
                Err(e) if never_delivered(&e) => self.changed_by(seen, deadline, R::NAME, timeout).await?,
                done => return done.map_err(|e| self.located(e)),
            }
        }
    }

    /// Call an already encoded request (see [`call_all`](crate::call_all)).
    pub async fn call_encoded<R: Request>(&self, req: &EncodedRequest<R>) -> Result<R::Response, CallError> {
        let left = self.ready_for::<R>().await?;
        self.inner.router.call_encoded_within(self.inner.id, req, left).await.map_err(|e| self.located(e))
    }

    /// Send `req` without waiting for an answer. An error of the handler is logged by the context.
    /// A context that restarts is waited for first (within the call timeout).
    pub async fn send<R: Request>(&self, req: R) -> Result<(), CallError> {
        self.ready_for::<R>().await?;
        self.inner.router.send(self.inner.id, &req).await.map_err(|e| self.located(e))
    }

    /// Call `req`, streaming everything `reader` yields to its upload handler. Memory stays bounded
    /// by the flow-control window, whatever the size of the data.
    pub async fn upload<R: Request>(&self, req: R, reader: impl AsyncRead + Unpin) -> Result<R::Response, CallError> {
        self.ready_for::<R>().await?;
        self.inner.router.upload(self.inner.id, &req, reader).await.map_err(|e| self.located(e))
    }

    /// Call `req` and write the bytes its download handler sends to `writer`.
    pub async fn download<R: Request>(
        &self,
        req: R,
        writer: impl AsyncWrite + Unpin,
    ) -> Result<R::Response, CallError> {
        self.ready_for::<R>().await?;
        self.inner.router.download(self.inner.id, &req, writer).await.map_err(|e| self.located(e))
    }

    /// Call `req` and receive the items its handler yields ([`Handlers::on_yields`]), as they
    /// come; then its answer ([`Items::answer`]). A slow reader slows the handler down (memory
    /// stays bounded); dropping the stream aborts the call.
    ///
    /// [`Handlers::on_yields`]: hypha_runtime::Handlers::on_yields
    pub async fn items<R: Yields>(&self, req: R) -> Result<Items<R>, CallError> {
        self.ready_for::<R>().await?;
        let items = self.inner.router.items(self.inner.id, &req).await.map_err(|e| self.located(e))?;
        Ok(items.at_path(self.path()))
    }

    /// Call `req` and send its handler ([`Handlers::on_takes`]) items ([`Feed::send`]), waiting
    /// whenever it is behind; then take its answer ([`Feed::answer`]).
    ///
    /// [`Handlers::on_takes`]: hypha_runtime::Handlers::on_takes
    pub async fn feed<R: Takes>(&self, req: R) -> Result<Feed<R>, CallError> {
        self.ready_for::<R>().await?;
        let feed = self.inner.router.feed(self.inner.id, &req).await.map_err(|e| self.located(e))?;
        Ok(feed.at_path(self.path()))
    }

    /// Run `cmd` in this context and collect what it prints (remoto's `process.check`): stdout
    /// lines, stderr lines and the exit, whatever the exit. A missing program, a permission error
    /// or the timeout is an error naming host and program; the timeout, or dropping this call,
    /// kills the command and everything it started.
    pub async fn check(&self, cmd: Command) -> Result<Output, CallError> {
        let (mut stdout, mut stderr, mut kept) = (Vec::new(), Vec::new(), 0usize);
        let mut lines = self.lines(cmd).await?;
        while let Some(line) = lines.next().await {
            kept += line.text.len() + 1;
            if kept > MAX_OUTPUT {
                // Dropping the stream kills the command.
                let reason = format!("writing the download: more than {MAX_OUTPUT} bytes of output");
                return Err(CallError::Stream { handler: Run::NAME, reason });
            }
            match line.stream {
                Stream::Stdout => stdout.push(line.text),
                Stream::Stderr => stderr.push(line.text),
            }
        }
        Ok(Output { stdout, stderr, exit: lines.exit().await? })
    }

    /// Run `cmd` in this context, logging each line as it comes (remoto's `process.run`): stdout
    /// at debug, stderr at error, in the context's span. Returns the exit.
    pub async fn run(&self, cmd: Command) -> Result<Exit, CallError> {
        let span = tracing::info_span!("context", id = self.inner.id, name = %self.inner.name);
        let program = cmd.program().to_owned();
        let mut lines = self.lines(cmd).await?;
        while let Some(line) = lines.next().await {
            let _enter = span.enter();
            match line.stream {
                Stream::Stdout => tracing::debug!(program = %program, "{}", line.text),
                Stream::Stderr => tracing::error!(program = %program, "{}", line.text),
            }
        }
        lines.exit().await
    }

    /// Run `cmd` in this context and yield its lines as they come, stdout and stderr in order of
    /// arrival; then its exit ([`LineStream::exit`]). Its stdin is `cmd`'s bytes, then closed. A
    /// slow reader slows the command's output down (memory stays bounded); dropping the stream
    /// kills the command and everything it started.
    pub async fn lines(&self, cmd: Command) -> Result<LineStream, CallError> {
        let (stdin, lines) = self.spawn(cmd).await?;
        stdin.close().await?;
        Ok(lines)
    }

    /// [`Context::lines`], with the command's stdin left open: write to it (after `cmd`'s own
    /// bytes) while reading its lines, then close it.
    pub async fn spawn(&self, cmd: Command) -> Result<(Stdin, LineStream), CallError> {
        self.ready_for::<Run>().await?;
        let (tx, rx) = self.inner.router.open_duplex(self.inner.id, &Run(cmd)).await.map_err(|e| self.located(e))?;
        let lines = LineStream { rx: Some(ItemReceiver::new(rx)), error: None, ctx: self.clone() };
        Ok((Stdin { tx, id: self.inner.id }, lines))
    }

    /// For a context that restarts: wait (within the call timeout) until it is ready. What is
    /// left of the call timeout.
    pub(crate) async fn ready_for<R: Request>(&self) -> Result<Duration, CallError> {
        let timeout = self.inner.router.config().call_timeout;
        if self.inner.restarts {
            let deadline = Instant::now() + timeout;
            self.ready_by(deadline, R::NAME, timeout).await?;
            return Ok(deadline.saturating_duration_since(Instant::now()));
        }
        Ok(timeout)
    }

    /// Wait until the context is ready (for a via child of it), at most `within`.
    pub(crate) async fn wait_ready(&self, within: Duration) -> Result<(), CallError> {
        self.ready_by(Instant::now() + within, "a start via it", within).await.map(drop)
    }

    /// Wait until the context is ready, by `deadline`; the generation it was ready at.
    async fn ready_by(&self, deadline: Instant, handler: &'static str, after: Duration) -> Result<u64, CallError> {
        let mut status = self.inner.status.clone();
        if status.has_changed().is_err() {
            // Its actor is gone with its runtime: whatever the last state said, it is over.
            return Err(self.ended(&State::Disconnected { reason: "the runtime stopped".into(), exit: None }));
        }
        let ready = |s: &Status| s.state == State::Ready || s.state.is_terminal();
        let seen = tokio::time::timeout_at(deadline, status.wait_for(ready))
            .await
            .map(|seen| seen.map(|s| (s.state.clone(), s.generation)));
        match seen {
            Ok(Ok((State::Ready, generation))) => Ok(generation),
            Ok(Ok((state, _))) => Err(self.ended(&state)),
            Ok(Err(_)) => Err(self.ended(&State::Disconnected { reason: "the runtime stopped".into(), exit: None })),
            Err(_) => Err(CallError::Timeout { context: self.inner.id, handler, after }),
        }
    }

    /// Wait for the status to move past generation `seen`, by `deadline`.
    async fn changed_by(
        &self,
        seen: u64,
        deadline: Instant,
        handler: &'static str,
        after: Duration,
    ) -> Result<(), CallError> {
        let mut status = self.inner.status.clone();
        let changed = tokio::time::timeout_at(deadline, status.wait_for(|s| s.generation > seen)).await;
        match changed.map(|changed| changed.map(drop)) {
            Ok(Ok(())) => Ok(()),
            // The actor is gone (its runtime was dropped): nothing will change again.
            Ok(Err(_)) => Err(self.ended(&State::Disconnected { reason: "the runtime stopped".into(), exit: None })),
            Err(_) => Err(CallError::Timeout { context: self.inner.id, handler, after }),
        }
    }

    fn ended(&self, state: &State) -> CallError {
        let reason = match state {
            State::Failed(why) => format!("it could not be started again: {why}"),
            State::Disconnected { reason, .. } => reason.clone(),
            State::ShutDown { .. } => "it was shut down".into(),
            other => format!("{other:?}"),
        };
        CallError::Disconnected { context: self.inner.id, name: self.inner.name.clone(), reason }
    }

    /// Where the context is in its life now.
    pub fn state(&self) -> State {
        self.inner.status.borrow().state.clone()
    }

    /// Its lifecycle events from now on: connecting, ready, lost, restarting, failed, shut down,
    /// with reasons (for progress displays and supervisors of your own).
    pub fn events(&self) -> Events {
        Events { rx: self.inner.events.subscribe(), status: self.inner.status.clone() }
    }

    /// Wait until the context has ended for good (shut down, disconnected with no restart left),
    /// and say how.
    pub async fn closed(&self) -> State {
        let mut status = self.inner.status.clone();
        let end = status.wait_for(|s| s.state.is_terminal()).await.map(|s| s.state.clone());
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

//! `Lifecycle`: one actix actor per context, owning its life: starting it, watching its link,
//! reaping its process, restarting it when its policy says so, and shutting it down.
//!
//! It runs under an actix `Supervisor`: a lost context that is to start again stops its actor, and
//! the supervisor restarts the same actor (its address, and so every `Context` handle, stays
//! valid), whose `started` schedules the next try after the backoff. An actor whose context has
//! ended for good restarts idle, answering shutdowns with the final state, until the last handle
//! is dropped.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use hypha_bootstrap::builds::Builds;
use hypha_bootstrap::{reap, start_child, BootError, ChildInit};
use hypha_runtime::proto::Hello;
use hypha_runtime::{CloseReason, ContextId, LinkHandle, LinkId, Router};
use tokio::sync::{broadcast, oneshot, watch};
use tracing::{debug, info, info_span, warn, Span};

use crate::context::{Event, Status};
use crate::start::{How, Restart};
use crate::Exit;

/// Where a context is in its life. Observe it with `Context::state` and `Context::closed`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Starting: the method runs and the handshake is under way.
    Connecting,
    /// Handshake done; calls are served.
    Ready,
    /// Lost, and waiting to start again ([`Restart::OnLoss`]).
    Restarting {
        /// The try that comes next (1 for the first after a loss).
        attempt: u32,
        /// Why it was lost, or why the last try failed.
        reason: String,
    },
    /// It could not be started.
    Failed(String),
    /// Its link closed without a shutdown being asked for (the agent died, the host went away).
    Disconnected {
        /// Why the link closed.
        reason: String,
        /// The local process's end, if this side owned one.
        exit: Option<Exit>,
    },
    /// It was shut down.
    ShutDown {
        /// True if the agent finished its calls and exited by itself; false if it had to be killed.
        graceful: bool,
        /// The local process's end, if this side owned one.
        exit: Option<Exit>,
    },
}

impl State {
    /// True once the context is gone for good.
    pub fn is_terminal(&self) -> bool {
        matches!(self, State::Failed(_) | State::Disconnected { .. } | State::ShutDown { .. })
    }
}

/// Ask a context to shut down gracefully.
#[derive(Debug)]
pub(crate) struct Shutdown {
    pub(crate) grace: Duration,
}

impl Message for Shutdown {
    type Result = State;
}

/// What a start reports to whoever awaits it: the Hello and the bytes uploaded.
pub(crate) type Ready = (Hello, Option<u64>);

/// The actor behind each context.
pub(crate) struct Lifecycle {
    pub(crate) id: ContextId,
    pub(crate) name: String,
    pub(crate) how: How,
    /// Ids the context may give to children it starts by itself.
    pub(crate) ids: hypha_runtime::proto::IdBlock,
    /// The contexts between this process and a via parent, which must hear of the new ids.
    pub(crate) hops: Vec<ContextId>,
    pub(crate) router: Router,
    pub(crate) io: tokio::runtime::Handle,
    pub(crate) timeout: Option<Duration>,
    pub(crate) restart: Restart,
    /// The try under way or next: 0 for the first start, then 1, 2, ... after a loss.
    pub(crate) attempt: u32,
    /// Resolves when whoever started the context stops waiting for it (first start only).
    pub(crate) caller_gone: Option<oneshot::Receiver<()>>,
    pub(crate) status: watch::Sender<Status>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) ready: Option<oneshot::Sender<Result<Ready, BootError>>>,
    pub(crate) span: Span,
    pub(crate) process: Option<tokio::process::Child>,
    pub(crate) link: Option<LinkId>,
    pub(crate) stopping: Option<Duration>,
    /// The context has ended for good: the actor only answers.
    pub(crate) done: bool,
}

/// What tells that a context has gone: its own link, or (started via another context) the route
/// to it.
enum Gone {
    Link(LinkHandle),
    Route(watch::Receiver<Option<String>>),
}

impl Gone {
    async fn wait(self) -> CloseReason {
        match self {
            Gone::Link(mut link) => link.closed().await,
            Gone::Route(mut route) => match route.wait_for(Option::is_some).await {
                Ok(reason) => CloseReason::Lost(reason.clone().unwrap_or_default()),
                Err(_) => CloseReason::Local("the router stopped".into()),
            },
        }
    }
}

type Started = Result<(Hello, Option<u64>, Gone, Option<tokio::process::Child>), BootError>;

impl Actor for Lifecycle {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.done {
            return;
        }
        match self.restart.pause(self.attempt) {
            Some(pause) if self.attempt > 0 => {
                self.emit(Event::Restarting { attempt: self.attempt, after: pause });
                ctx.run_later(pause, |act, ctx| act.launch(ctx));
            }
            _ => self.launch(ctx),
        }
    }
}

impl actix::Supervised for Lifecycle {}

impl Lifecycle {
    fn emit(&self, event: Event) {
        // Nobody listening is fine.
        let _ = self.events.send(event);
    }

    fn set_state(&self, state: State) {
        self.status.send_modify(|s| {
            s.state = state;
            s.generation += 1;
        });
    }

    /// Start the context (again), through its method and path.
    fn launch(&mut self, ctx: &mut actix::Context<Self>) {
        if self.done {
            return;
        }
        self.emit(Event::Connecting { attempt: self.attempt });
        if self.attempt > 0 {
            self.set_state(State::Connecting);
        }
        let (router, id, span) = (self.router.clone(), self.id, self.span.clone());
        let child = ChildInit { id, name: self.name.clone(), ids: self.ids };
        let (how, hops, timeout) = (self.how.clone(), self.hops.clone(), self.timeout);
        let caller_gone = self.caller_gone.take();
        let target = self.how.target(&self.name);
        let via = matches!(self.how, How::Via { .. });
        let io = self.io.clone();
        let job = self.io.spawn(async move {
            // A caller that gives up, or a deadline, stops the start: a direct one where it is
            // (aborting it drops the local process, killed, and the connection); a via one runs
            // to its end on the parent (its own deadlines bound it), and what it started there is
            // shut down at once.
            let cleanup = router.clone();
            let mut attempt = io.spawn(start(how, router, child, hops, span));
            let gave_up = async {
                match caller_gone {
                    Some(gone) => drop(gone.await),
                    None => std::future::pending().await,
                }
            };
            let deadline = async {
                match timeout {
                    Some(after) => tokio::time::sleep(after).await,
                    None => std::future::pending().await,
                }
            };
            let stopped = tokio::select! {
                started = &mut attempt => return started.unwrap_or_else(|e| {
                    Err(BootError::start(target, "the start-up task failed", Some(Box::new(e))))
                }),
                () = gave_up => BootError::start(target, "the caller gave up before it started", None),
                () = deadline => BootError::Timeout { target, stage: "start", after: timeout.unwrap_or_default() },
            };
            if via {
                io.spawn(async move {
                    if let Ok(Ok(_)) = attempt.await {
                        let _ = cleanup.request_shutdown(id, Duration::ZERO).await;
                    }
                });
            } else {
                attempt.abort();
            }
            Err(stopped)
        });
        // `wait`: no other message (a shutdown) is handled until the start has finished.
        ctx.wait(actix::fut::wrap_future(job).map(|res, act: &mut Self, ctx| {
            let res = res.unwrap_or_else(|e| {
                Err(BootError::Start {
                    target: act.name.clone(),
                    reason: format!("start-up task failed: {e}"),
                    source: Some(Box::new(e)),
                })
            });
            act.on_started(res, ctx)
        }));
    }

    fn on_started(&mut self, res: Started, ctx: &mut actix::Context<Self>) {
        let _enter = self.span.clone().entered();
        match res {
            Ok((hello, uploaded, gone, process)) => {
                info!(pid = hello.pid, user = %hello.user, arch = %hello.arch, attempt = self.attempt, "context ready");
                if let Gone::Link(link) = &gone {
                    self.link = Some(link.id());
                }
                self.process = process;
                self.attempt = 0;
                self.emit(Event::Ready { pid: hello.pid, host: hello.host.clone() });
                let hello = Arc::new(hello);
                self.status.send_modify(|s| {
                    s.state = State::Ready;
                    s.hello = Some(hello.clone());
                    s.uploaded = uploaded;
                    s.generation += 1;
                });
                let first = self.ready.take();
                let delivered = first.is_none_or(|tx| tx.send(Ok(((*hello).clone(), uploaded))).is_ok());
                if !delivered || self.stopping.is_some() {
                    // Whoever asked for it has gone (nobody holds a handle, so it must not live
                    // on), or a shutdown came while it restarted.
                    info!("nobody waits for the context: shutting it down");
                    self.stopping.get_or_insert(Duration::ZERO);
                    let (router, id) = (self.router.clone(), self.id);
                    match &gone {
                        Gone::Link(link) => {
                            drop(router.close(link.id(), CloseReason::Local("nobody waits for it".into())))
                        }
                        Gone::Route(_) => {
                            drop(self.io.spawn(async move { router.request_shutdown(id, Duration::ZERO).await }))
                        }
                    }
                }
                ctx.spawn(
                    actix::fut::wrap_future(gone.wait()).map(|reason, act: &mut Self, ctx| act.on_closed(reason, ctx)),
                );
            }
            Err(e) => {
                warn!(error = %e, attempt = self.attempt, "context failed to start");
                // A first start that fails is the caller's error; a restart tries again.
                let again = self.ready.is_none() && self.stopping.is_none();
                if again && self.restart.pause(self.attempt + 1).is_some() {
                    self.attempt += 1;
                    self.set_state(State::Restarting { attempt: self.attempt, reason: e.to_string() });
                    ctx.stop();
                    return;
                }
                self.emit(Event::Failed { reason: e.to_string() });
                self.set_state(State::Failed(e.to_string()));
                if let Some(tx) = self.ready.take() {
                    let _ = tx.send(Err(e));
                }
                self.done = true;
                ctx.stop();
            }
        }
    }

    fn on_closed(&mut self, reason: CloseReason, ctx: &mut actix::Context<Self>) {
        let _enter = self.span.clone().entered();
        debug!(%reason, "link closed");
        self.link = None;
        let stopping = self.stopping;
        let process = self.process.take();
        // A process that outlives its link would be an orphan: give it a moment to exit, then kill it.
        let patience = stopping.unwrap_or(Duration::ZERO) + Duration::from_secs(1);
        let reap = self.io.spawn(reap(process, patience));
        ctx.wait(actix::fut::wrap_future(reap).map(move |res, act: &mut Self, ctx| {
            let (exit, killed) = res.unwrap_or((None, false));
            let state = match stopping {
                Some(_) => {
                    let graceful = !killed && !matches!(reason, CloseReason::Local(_));
                    State::ShutDown { graceful, exit }
                }
                None => {
                    act.emit(Event::Lost { reason: reason.to_string() });
                    if act.restart.pause(1).is_some() {
                        act.attempt = 1;
                        act.span.in_scope(|| info!(%reason, "context lost: starting it again"));
                        act.set_state(State::Restarting { attempt: 1, reason: reason.to_string() });
                        // The supervisor restarts the actor, whose `started` tries again.
                        ctx.stop();
                        return;
                    }
                    State::Disconnected { reason: reason.to_string(), exit }
                }
            };
            act.span.in_scope(|| info!(?state, "context ended"));
            if matches!(state, State::ShutDown { .. }) {
                act.emit(Event::ShutDown);
            }
            act.set_state(state);
            act.done = true;
            ctx.stop();
        }));
    }
}

/// Start a context once: by this process, or by its via parent.
async fn start(how: How, router: Router, child: ChildInit, hops: Vec<ContextId>, span: Span) -> Started {
    match how {
        How::Direct(method) => {
            let started = start_child(&router, &*method, &child, span).await?;
            Ok((started.hello, started.uploaded, Gone::Link(started.link), started.process))
        }
        How::Via { parent, ask } => {
            let (id, ids, label) = (child.id, child.ids, parent.name().to_owned());
            let target = format!("{} via {label} (context {})", child.name, parent.id());
            // A parent that restarts itself is waited for: asking it before it is back would
            // spend this context's tries in moments.
            let within = router.config().call_timeout;
            parent
                .wait_ready(within)
                .await
                .map_err(|e| BootError::Via { target: target.clone(), source: Box::new(e) })?;
            let parent = parent.id();
            // Watch before asking: a child that dies at once must still be noticed.
            let gone = router.watch_route(id);
            // The new context may be announced only from below its parent, and its block only
            // from below it: here, and at every hop on the way (told before the start travels
            // the same links).
            router.grant((id, id + 1), parent);
            router.grant(ids, id);
            for hop in hops {
                let told = async {
                    router.grant_at(hop, (id, id + 1), parent).await?;
                    router.grant_at(hop, ids, id).await
                };
                told.await.map_err(|source| BootError::Via { target: target.clone(), source: Box::new(source) })?;
            }
            // The parent serves the build for the child's architecture: its own, or one it
            // fetches from here when a child first needs it.
            let builds = Builds::current()
                .await
                .map_err(|e| BootError::start(target.clone(), "this program's builds", Some(e.into())))?
                .offers();
            let spawned = ask(router.clone(), parent, label, child, builds).await?;
            span.record("host", spawned.hello.host.as_str());
            Ok((spawned.hello, spawned.uploaded, Gone::Route(gone), None))
        }
    }
}

impl Handler<Shutdown> for Lifecycle {
    type Result = ResponseFuture<State>;

    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        let mut status = self.status.subscribe();
        let (router, id, link) = (self.router.clone(), self.id, self.link);
        let state = self.status.borrow().state.clone();
        if self.stopping.is_none() && !state.is_terminal() {
            self.stopping = Some(msg.grace);
            self.span.in_scope(|| debug!(grace = ?msg.grace, "shutting down"));
            if let State::Restarting { .. } = state {
                // Between tries: nothing runs, nothing to stop.
                self.emit(Event::ShutDown);
                self.set_state(State::ShutDown { graceful: true, exit: None });
                self.done = true;
                ctx.stop();
            }
        }
        let ended = state.is_terminal();
        Box::pin(async move {
            if ended {
                return state;
            }
            let _ = router.request_shutdown(id, msg.grace).await;
            let terminal = |s: &Status| s.state.is_terminal();
            let deadline = msg.grace + Duration::from_secs(2);
            if tokio::time::timeout(deadline, status.wait_for(terminal)).await.is_err() {
                if let Some(link) = link {
                    router.close(link, CloseReason::Local("the agent did not exit in time".into()));
                }
            }
            // A context started via another one has no link here to cut: after the deadline, its
            // state is what it is.
            let end = tokio::time::timeout(Duration::from_secs(10), status.wait_for(terminal))
                .await
                .map(|end| end.map(|s| s.state.clone()));
            match end {
                Ok(Ok(end)) => end,
                Ok(Err(_)) => State::Disconnected { reason: "the context's actor stopped".into(), exit: None },
                Err(_) => status.borrow().state.clone(),
            }
        })
    }
}

/// A span for a context's logs.
pub(crate) fn span(id: ContextId, name: &str) -> Span {
    info_span!("context", id, name = %name, host = tracing::field::Empty)
}

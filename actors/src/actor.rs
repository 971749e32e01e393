//! `ContextActor`: one actix actor per context, owning its lifecycle.

use std::time::Duration;

use actix::prelude::*;
use hypha_bootstrap::builds::Builds;
use hypha_bootstrap::{boot, AgentLoans, BootError, Method, MethodSpec, Spawn};
use hypha_runtime::proto::{Hello, IdBlock, Init};
use hypha_runtime::{CloseReason, ContextId, LinkHandle, LinkId, LinkOptions, Role, Router};
use tokio::process::Child;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn, Span};

/// Where a context is in its life. Observe it with `Context::state` and `Context::closed`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Starting: the method runs and the handshake is under way.
    Connecting,
    /// Handshake done; calls are served.
    Ready,
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

/// How a local process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal, if it was killed by one.
    pub signal: Option<i32>,
}

/// Ask a context to shut down gracefully.
#[derive(Debug)]
pub(crate) struct Shutdown {
    pub(crate) grace: Duration,
}

impl Message for Shutdown {
    type Result = State;
}

/// The actor behind each context: starts it, watches its link, reaps its process, and shuts it down.
pub(crate) struct ContextActor {
    pub(crate) id: ContextId,
    pub(crate) name: String,
    pub(crate) start: Option<Start>,
    /// Ids the context may give to children it starts by itself.
    pub(crate) ids: IdBlock,
    pub(crate) router: Router,
    pub(crate) io: tokio::runtime::Handle,
    pub(crate) max_frame: usize,
    /// Deadlines handed to the agent in its Init.
    pub(crate) link_timeout: Duration,
    pub(crate) call_timeout: Duration,
    /// Resolves when whoever started the context stops waiting for it.
    pub(crate) caller_gone: Option<oneshot::Receiver<()>>,
    pub(crate) state: watch::Sender<State>,
    pub(crate) ready: Option<oneshot::Sender<Result<Ready, BootError>>>,
    pub(crate) span: Span,
    pub(crate) process: Option<Child>,
    pub(crate) link: Option<LinkId>,
    pub(crate) stopping: Option<Duration>,
}

/// What a started context reports to whoever waits for it: its Hello, and the bytes uploaded.
pub(crate) type Ready = (Hello, Option<u64>);

type Started = Result<(Hello, Option<u64>, Gone, Option<Child>), BootError>;

/// How a context is started.
pub(crate) enum Start {
    /// By this process, with a method.
    Direct(Box<dyn Method>),
    /// By context `parent`, which runs the method from its host.
    Via {
        /// The parent context.
        parent: ContextId,
        /// The contexts between the controller and `parent`, which must hear of the new ids.
        hops: Vec<ContextId>,
        /// The method, ready to travel.
        spec: Box<MethodSpec>,
        /// The ssh-agents lent to `parent` for this start.
        loans: AgentLoans,
    },
}

/// What tells that a context has gone: its own link, or (started via another context) the route
/// to it.
pub(crate) enum Gone {
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

impl Actor for ContextActor {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(start) = self.start.take() else {
            return;
        };
        let (router, max_frame, id, span) = (self.router.clone(), self.max_frame, self.id, self.span.clone());
        let (name, ids) = (self.name.clone(), self.ids);
        let (link_timeout_ms, call_timeout_ms) = (millis(self.link_timeout), millis(self.call_timeout));
        let caller_gone = self.caller_gone.take();
        let job = match start {
            Start::Direct(method) => self.io.spawn(async move {
                let target = method.target();
                let init = |_: &Hello| Init {
                    id,
                    ancestors: vec![router.id()],
                    name: name.clone(),
                    max_frame: max_frame as u32,
                    ids,
                    link_timeout_ms,
                    call_timeout_ms,
                };
                // A caller that gives up stops the start where it is: dropping it kills the local
                // process and closes the connection, so nothing is left running.
                let gave_up = async {
                    match caller_gone {
                        Some(gone) => drop(gone.await),
                        None => std::future::pending().await,
                    }
                };
                let booted = tokio::select! {
                    booted = boot(&*method, max_frame, init) => booted?,
                    () = gave_up => {
                        return Err(BootError::Start {
                            target,
                            reason: "the caller gave up before it started".into(),
                            source: None,
                        });
                    }
                };
                router.grant(ids, id);
                let hello = booted.hello;
                span.record("host", hello.host.as_str());
                let opts = LinkOptions {
                    role: Role::Child(id),
                    name: format!("{name}: {target}, pid {}", hello.pid),
                    span: span.clone(),
                    initial: booted.leftover,
                };
                let link = router.attach(booted.transport.reader, booted.transport.writer, opts);
                Ok((hello, booted.transport.uploaded, Gone::Link(link), booted.transport.process))
            }),
            Start::Via { parent, hops, spec, loans } => self.io.spawn(async move {
                // Watch before asking: a child that dies at once must still be noticed.
                let gone = router.watch_route(id);
                let target = format!("{} via context {parent}", spec.method().target());
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
                    told.await.map_err(|e| BootError::Start {
                        target: target.clone(),
                        reason: e.to_string(),
                        source: Some(Box::new(e)),
                    })?;
                }
                // Every stage of a start has its own deadline on the parent; this bounds the lot.
                let deadline = spec.method().handshake_timeout() * 3 + Duration::from_secs(30);
                // The parent serves the build for the child's architecture: its own, or one it
                // fetches from here when a child first needs it.
                let builds = Builds::current()
                    .await
                    .map_err(|e| BootError::Start {
                        target: target.clone(),
                        reason: format!("this program's builds: {e}"),
                        source: Some(Box::new(e)),
                    })?
                    .offers();
                let spawned = router
                    .call_within(parent, &Spawn { id, name, method: *spec, ids, builds }, deadline)
                    .await
                    .map_err(|e| BootError::Start { target, reason: e.to_string(), source: Some(Box::new(e)) })?;
                drop(loans);
                span.record("host", spawned.hello.host.as_str());
                Ok((spawned.hello, spawned.uploaded, Gone::Route(gone), None))
            }),
        };
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
}

impl ContextActor {
    fn on_started(&mut self, res: Started, ctx: &mut actix::Context<Self>) {
        let _enter = self.span.clone().entered();
        match res {
            Ok((hello, uploaded, gone, process)) => {
                info!(pid = hello.pid, user = %hello.user, arch = %hello.arch, "context ready");
                if let Gone::Link(link) = &gone {
                    self.link = Some(link.id());
                }
                self.process = process;
                self.state.send_replace(State::Ready);
                let delivered = self.ready.take().is_some_and(|tx| tx.send(Ok((hello, uploaded))).is_ok());
                if !delivered {
                    // Whoever asked for it has gone: nobody holds a handle, so it must not live on.
                    info!("the caller gave up on the start: shutting the context down");
                    self.stopping = Some(Duration::ZERO);
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
                warn!(error = %e, "context failed to start");
                self.state.send_replace(State::Failed(e.to_string()));
                if let Some(tx) = self.ready.take() {
                    let _ = tx.send(Err(e));
                }
                ctx.stop();
            }
        }
    }

    fn on_closed(&mut self, reason: CloseReason, ctx: &mut actix::Context<Self>) {
        let _enter = self.span.clone().entered();
        debug!(%reason, "link closed");
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
                None => State::Disconnected { reason: reason.to_string(), exit },
            };
            act.span.in_scope(|| info!(?state, "context ended"));
            act.state.send_replace(state);
            ctx.stop();
        }));
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// Wait up to `patience` for `process` to exit, then kill it. Returns its exit and whether it was killed.
///
/// Polls `waitpid(WNOHANG)` instead of awaiting `Child::wait`: tokio's wake-up for child exits is
/// process-global signal state that several runtimes in one process (tests, embedding programs)
/// can leave unserviced, and a lifecycle step must never hang on it.
async fn reap(process: Option<Child>, patience: Duration) -> (Option<Exit>, bool) {
    let Some(mut child) = process else {
        return (None, false);
    };
    let mut status = poll_exit(&mut child, patience).await;
    let killed = status.is_none();
    if killed {
        let _ = child.start_kill();
        status = poll_exit(&mut child, Duration::from_secs(5)).await;
    }
    use std::os::unix::process::ExitStatusExt;
    (status.map(|s| Exit { code: s.code(), signal: s.signal() }), killed)
}

async fn poll_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            _ => return None,
        }
    }
}

impl Handler<Shutdown> for ContextActor {
    type Result = ResponseFuture<State>;

    fn handle(&mut self, msg: Shutdown, _: &mut Self::Context) -> Self::Result {
        let mut state = self.state.subscribe();
        let (router, id, link) = (self.router.clone(), self.id, self.link);
        if self.stopping.is_none() && !self.state.borrow().is_terminal() {
            self.stopping = Some(msg.grace);
            self.span.in_scope(|| debug!(grace = ?msg.grace, "shutting down"));
        }
        Box::pin(async move {
            let _ = router.request_shutdown(id, msg.grace).await;
            let deadline = msg.grace + Duration::from_secs(2);
            if tokio::time::timeout(deadline, state.wait_for(State::is_terminal)).await.is_err() {
                if let Some(link) = link {
                    router.close(link, CloseReason::Local("the agent did not exit in time".into()));
                }
            }
            // A context started via another one has no link here to cut: after the deadline, its
            // state is what it is.
            let end = tokio::time::timeout(Duration::from_secs(10), state.wait_for(State::is_terminal))
                .await
                .map(|end| end.map(|s| s.clone()));
            match end {
                Ok(Ok(end)) => end,
                Ok(Err(_)) => State::Disconnected { reason: "the context's actor stopped".into(), exit: None },
                Err(_) => state.borrow().clone(),
            }
        })
    }
}

//! hypha's actors: every context is an actix actor, behind `Send` async handles.
//!
//! [`Runtime`] starts contexts and supervises them: the controller's (context 0), and, made on
//! first use, one in any agent whose handler code starts contexts of its own ([`StartFrom`]). It
//! runs an actix system on a thread of its own, where one actor per context owns that context's
//! life: starting it with a [`Method`] (or asking a via parent to), watching its link, reaping its
//! process, restarting it ([`Restart`]), shutting it down ([`State`], [`Event`]). The byte pumping
//! and the calls themselves run as tokio tasks on the runtime the program already uses, so a call
//! is never delayed by a hop through the actor thread.
//!
//! ```no_run
//! use hypha_actors::Runtime;
//! use hypha_bootstrap::{Local, Whoami};
//! use hypha_runtime::Handlers;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let handlers = Handlers::new();
//!     hypha_bootstrap::run_if_agent(&handlers);
//!     let rt = Runtime::new(handlers)?;
//!     let ctx = rt.start(Local::default()).name("worker").await?;
//!     let who = ctx.call(Whoami).await?;
//!     println!("context {}: pid {} on {}", ctx.id(), who.pid, who.host);
//!     rt.shutdown().await;
//!     Ok(())
//! }
//! ```

mod actor;
mod context;
pub mod files;
pub mod fleet;
mod registry;
mod start;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use actix::{ArbiterHandle, Supervisor, System};
use hypha_bootstrap::builds::{BuildError, BuildRequest};
use hypha_bootstrap::{AgentMessage, BootError, Identity, Local, Method};
use hypha_runtime::frame::DEFAULT_MAX_FRAME;
use hypha_runtime::proto::IdBlock;
use hypha_runtime::{CallError, ContextId, Cx, EncodedRequest, Handlers, Request, Router, RouterConfig};
use tokio::sync::{broadcast, oneshot, watch};
use tracing::level_filters::LevelFilter;

pub use actor::State;
pub use context::{Context, Event, Events, LineStream, Stdin, DEFAULT_GRACE};
pub use hypha_bootstrap::Exit;
pub use start::{Restart, Start};

use actor::{Lifecycle, Shutdown};
use context::Status;
use registry::Registry;
use start::How;

/// Ids the controller gives out itself lie below this; above it, blocks for the contexts to give to
/// children they start by themselves.
const FIRST_BLOCK: u32 = 1 << 24;
/// Ids in each block the controller gives a context.
const ID_BLOCK: u32 = 1 << 12;
/// Ids in each block an agent gives a context it starts, out of its own block.
const CHILD_IDS: u32 = 64;

/// Settings of a [`Runtime`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Options {
    /// Largest frame sent or accepted on any link (default 16 MiB). Bulk data travels in chunks
    /// far below this, so it bounds only single requests and responses.
    pub max_frame: usize,
    /// A link that brings nothing for this long is lost, and everything behind it fails as for a
    /// dead hop (default 30 s). Every link sends a heartbeat four times as often, so only a peer
    /// that is gone, stopped, or cut off (its network path dropped) is silent that long. Every
    /// context of the tree uses this value.
    pub link_timeout: Duration,
    /// How long a call waits for its answer unless it says otherwise (`Context::call_within`);
    /// for a call with a stream, how long nothing may move on it (default 300 s).
    pub call_timeout: Duration,
    /// Builds of this program for other architectures, served to hosts of those (see
    /// [`Options::agent_for`]).
    pub agents: Vec<(String, PathBuf)>,
    /// The most verbose of their own `tracing` events (and stray stderr lines, at warn) that
    /// contexts send to the controller, which logs them in each context's span
    /// ([`hypha_bootstrap::log`]): `info` unless the environment variable `HYPHA_FORWARD_LOG`
    /// says otherwise; `LevelFilter::OFF` for none. Every context of the tree uses this value.
    pub forward_logs: LevelFilter,
}

impl Options {
    /// Set [`Options::max_frame`].
    pub fn with_max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Set [`Options::link_timeout`].
    pub fn with_link_timeout(mut self, timeout: Duration) -> Self {
        self.link_timeout = timeout;
        self
    }

    /// Set [`Options::call_timeout`].
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Set [`Options::forward_logs`].
    pub fn with_forward_logs(mut self, level: LevelFilter) -> Self {
        self.forward_logs = level;
        self
    }

    /// Serve the executable at `path` to hosts of architecture `arch` (`aarch64`, `x86_64`,
    /// `arm`, ...; `uname -m` names like `arm64` work too): a build of this same program for
    /// that architecture, best static (hypha's `scripts/build-agents.sh` makes them). Contexts
    /// started via another context get it from there; it crosses each link to a parent once,
    /// when a first child needs it. [`Runtime::with_options`] checks that it is an executable for
    /// `arch`. Without a build for a host's architecture, a start there fails with
    /// [`BootError::Arch`], naming both.
    pub fn agent_for(mut self, arch: &str, path: impl Into<PathBuf>) -> Self {
        self.agents.push((arch.to_owned(), path.into()));
        self
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_frame: DEFAULT_MAX_FRAME,
            link_timeout: hypha_runtime::DEFAULT_LINK_TIMEOUT,
            call_timeout: hypha_runtime::DEFAULT_CALL_TIMEOUT,
            agents: Vec::new(),
            forward_logs: hypha_bootstrap::log::forward_level_from_env()
                .unwrap_or(hypha_bootstrap::log::DEFAULT_FORWARD_LEVEL),
        }
    }
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The runtime was made outside a tokio runtime.
    #[error("hypha's Runtime must be made from within a tokio runtime")]
    NoTokio,
    /// This program's executable could not be read to hash it.
    #[error("cannot hash this executable: {0}")]
    Exe(std::io::Error),
    /// The actor thread did not start.
    #[error("cannot start the actor thread: {0}")]
    Actors(std::io::Error),
    /// The runtime this start was to come from has stopped.
    #[error("the runtime has stopped")]
    Stopped,
    /// A build named with [`Options::agent_for`] cannot serve as one.
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Starts contexts and supervises them: in the controller, context 0, the root of the tree; in an
/// agent, the contexts its handler code starts. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    router: Router,
    io: tokio::runtime::Handle,
    system: System,
    arbiter: ArbiterHandle,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The controller gives out ids from its own counters (contexts, blocks); an agent from the
    /// block it was given.
    ids: Option<(AtomicU32, AtomicU32)>,
    contexts: Registry,
    /// Set by `shutdown`: no new starts.
    stopping: AtomicBool,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("router", &self.inner.router).finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.system.stop();
    }
}

/// Where a router's runtime is kept (`Router::extension`): the controller's weakly (it owns its
/// router), an agent's for as long as the process lives.
#[derive(Clone, Default)]
struct Slot(Arc<Mutex<Option<Found>>>);

enum Found {
    Controller(Weak<Inner>),
    Agent(Runtime),
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Found>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Runtime {
    /// The controller, with `handlers` (the same value given to `run_if_agent`) and default
    /// [`Options`]. Call it from within a tokio runtime: links and calls run there.
    pub fn new(handlers: Handlers) -> Result<Runtime, StartError> {
        Self::with_options(handlers, Options::default())
    }

    /// [`Runtime::new`] with explicit [`Options`].
    pub fn with_options(handlers: Handlers, options: Options) -> Result<Runtime, StartError> {
        tokio::runtime::Handle::try_current().map_err(|_| StartError::NoTokio)?;
        hypha_bootstrap::exe_hash().map_err(StartError::Exe)?;
        for (arch, path) in &options.agents {
            hypha_bootstrap::builds::add_build(arch, path)?;
        }
        let cfg = RouterConfig::new(0, Vec::new(), Identity::current().origin())
            .with_max_frame(options.max_frame)
            .with_link_timeout(options.link_timeout)
            .with_call_timeout(options.call_timeout);
        let router = Router::new(cfg, hypha_bootstrap::install_builtins(handlers));
        // Hops started via a context sign with the agents lent to them; they check their loans.
        router.open_handler_to_descendants(AgentMessage::NAME);
        // Parents of contexts started via them fetch the builds for their children from here.
        router.open_handler_to_descendants(BuildRequest::NAME);
        // Every context sends its log records here; each is logged as the checked caller's.
        router.open_handler_to_descendants(hypha_bootstrap::log::Batch::NAME);
        hypha_bootstrap::log::set_forward_level(&router, options.forward_logs);
        let rt = Runtime::on(router, Some((AtomicU32::new(1), AtomicU32::new(FIRST_BLOCK))))?;
        *rt.inner.router.extension(Slot::default).lock() = Some(Found::Controller(Arc::downgrade(&rt.inner)));
        Ok(rt)
    }

    fn on(router: Router, ids: Option<(AtomicU32, AtomicU32)>) -> Result<Runtime, StartError> {
        let io = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoTokio)?;
        let (system, arbiter, thread) = start_actix().map_err(StartError::Actors)?;
        let thread = Mutex::new(Some(thread));
        let (contexts, stopping) = (Registry::default(), AtomicBool::new(false));
        let inner = Inner { router, io, system, arbiter, thread, ids, contexts, stopping };
        Ok(Runtime { inner: Arc::new(inner) })
    }

    /// The runtime of the context a handler runs in: the controller's, or (made on first use)
    /// the agent's.
    fn of(cx: &Cx) -> Result<Runtime, StartError> {
        let slot = cx.router().extension(Slot::default);
        let mut found = slot.lock();
        match &*found {
            Some(Found::Controller(weak)) => weak.upgrade().map(|inner| Runtime { inner }).ok_or(StartError::Stopped),
            Some(Found::Agent(rt)) => Ok(rt.clone()),
            None => {
                let rt = Runtime::on(cx.router().clone(), None)?;
                // Hops it starts via its children sign with the ssh-agents it lends them.
                rt.inner.router.open_handler_to_descendants(AgentMessage::NAME);
                *found = Some(Found::Agent(rt.clone()));
                Ok(rt)
            }
        }
    }

    /// The router of the context this runtime serves.
    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    /// Start a context with `method` ([`Local`], `Ssh`, `OpenSsh`, `Sudo`, `Su`, or one of your
    /// own): add `.via(&ctx)`, `.name(..)`, `.timeout(..)`, `.restart(..)` as needed, then `.await`
    /// it for the [`Context`].
    pub fn start<M: Method + 'static>(&self, method: M) -> Start<M> {
        Start::new(Ok(self.clone()), method)
    }

    /// `rt.start(Local::default())`: this program's own binary as a child process.
    pub fn local(&self) -> Start<Local> {
        self.start(Local::default())
    }

    /// How paths of contexts begin: `controller`, or the agent that started them.
    fn root_name(&self) -> String {
        match self.inner.ids {
            Some(_) => "controller".to_owned(),
            None => format!("context {}", self.inner.router.id()),
        }
    }

    /// A new context's id and block of ids.
    fn allocate(&self, target: &str) -> Result<(ContextId, IdBlock), BootError> {
        match &self.inner.ids {
            Some((next_id, next_block)) => {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let first = next_block.fetch_add(ID_BLOCK, Ordering::Relaxed);
                Ok((id, (first, first.saturating_add(ID_BLOCK))))
            }
            None => {
                let router = &self.inner.router;
                let no_ids = || {
                    BootError::start(
                        target,
                        format!("context {} has no ids left to give to a child", router.id()),
                        None,
                    )
                };
                let (id, _) = router.allocate_ids(1).ok_or_else(no_ids)?;
                Ok((id, router.allocate_ids(CHILD_IDS).unwrap_or((0, 0))))
            }
        }
    }

    pub(crate) async fn launch(
        &self,
        how: How,
        kind: String,
        name: Option<String>,
        timeout: Option<Duration>,
        restart: Restart,
    ) -> Result<Context, BootError> {
        if self.inner.stopping.load(Ordering::Acquire) {
            return Err(BootError::start(how.target(&kind), "the runtime is shutting down", None));
        }
        let (id, ids) = self.allocate(&how.target(&kind))?;
        let name = name.unwrap_or_else(|| format!("{}.{id}", kind.split_whitespace().next().unwrap_or("context")));
        let (via, hops, route) = match &how {
            How::Via { parent, .. } => {
                (Some(parent.id()), self.inner.contexts.above(parent.id()), format!("{} → {name}", parent.route()))
            }
            How::Direct(_) => (None, Vec::new(), format!("{} → {name}", self.root_name())),
        };
        let target = kind.clone();
        let status = Status { state: State::Connecting, hello: None, uploaded: None, generation: 0 };
        let (status_tx, status_rx) = watch::channel(status);
        let (events, _) = broadcast::channel(context::EVENTS);
        let (ready_tx, ready_rx) = oneshot::channel();
        // Dropped with this future: a caller that gives up stops the start (cancel safety).
        let (_waiting, caller_gone) = oneshot::channel::<()>();
        let span = actor::span(id, &name);
        // The records this context sends are logged in its span.
        hypha_bootstrap::log::register_span(&self.inner.router, id, span.clone());
        let actor = {
            let (name, router, io, events) =
                (name.clone(), self.inner.router.clone(), self.inner.io.clone(), events.clone());
            Supervisor::start_in_arbiter(&self.inner.arbiter, move |_| Lifecycle {
                id,
                span,
                name,
                how,
                ids,
                hops,
                router,
                io,
                timeout,
                restart,
                attempt: 0,
                caller_gone: Some(caller_gone),
                status: status_tx,
                events,
                ready: Some(ready_tx),
                process: None,
                link: None,
                stopping: None,
                done: false,
            })
        };
        // Known from now on, so a shutdown reaches a context still starting too, until it has
        // ended for good (failed, given up on, lost, shut down).
        self.inner.contexts.insert(id, actor.clone(), via);
        let (rt, mut ended) = (Arc::downgrade(&self.inner), status_rx.clone());
        self.inner.io.spawn(async move {
            let _ = ended.wait_for(|s| s.state.is_terminal()).await.map(drop);
            if let Some(rt) = rt.upgrade() {
                rt.contexts.remove(id);
                hypha_bootstrap::log::forget_span(&rt.router, id);
            }
        });
        let stopped = || BootError::start(name.clone(), "the runtime has stopped", None);
        let (hello, _) = ready_rx.await.map_err(|_| stopped())??;
        let ctx = Context::new(context::Inner {
            id,
            name,
            router: self.inner.router.clone(),
            actor,
            status: status_rx,
            events,
            restarts: restart != Restart::Never,
            first: Arc::new(hello),
            route,
            target,
        });
        Ok(ctx)
    }

    /// Shut every context down (each gets [`DEFAULT_GRACE`]) and stop the actor thread.
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        let actors = self.inner.contexts.drain();
        let mut waits = tokio::task::JoinSet::new();
        for actor in actors {
            waits.spawn(async move { actor.send(Shutdown { grace: DEFAULT_GRACE }).await });
        }
        while waits.join_next().await.is_some() {}
        self.inner.system.stop();
        let thread = self.inner.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Starting contexts from handler code: `cx.start(method)` is [`Runtime::start`] in the context
/// the handler runs in, whose children the new contexts are (their ids come from its block).
pub trait StartFrom {
    /// Start a context with `method`, a child of this one (or, with `.via(&ctx)`, of one it
    /// started).
    fn start<M: Method + 'static>(&self, method: M) -> Start<M>;
}

impl StartFrom for Cx {
    fn start<M: Method + 'static>(&self, method: M) -> Start<M> {
        Start::new(Runtime::of(self), method)
    }
}

/// Call `req` in every context at once; the request is encoded once. Results come back in the order
/// of `contexts`.
pub async fn call_all<R: Request>(contexts: &[Context], req: &R) -> Vec<Result<R::Response, CallError>> {
    let encoded = match EncodedRequest::new(req) {
        Ok(e) => e,
        Err(e) => {
            let msg = e.to_string();
            return contexts.iter().map(|_| Err(CallError::Encode { handler: R::NAME, reason: msg.clone() })).collect();
        }
    };
    let mut set = tokio::task::JoinSet::new();
    for (i, ctx) in contexts.iter().enumerate() {
        let (ctx, req) = (ctx.clone(), encoded.clone());
        set.spawn(async move { (i, ctx.call_encoded(&req).await) });
    }
    let mut out: Vec<Option<Result<R::Response, CallError>>> = contexts.iter().map(|_| None).collect();
    while let Some(done) = set.join_next().await {
        if let Ok((i, res)) = done {
            out[i] = Some(res);
        }
    }
    out.into_iter()
        .zip(contexts)
        .map(|(r, ctx)| {
            r.unwrap_or_else(|| {
                Err(CallError::Disconnected {
                    context: ctx.id(),
                    name: ctx.name().into(),
                    reason: "the call task failed".into(),
                })
            })
        })
        .collect()
}

fn start_actix() -> std::io::Result<(System, ArbiterHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new().name("hypha-actors".into()).spawn(move || {
        let runner = System::new();
        let _ = tx.send((System::current(), actix::Arbiter::current()));
        let _ = runner.run();
    })?;
    let (system, arbiter) = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|e| std::io::Error::other(format!("actor thread did not report: {e}")))?;
    Ok((system, arbiter, thread))
}

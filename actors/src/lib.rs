//! hypha's actors: every context is an actix actor, behind `Send` async handles.
//!
//! [`Runtime`] is the controller (context 0). It runs an actix system on a thread of its own, where
//! one [`ContextActor`](State) per context owns that context's lifecycle: starting it with a
//! [`Method`], watching its link, reaping its process, shutting it down ([`State`]). The byte
//! pumping and the calls themselves run as tokio tasks on the runtime the program already uses, so
//! a call is never delayed by a hop through the actor thread.
//!
//! ```no_run
//! use hypha_actors::Runtime;
//! use hypha_bootstrap::Whoami;
//! use hypha_runtime::Handlers;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let handlers = Handlers::new();
//!     hypha_bootstrap::run_if_agent(&handlers);
//!     let rt = Runtime::start(handlers)?;
//!     let ctx = rt.local().await?;
//!     let who = ctx.call(Whoami).await?;
//!     println!("context {}: pid {} on {}", ctx.id(), who.pid, who.host);
//!     rt.shutdown().await;
//!     Ok(())
//! }
//! ```

mod actor;
mod context;
mod registry;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, ArbiterHandle, System};
use hypha_bootstrap::builds::{BuildError, BuildRequest};
use hypha_bootstrap::{AgentLoans, AgentMessage, BootError, Identity, Local, Method, MethodSpec, Ssh};
use hypha_runtime::frame::DEFAULT_MAX_FRAME;
use hypha_runtime::{CallError, EncodedRequest, Handlers, Request, Router, RouterConfig};
use tokio::sync::{oneshot, watch};
use tracing::info_span;

pub use actor::{Exit, State};
pub use context::{Context, DEFAULT_GRACE};

use actor::{ContextActor, Shutdown, Start};
use registry::Registry;

/// Ids the controller gives out itself lie below this; above it, blocks for the contexts to give to
/// children they start by themselves.
const FIRST_BLOCK: u32 = 1 << 24;
/// Ids in each context's block.
const ID_BLOCK: u32 = 1 << 12;

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

    /// Serve the executable at `path` to hosts of architecture `arch` (`aarch64`, `x86_64`,
    /// `arm`, ...; `uname -m` names like `arm64` work too): a build of this same program for
    /// that architecture, best static (hypha's `scripts/build-agents.sh` makes them). Contexts
    /// started via another context get it from there; it crosses each link to a parent once,
    /// when a first child needs it. [`Runtime::start_with`] checks that it is an executable for
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
        }
    }
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// `Runtime::start` was called outside a tokio runtime.
    #[error("Runtime::start must be called from within a tokio runtime")]
    NoTokio,
    /// This program's executable could not be read to hash it.
    #[error("cannot hash this executable: {0}")]
    Exe(std::io::Error),
    /// The actor thread did not start.
    #[error("cannot start the actor thread: {0}")]
    Actors(std::io::Error),
    /// A build named with [`Options::agent_for`] cannot serve as one.
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// The controller: context 0, parent of the contexts it starts. Cheap to clone.
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
    options: Options,
    next_id: AtomicU32,
    next_block: AtomicU32,
    contexts: Registry,
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

impl Runtime {
    /// Start the controller with `handlers` (the same value given to `run_if_agent`) and default
    /// [`Options`]. Call it from within a tokio runtime: links and calls run there.
    pub fn start(handlers: Handlers) -> Result<Runtime, StartError> {
        Self::start_with(handlers, Options::default())
    }

    /// [`Runtime::start`] with explicit [`Options`].
    pub fn start_with(handlers: Handlers, options: Options) -> Result<Runtime, StartError> {
        let io = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoTokio)?;
        hypha_bootstrap::exe_hash().map_err(StartError::Exe)?;
        for (arch, path) in &options.agents {
            hypha_bootstrap::builds::add_build(arch, path)?;
        }
        let (system, arbiter, thread) = start_actix().map_err(StartError::Actors)?;
        let cfg = RouterConfig::new(0, Vec::new(), Identity::current().origin())
            .with_max_frame(options.max_frame)
            .with_link_timeout(options.link_timeout)
            .with_call_timeout(options.call_timeout);
        let router = Router::new(cfg, hypha_bootstrap::install_builtins(handlers));
        // Hops started via a context sign with the agents lent to them; they check their loans.
        router.open_handler_to_descendants(AgentMessage::NAME);
        // Parents of contexts started via them fetch the builds for their children from here.
        router.open_handler_to_descendants(BuildRequest::NAME);
        Ok(Runtime {
            inner: Arc::new(Inner {
                router,
                io,
                system,
                arbiter,
                thread: Mutex::new(Some(thread)),
                options,
                next_id: AtomicU32::new(1),
                next_block: AtomicU32::new(FIRST_BLOCK),
                contexts: Registry::default(),
            }),
        })
    }

    /// The controller's router.
    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    /// Start a local context: this program's own binary as a child process.
    pub async fn local(&self) -> Result<Context, BootError> {
        self.spawn(Local::default()).await
    }

    /// Start a context on another host over SSH, in process (async-ssh2-lite).
    pub async fn ssh(&self, opts: Ssh) -> Result<Context, BootError> {
        self.spawn(opts).await
    }

    /// Start a context with any [`Method`] ([`Local`], [`Ssh`], `OpenSsh`, or one of your own).
    pub async fn spawn(&self, method: impl Method + 'static) -> Result<Context, BootError> {
        let kind = method.target();
        self.launch(Start::Direct(Box::new(method)), &kind).await
    }

    /// Start a context *from* `parent` (Mitogen's `via=`): `parent` runs the method from its own
    /// host and serves it the build for its architecture (its own, or one of [`Options::agent_for`]
    /// it fetches from here once); calls route through `parent`. Credentials and known hosts
    /// for an ssh hop are read here and travel in memory.
    pub async fn spawn_via(&self, parent: &Context, method: impl Into<MethodSpec>) -> Result<Context, BootError> {
        let spec = method.into();
        let kind = spec.method().target();
        // ssh-agents are lent to `parent` until the start has answered.
        let mut loans = AgentLoans::new(self.inner.router.id(), parent.id());
        let spec = spec.for_remote(&mut loans).map_err(|e| BootError::Start {
            target: kind.clone(),
            reason: e.to_string(),
            source: Some(Box::new(e)),
        })?;
        // The hops above `parent` must hear of the new context's ids before its announcement.
        let hops = self.inner.contexts.above(parent.id());
        self.launch(Start::Via { parent: parent.id(), hops, spec: Box::new(spec), loans }, &kind).await
    }

    async fn launch(&self, start: Start, kind: &str) -> Result<Context, BootError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let via = match &start {
            Start::Via { parent, .. } => Some(*parent),
            Start::Direct(_) => None,
        };
        // Every context gets a block of ids for children it may start by itself.
        let first = self.inner.next_block.fetch_add(ID_BLOCK, Ordering::Relaxed);
        let ids = (first, first.saturating_add(ID_BLOCK));
        let name = format!("{}.{id}", kind.split_whitespace().next().unwrap_or("context"));
        let span = info_span!("context", id, name = %name, host = tracing::field::Empty);
        let (state_tx, state_rx) = watch::channel(State::Connecting);
        let (ready_tx, ready_rx) = oneshot::channel();
        // Dropped with this future: a caller that gives up stops the start (cancel safety).
        let (_waiting, caller_gone) = oneshot::channel::<()>();
        let actor = {
            let (name, router, io) = (name.clone(), self.inner.router.clone(), self.inner.io.clone());
            let o = &self.inner.options;
            let (max_frame, link_timeout, call_timeout) = (o.max_frame, o.link_timeout, o.call_timeout);
            ContextActor::start_in_arbiter(&self.inner.arbiter, move |_| ContextActor {
                id,
                name,
                start: Some(start),
                ids,
                router,
                io,
                max_frame,
                link_timeout,
                call_timeout,
                caller_gone: Some(caller_gone),
                state: state_tx,
                ready: Some(ready_tx),
                span,
                process: None,
                link: None,
                stopping: None,
            })
        };
        let stopped =
            || BootError::Start { target: name.clone(), reason: "the runtime has stopped".into(), source: None };
        let hello = ready_rx.await.map_err(|_| stopped())??;
        self.inner.contexts.insert(id, actor.clone(), via);
        let ctx = Context::new(id, name, hello, self.inner.router.clone(), actor, state_rx);
        let (rt, watched) = (Arc::downgrade(&self.inner), ctx.clone());
        self.inner.io.spawn(async move {
            watched.closed().await;
            if let Some(rt) = rt.upgrade() {
                rt.contexts.remove(watched.id());
            }
        });
        Ok(ctx)
    }

    /// Shut every context down (each gets [`DEFAULT_GRACE`]) and stop the actor thread.
    pub async fn shutdown(&self) {
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

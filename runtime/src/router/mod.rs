//! The router: links to neighbouring contexts, the route table, reply handles and call dispatch.
//!
//! Every context (the controller and each agent) has one [`Router`]. A *link* is a byte stream to
//! a neighbour: the parent, or a child. Each link has a reader task, which decodes frames and hands
//! them to [`Router`] for delivery, a writer task, which batches queued frames into few writes, and
//! a watchdog, which sends heartbeats and closes a link whose peer went silent or stopped reading.
//! Frames for this context are dispatched by handle; frames for other contexts are forwarded along
//! the route table (`dst` → link), and frames for ids not in the table go to the parent.
//!
//! Authority comes from where a frame arrived: its source must be routed through the link it came
//! on (the reverse-path check), and what it may do follows from where that source sits in the tree
//! (an ancestor may call and command; a descendant may call what this context opened to it; route
//! announcements come only from child links and only for ids granted below them). No header field
//! carries authority.
//!
//! When a link closes, every call waiting on an answer through it fails with
//! [`CallError::Disconnected`](crate::CallError::Disconnected) naming the context, and its routes
//! are removed.
//!
//! One concern a file: `links` (attaching and closing links, each link's reader, queueing frames
//! on the link towards a destination), `outbox` (one link's outgoing queue, its writer and its
//! watchdog), `deliver` (what becomes of each frame a link reads), `routes` (the route table,
//! grants, route watchers and control messages), `calls` (calls this context makes and the answers
//! they wait for), `dispatch` (calls this context serves), `ids` (the ids this context gives out),
//! `drain` (in-flight calls, draining and shutdown) and `extensions` (values the layers above keep
//! with a router).

mod calls;
mod deliver;
mod dispatch;
mod drain;
mod extensions;
mod ids;
mod links;
mod outbox;
mod routes;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, watch, Notify};

use self::calls::Pending;
use self::extensions::Extensions;
use self::links::Link;
use self::routes::Grant;
use crate::frame::{self, handles};
use crate::proto::{Control, IdBlock};
use crate::stream::Shared;
use crate::{ContextId, Handlers};

pub use calls::EncodedRequest;
pub(crate) use calls::{decode_reply, PendingGuard};
pub use links::{CloseReason, LinkHandle, LinkId, LinkOptions, Role};

/// Default [`RouterConfig::link_timeout`].
pub const DEFAULT_LINK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`RouterConfig::call_timeout`].
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Who this router is.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RouterConfig {
    /// This context's id (0 for the controller).
    pub id: ContextId,
    /// Ancestors, nearest first. They may call and command this context.
    pub ancestors: Vec<ContextId>,
    /// Where this context runs, for errors: `user@host pid N`.
    pub origin: String,
    /// Largest frame accepted or sent on any link.
    pub max_frame: usize,
    /// A link that brings nothing for this long (give or take a quarter) is lost, and so is one
    /// whose peer takes nothing from it for as long. Every link sends a heartbeat each quarter of
    /// it, so a quiet peer is not a silent one. Both ends of a link should agree: a parent passes
    /// its own in the Init.
    pub link_timeout: Duration,
    /// How long a call waits for its answer (a stream: for anything to move) unless the caller
    /// says otherwise.
    pub call_timeout: Duration,
}

impl RouterConfig {
    /// Context `id` with these ancestors (nearest first), the default frame limit and deadlines.
    pub fn new(id: ContextId, ancestors: Vec<ContextId>, origin: impl Into<String>) -> Self {
        RouterConfig {
            id,
            ancestors,
            origin: origin.into(),
            max_frame: frame::DEFAULT_MAX_FRAME,
            link_timeout: DEFAULT_LINK_TIMEOUT,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// Set [`RouterConfig::max_frame`].
    pub fn with_max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Set [`RouterConfig::link_timeout`].
    pub fn with_link_timeout(mut self, timeout: Duration) -> Self {
        self.link_timeout = timeout;
        self
    }

    /// Set [`RouterConfig::call_timeout`].
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }
}

/// One context's router. Cheap to clone; all clones are the same router.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("id", &self.inner.cfg.id)
            .field("links", &self.inner.links.len())
            .field("pending", &self.inner.pending.len())
            .finish()
    }
}

struct Inner {
    cfg: RouterConfig,
    handlers: Handlers,
    links: DashMap<LinkId, Link>,
    routes: DashMap<ContextId, LinkId>,
    /// Link to the parent, 0 when there is none (the controller).
    parent: AtomicU64,
    pending: DashMap<u32, Pending>,
    /// Streams of calls this context serves, by (caller, caller's reply handle).
    inbound: DashMap<(ContextId, u32), Arc<Shared>>,
    /// Which ids may be announced from where (see `Router::grant`), by first id.
    grants: Mutex<BTreeMap<ContextId, Grant>>,
    /// Who waits to hear that a context became unreachable.
    watchers: DashMap<ContextId, watch::Sender<Option<String>>>,
    next_handle: AtomicU32,
    next_link: AtomicU64,
    accepting: AtomicBool,
    /// Whether descendants may call too (see `accept_calls_from_descendants`).
    open_to_descendants: AtomicBool,
    /// Handlers descendants may call even so (see `open_handler_to_descendants`).
    open_handlers: std::sync::RwLock<Vec<String>>,
    in_flight: AtomicUsize,
    idle: Notify,
    control: Mutex<Option<mpsc::UnboundedSender<Control>>>,
    /// Ids this context may give to children it starts by itself.
    ids: Mutex<IdBlock>,
    /// Values the layers above keep here (see `Router::extension`).
    extensions: Mutex<Extensions>,
}

impl Router {
    /// A router with no links yet.
    pub fn new(cfg: RouterConfig, handlers: Handlers) -> Self {
        Router {
            inner: Arc::new(Inner {
                cfg,
                handlers,
                links: DashMap::new(),
                routes: DashMap::new(),
                parent: AtomicU64::new(0),
                pending: DashMap::new(),
                inbound: DashMap::new(),
                grants: Mutex::new(BTreeMap::new()),
                watchers: DashMap::new(),
                next_handle: AtomicU32::new(handles::FIRST_DYNAMIC),
                next_link: AtomicU64::new(1),
                accepting: AtomicBool::new(true),
                open_to_descendants: AtomicBool::new(false),
                open_handlers: Default::default(),
                in_flight: AtomicUsize::new(0),
                idle: Notify::new(),
                control: Mutex::new(None),
                ids: Mutex::new((0, 0)),
                extensions: Mutex::new(Extensions::new()),
            }),
        }
    }

    /// This context's id.
    pub fn id(&self) -> ContextId {
        self.inner.cfg.id
    }

    /// This router's configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.inner.cfg
    }

    /// Number of calls waiting for an answer (for tests and metrics).
    pub fn pending_calls(&self) -> usize {
        self.inner.pending.len()
    }

    /// Number of contexts routed below this one (for tests and metrics).
    pub fn route_count(&self) -> usize {
        self.inner.routes.len()
    }

    /// Number of streams of calls this context serves that are still open (for tests and metrics).
    pub fn open_streams(&self) -> usize {
        self.inner.inbound.len()
    }
}

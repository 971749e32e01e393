//! Protocol messages that are not user calls: the handshake and control.

use serde::{Deserialize, Serialize};

use crate::ContextId;

/// Version of the wire protocol. A peer speaking another version is refused at the handshake.
pub const PROTOCOL_VERSION: u32 = 2;

/// What an agent says about itself right after its sync marker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub protocol: u32,
    /// Content hash of the agent's own executable (hex), see `hypha_bootstrap::exe`.
    pub binary_hash: String,
    /// Process id on its host.
    pub pid: u32,
    /// User name the agent runs as.
    pub user: String,
    /// Host name.
    pub host: String,
    /// Machine architecture, as `uname -m` says it (`x86_64`, `aarch64`, ...).
    pub arch: String,
}

/// Context ids `[start, end)` a context may give to the children it starts by itself.
pub type IdBlock = (ContextId, ContextId);

/// The parent's answer to [`Hello`]: who the agent is in the tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Init {
    /// The agent's context id.
    pub id: ContextId,
    /// Its ancestors, nearest (the parent) first, ending with the controller (0).
    pub ancestors: Vec<ContextId>,
    /// A human name for logs and errors.
    pub name: String,
    /// Largest frame the agent may send or accept.
    pub max_frame: u32,
    /// Ids for children the agent starts by itself, allocated by the controller.
    pub ids: IdBlock,
    /// A link that brings nothing for this long is lost; heartbeats keep quiet links alive
    /// (milliseconds, see `RouterConfig::link_timeout`).
    pub link_timeout_ms: u64,
    /// Default deadline of the calls the agent makes (milliseconds, see
    /// `RouterConfig::call_timeout`).
    pub call_timeout_ms: u64,
    /// The most verbose of the agent's own log events it sends to the controller: 0 none, 1 error,
    /// 2 warn, 3 info, 4 debug, 5 trace (see `hypha_bootstrap::log`).
    pub log_level: u8,
}

/// Control messages, sent to [`crate::frame::handles::CONTROL`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Control {
    /// Stop taking calls, let calls in flight finish for up to `grace_ms`, then exit.
    Shutdown {
        /// How long calls in flight may take to finish.
        grace_ms: u64,
    },
    /// Context `id` is now reachable through the link this arrived on (sent up the tree by the
    /// context that started it, and by each ancestor in turn).
    AddRoute {
        /// The new context.
        id: ContextId,
    },
    /// Ids `ids` may be announced (`AddRoute`) only from below context `under`: sent by the
    /// controller to each hop above a context it starts via another, before the start, so that
    /// every hop on the way can judge the announcement.
    Grant {
        /// The ids: a context's own id, or its block.
        ids: IdBlock,
        /// The context below which they may appear.
        under: ContextId,
    },
    /// Context `id`, behind the link this arrived on, is gone because hop `lost` was lost.
    DelRoute {
        /// The context no longer reachable.
        id: ContextId,
        /// The hop whose loss cut it off (`id` itself, or an ancestor of it).
        lost: ContextId,
        /// Which hop, by name, and why.
        reason: String,
    },
}

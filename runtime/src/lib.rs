//! hypha's runtime: frames, routing and typed calls, with no SSH and no actors in it.
//!
//! Every hypha process — the controller and each agent — is a *context* with a numeric id and one
//! [`Router`]. The router owns *links*: byte streams (anything `AsyncRead + AsyncWrite`) to its
//! parent and its children. Over a link travel [`frame`]s: a fixed header (destination, source,
//! handle, reply-to, flags) and a msgpack body. A frame's authority comes from the link it
//! arrived on, never from its header.
//!
//! - [`frame`]: pure encode/decode, with a maximum frame size checked before allocating.
//! - [`Router`]: the route table, reply handles, dispatch of calls to [`Handlers`], and the
//!   reader/writer task of each link.
//! - [`Request`] / [`Handlers`]: typed calls; a request type names its response type and a stable
//!   handler name, so one registration serves every copy of the binary.
//! - [`stream`]: byte streams belonging to a call, flow-controlled with credit: one way (upload,
//!   download) or both at once (duplex).
//! - [`items`]: typed streams of items over them, either way.
//!
//! Because links are generic, two routers joined by an in-memory pipe make a complete system:
//!
//! ```
//! use hypha_runtime::{Handlers, LinkOptions, Ping, Role, Router, RouterConfig};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let cfg = |id, ancestors| RouterConfig::new(id, ancestors, format!("test {id}"));
//! let parent = Router::new(cfg(0, vec![]), Handlers::new());
//! let child = Router::new(cfg(1, vec![0]), Handlers::new());
//! let (a, b) = tokio::io::duplex(64 << 10);
//! let link = |role, a| {
//!     let (r, w) = tokio::io::split(a);
//!     (r, w, LinkOptions { role, name: "pipe".into(), span: tracing::Span::none(), initial: Default::default() })
//! };
//! let (r, w, o) = link(Role::Child(1), a);
//! parent.attach(r, w, o);
//! let (r, w, o) = link(Role::Parent, b);
//! child.attach(r, w, o);
//! parent.call(1, &Ping).await.unwrap();
//! # }
//! ```

pub mod call;
mod codec;
mod error;
pub mod frame;
pub mod items;
mod kind;
pub mod logged;
pub mod proto;
mod router;
mod secret;
pub mod stream;

pub use call::{CallError, Cx, HandlerError, Handlers, Ping, RemoteError, RemoteErrorKind, Request};
pub use items::{Feed, ItemReceiver, ItemSender, Items, Takes, Yields};
pub use kind::{ErrorKind, KindedError};
pub use router::{
    CloseReason, EncodedRequest, LinkHandle, LinkId, LinkOptions, Role, Router, RouterConfig, DEFAULT_CALL_TIMEOUT,
    DEFAULT_LINK_TIMEOUT,
};
pub use secret::Secret;
pub use stream::{ByteReceiver, ByteSender, StreamError};

/// A context's id: 0 is the controller; the controller allocates the rest.
pub type ContextId = u32;

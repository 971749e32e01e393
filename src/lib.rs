//! hypha: run typed code on many machines at once, with nothing installed on them beforehand.
//!
//! A program built with hypha starts copies of itself as *agents* — local child processes today,
//! SSH, sudo and chains of them as the project grows — and exchanges typed messages with them over
//! the agents' stdin and stdout. This crate re-exports the public API of the workspace:
//!
//! - [`runtime`]: frames, the router, typed calls ([`Request`], [`Handlers`]) and byte streams;
//! - [`bootstrap`]: methods that start agents ([`Local`]), the handshake, and [`run_if_agent`];
//! - [`actors`]: the controller ([`Runtime`]) and per-context handles ([`Context`]).
//!
//! The crate's README follows, with the API example (run as a doctest).
#![doc = include_str!("../README.md")]

/// A static (musl) build's allocator, for every program that uses hypha (its agents are the same
/// program): musl's own allocator halves bulk transfer rates, as its `free` of a large buffer hands
/// the pages back to the kernel and the next buffer faults them in again. The default feature
/// `mimalloc`; a program with a `#[global_allocator]` of its own turns it off
/// (`default-features = false`).
#[cfg(all(feature = "mimalloc", target_env = "musl"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Node sets: many targets in ClusterShell's notation (`admin@web[01-20]:2222,@db!db3`), parsed and folded.
pub mod nodeset;

pub use hypha_actors as actors;
pub use hypha_actors::{files, fleet};
pub use hypha_bootstrap as bootstrap;
pub use hypha_bootstrap::process;
pub use hypha_runtime as runtime;

pub use hypha_actors::{
    call_all, Context, Event, Events, Exit, Options, Restart, Runtime, Start, StartError, StartFrom, State,
};
pub use hypha_bootstrap::{
    run_if_agent, Agent, Auth, BootError, Destination, HostKeyPolicy, Identity, Local, Method, OpenSsh, Portable,
    RegisterMethod, Ssh, SshConfigFile, Su, Sudo, Whoami,
};
pub use hypha_runtime::{
    ByteReceiver, ByteSender, CallError, ContextId, Cx, ErrorKind, Feed, HandlerError, Handlers, ItemReceiver,
    ItemSender, Items, KindedError, Ping, RemoteError, RemoteErrorKind, Request, Secret, StreamError, Takes, Yields,
};

/// What most programs import: `use hypha::prelude::*;` brings the runtime, the handle, requests
/// and handlers, and the traits that add `cx.start(..)` to handler code and `.method::<M>()` to
/// [`Handlers`].
pub mod prelude {
    pub use crate::{
        Context, Cx, ErrorKind, HandlerError, Handlers, Local, Method, Portable, RegisterMethod, Request, Restart,
        Runtime, StartFrom, Takes, Yields,
    };
}

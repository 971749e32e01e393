//! hypha's bootstrap: turning "a host and a method" into a byte stream with an agent on the far
//! end, and the agent's own `main`.
//!
//! - [`Method`] is how a parent starts an agent; [`Local`] spawns this binary as a child process.
//!   [`boot`] runs a method and the [handshake]: the agent prints a sync marker and a Hello
//!   (protocol version, binary hash, pid, user, host, arch), the parent checks it and answers with
//!   an Init (the agent's id and ancestors).
//! - [`Portable`] methods travel: registered by name ([`RegisterMethod`]), any context can be
//!   asked to start a child with one ([`Spawn`], in `via`). [`through_command`] is the building
//!   block of methods of one's own that reach the far side through a command.
//! - [`run_if_agent`] is the agent's entry point: one call at the top of the user's `main`.
//! - [`Identity`] and [`exe_hash`] describe this process; [`Whoami`] asks another context.
//! - [`log`]: every agent sends its `tracing` events and its stray stderr lines to the controller,
//!   which logs them in that context's span.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hypha_bootstrap::BootError> {
//! use hypha_bootstrap::{boot, Local};
//! use hypha_runtime::proto::Init;
//!
//! let booted = boot(&Local::default(), 1 << 20, |_hello| Init {
//!     id: 1, ancestors: vec![0], name: "local.1".into(), max_frame: 1 << 20, ids: (0, 0),
//!     link_timeout_ms: 30_000, call_timeout_ms: 300_000, log_level: 3,
//! }).await?;
//! println!("agent pid {}", booted.hello.pid);
//! # Ok(()) }
//! ```

mod agent;
pub mod builds;
mod builtins;
mod child;
mod destination;
mod error;
pub mod fdio;
pub mod files;
pub mod forward;
pub mod handshake;
mod identity;
mod limits;
mod local;
pub mod log;
mod method;
mod openssh;
pub mod process;
mod ssh;
pub mod stub;
mod su;
mod sudo;
mod via;

pub use agent::{init_logging, run_if_agent, AGENT_FLAG, LOG_ENV};
pub use builtins::{install as install_builtins, Whoami};
pub use child::Exit;
#[doc(hidden)]
pub use child::{reap, start_child, Child, ChildInit};
pub use destination::{Destination, DestinationError};
pub use error::{BootError, Cause};
pub use forward::{Agent, AgentLoans, AgentMessage};
pub use identity::{exe_hash, hash_file, hello, Identity};
pub use limits::raise_open_files;
pub use local::Local;
pub use method::{boot, through_command, with_stderr, Booted, BoxFuture, Method, StderrTail, Transport};
pub use openssh::OpenSsh;
pub use ssh::{Auth, HostKeyPolicy, Ssh, SshConfigFile, SshStream, DEFAULT_CIPHERS};
pub use su::Su;
pub use sudo::Sudo;
#[doc(hidden)]
pub use via::ask;
pub use via::{Portable, RegisterMethod, Spawn, Spawned};

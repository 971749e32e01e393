//! The agent: what this binary does when a parent started it as a context.
//!
//! Call [`run_if_agent`] first thing in `main`, before anything else writes to stdout:
//!
//! ```no_run
//! // First thing in `main`:
//! let handlers = hypha_runtime::Handlers::new(); // .on(your_handler)...
//! hypha_bootstrap::run_if_agent(&handlers); // returns only in the controller
//! // ... the controller's own work
//! ```
//! In a process started as an agent it never returns: it serves calls until its parent tells it to
//! shut down or goes away, then exits the process. Without a parent stream there is nothing to do,
//! so an agent never outlives its parent. Its `tracing` events and whatever it writes to stderr go
//! to the controller as log records ([`crate::log`]).

use std::time::Duration;

use hypha_runtime::proto::Control;
use hypha_runtime::{Handlers, LinkOptions, Request, Role, Router, RouterConfig};
use tokio::sync::mpsc;
use tracing::{debug, info_span, Instrument};

use crate::fdio::{take_stdio, FdStream};
use crate::log::AgentLogs;
use crate::{builtins, handshake, identity, BootError, Identity};

/// The first argument of a process started as an agent; the second is the handshake nonce
/// (`<exe> --hypha-agent NONCE`). An argument, not an environment variable: nothing the handlers
/// start inherits it, and the agent never has to change its environment.
pub const AGENT_FLAG: &str = "--hypha-agent";
/// If set (to `error`, `warn`, `info`, `debug` or `trace`), an agent also writes its log lines at
/// that level to the stderr it was started with (besides forwarding them, see [`crate::log`]).
pub const LOG_ENV: &str = "HYPHA_LOG";

/// If this process was started as an agent (its arguments are [`AGENT_FLAG`] and a nonce), serve
/// as one and exit; otherwise return at once.
///
/// Call it before the program prints anything. It works before or inside a tokio runtime (for
/// example first thing in a `#[tokio::main]` function); before one, the agent starts a little faster.
pub fn run_if_agent(handlers: &Handlers) {
    let mut args = process_args().into_iter().skip(1);
    let (Some(flag), Some(nonce)) = (args.next(), args.next()) else {
        return;
    };
    if flag != AGENT_FLAG {
        return;
    }
    let Some(nonce) = nonce.to_str().map(str::to_owned) else {
        eprintln!("hypha agent (pid {}): the nonce is not UTF-8", std::process::id());
        std::process::exit(1);
    };
    // A peer that goes away mid-write is an error on that link, never the death of the agent (a
    // program whose `main` did not set this up yet, such as one calling this from a constructor,
    // would otherwise die of SIGPIPE).
    // SAFETY: setting a signal's disposition to "ignore" has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let result = if tokio::runtime::Handle::try_current().is_ok() {
        // Called inside `#[tokio::main]`: the agent needs a runtime of its own, which cannot be
        // started on a thread that already drives one. The caller's runtime stays idle.
        let (handlers, nonce) = (handlers.clone(), nonce.clone());
        std::thread::spawn(move || run(&handlers, &nonce))
            .join()
            .unwrap_or_else(|_| Err(BootError::start("agent", "the agent thread panicked", None)))
    } else {
        run(handlers, &nonce)
    };
    if let Err(e) = result {
        // Last words: no log record carries them any more.
        crate::fdio::restore_stderr();
        eprintln!("hypha agent (pid {}): {e}", std::process::id());
        std::process::exit(1);
    }
    std::process::exit(0);
}

fn run(handlers: &Handlers, nonce: &str) -> Result<(), BootError> {
    let io = |source| BootError::Io { target: "agent start-up".into(), source };
    let (input, output) = take_stdio().map_err(io)?;
    let logs = AgentLogs::install();
    // One thread: every wake-up stays on it, which halves a call's round trip compared with a
    // multi-threaded runtime. Handlers that compute for long should use `spawn_blocking`.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(io)?;
    let handlers = builtins::install(handlers.clone());
    rt.block_on(async move {
        let mut reader = FdStream::new(input).map_err(io)?;
        let mut writer = FdStream::new(output).map_err(io)?;
        let hello = identity::hello().map_err(io)?;
        let (init, leftover) =
            handshake::agent(&mut reader, &mut writer, nonce, &hello, Duration::from_secs(60)).await?;
        let span = info_span!("context", id = init.id, name = %init.name, host = %hello.host);
        serve(handlers, init, reader, writer, leftover, logs).instrument(span).await;
        Ok(())
    })
}

/// This process's arguments. Before `main` (a constructor calling [`run_if_agent`]) the standard
/// library has them only on glibc; on musl they are read from `/proc/self/cmdline`.
fn process_args() -> Vec<std::ffi::OsString> {
    let args: Vec<_> = std::env::args_os().collect();
    if !args.is_empty() {
        return args;
    }
    use std::os::unix::ffi::OsStrExt;
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    let Some(cmdline) = cmdline.strip_suffix(&[0]) else { return Vec::new() };
    cmdline.split(|&b| b == 0).map(|a| std::ffi::OsStr::from_bytes(a).to_owned()).collect()
}

async fn serve(
    handlers: Handlers,
    init: hypha_runtime::proto::Init,
    reader: FdStream,
    writer: FdStream,
    leftover: bytes::BytesMut,
    logs: AgentLogs,
) {
    let level = crate::log::filter_from_code(init.log_level);
    logs.set_level(level);
    let cfg = RouterConfig::new(init.id, init.ancestors, Identity::current().origin())
        .with_max_frame(init.max_frame as usize)
        .with_link_timeout(Duration::from_millis(init.link_timeout_ms))
        .with_call_timeout(Duration::from_millis(init.call_timeout_ms));
    let router = Router::new(cfg, handlers);
    router.grant_ids(init.ids);
    // Its children forward at the level it was given.
    crate::log::set_forward_level(&router, level);
    logs.forward(router.clone());
    // Children started via this context by a context of its own may fetch builds from it.
    router.open_handler_to_descendants(crate::builds::BuildRequest::NAME);
    let (control_tx, mut control) = mpsc::unbounded_channel();
    router.set_control(control_tx);
    let opts =
        LinkOptions { role: Role::Parent, name: "parent".into(), span: tracing::Span::current(), initial: leftover };
    let mut parent = router.attach(reader, writer, opts);
    debug!("serving");
    tokio::select! {
        reason = parent.closed() => {
            debug!(%reason, "parent gone; exiting");
        }
        Some(Control::Shutdown { grace_ms }) = control.recv() => {
            let finished = router.drain(Duration::from_millis(grace_ms)).await;
            debug!(finished, "shutting down");
            logs.flush(&router, Duration::from_secs(1)).await;
            if let Some(writer) = router.close(parent.id(), hypha_runtime::CloseReason::Local("shutdown".into())) {
                let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
            }
        }
    }
}

/// Log to stderr at the level named by [`LOG_ENV`], if it is set: for a controller (agents set up
/// their own logging, see [`crate::log`]).
pub fn init_logging() {
    let Ok(level) = std::env::var(LOG_ENV) else {
        return;
    };
    let level = level.parse().unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(level).try_init();
}

//! Starting a child of this context, and reaping the process that carried it: the one path the
//! controller's actors and every via parent take. Not public API (hypha's actors use it; programs
//! start contexts with `rt.start(method)`), except [`Exit`].

use std::time::Duration;

use hypha_runtime::proto::{Hello, IdBlock, Init};
use hypha_runtime::{ContextId, LinkHandle, LinkOptions, Role, Router};
use tracing::Span;

use crate::{boot, BootError, Method};

/// Who a new child is: its id, its name, and the ids it may give to children of its own.
#[derive(Clone, Debug)]
pub struct ChildInit {
    /// The child's id.
    pub id: ContextId,
    /// Its name, as logs and errors show it.
    pub name: String,
    /// The ids it may give to children it starts by itself.
    pub ids: IdBlock,
}

/// A child that finished its handshake, attached to this context's router.
#[derive(Debug)]
pub struct Child {
    /// What it said about itself.
    pub hello: Hello,
    /// Bytes of agent uploaded to start it, or `None` if none were.
    pub uploaded: Option<u64>,
    /// Its link.
    pub link: LinkHandle,
    /// The local process carrying its stream (the agent itself, or an `ssh` client), if any: reap
    /// it with [`reap`] once the link has closed.
    pub process: Option<tokio::process::Child>,
}

/// How a local process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal, if it was killed by one.
    pub signal: Option<i32>,
}

/// Start a child of `router`'s context with `method`: boot it (its Init carries this context's
/// deadlines, frame size and forward level), let only its subtree announce the ids of its block, and attach its
/// link, which announces it to the ancestors before this returns.
pub async fn start_child(
    router: &Router,
    method: &dyn Method,
    child: &ChildInit,
    span: Span,
) -> Result<Child, BootError> {
    let cfg = router.config();
    let init = |_: &Hello| Init {
        id: child.id,
        ancestors: std::iter::once(router.id()).chain(cfg.ancestors.iter().copied()).collect(),
        name: child.name.clone(),
        max_frame: cfg.max_frame as u32,
        ids: child.ids,
        link_timeout_ms: millis(cfg.link_timeout),
        call_timeout_ms: millis(cfg.call_timeout),
        log_level: crate::log::filter_code(crate::log::forward_level(router)),
    };
    let booted = boot(method, cfg.max_frame, init).await?;
    let hello = booted.hello;
    span.record("host", hello.host.as_str());
    router.grant(child.ids, child.id);
    let opts = LinkOptions {
        role: Role::Child(child.id),
        name: format!("{}: {}, pid {}", child.name, method.target(), hello.pid),
        span,
        initial: booted.leftover,
    };
    let link = router.attach(booted.transport.reader, booted.transport.writer, opts);
    Ok(Child { hello, uploaded: booted.transport.uploaded, link, process: booted.transport.process })
}

/// Wait up to `patience` for `process` to exit, then kill it: a process that outlives its link
/// would be an orphan. Returns its exit, and whether it had to be killed.
///
/// Polls `waitpid(WNOHANG)` instead of awaiting `Child::wait`: tokio's wake-up for child exits is
/// process-global signal state that several runtimes in one process (tests, embedding programs)
/// can leave unserviced, and a lifecycle step must never hang on it.
pub async fn reap(process: Option<tokio::process::Child>, patience: Duration) -> (Option<Exit>, bool) {
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

async fn poll_exit(child: &mut tokio::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
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

/// A duration in whole milliseconds, as the Init carries it.
fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

//! Starting a context *from* another context (Mitogen's `via=`).
//!
//! The controller sends `hypha.spawn` ([`Spawn`]) to the context that is to be the parent. That
//! context runs the method from its own host and serves the child the build of the program for the
//! child's architecture: its own executable, or a build named in the request, which it fetches from
//! the context that asked, once, when a first child needs it ([`crate::builds`]). It lets only the
//! child's subtree announce the ids of the child's block (`Router::grant`), attaches the child's
//! link (which announces the new route to its ancestors, `Control::AddRoute`, before the answer, so
//! the answer cannot overtake it), and answers with the child's Hello.
//!
//! Credentials for an ssh hop travel inside the request, in memory: [`MethodSpec::for_remote`] turns
//! key files into [`Auth::KeyData`] and known_hosts into lines the hop checks against. The hop hands
//! the key to libssh2 from memory (`userauth_pubkey_memory`); nothing is written to its disk.

use std::time::Duration;

use hypha_runtime::proto::{Hello, IdBlock, Init};
use hypha_runtime::{ContextId, Cx, LinkOptions, Request, Role, Router};
use serde::{Deserialize, Serialize};
use tracing::info_span;

use crate::builds::{blocking, learn, Build, BuildRequest, Offer, Source};
use crate::forward::{relay_agents, AgentLoans, Relay};
use crate::stub::Payload;
use crate::{boot, exe_hash, BootError, Local, Method, OpenSsh, Ssh, Su, Sudo};

#[cfg(doc)]
use crate::Auth;

/// A method that can be sent to another context to run there.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MethodSpec {
    /// A child process of the parent context.
    Local(Local),
    /// SSH from the parent context's host, in process.
    Ssh(Ssh),
    /// The system `ssh` client on the parent context's host.
    OpenSsh(OpenSsh),
    /// Another user on the parent context's host.
    Sudo(Sudo),
    /// Another user on the parent context's host, with that user's password.
    Su(Su),
}

impl From<Su> for MethodSpec {
    fn from(m: Su) -> Self {
        MethodSpec::Su(m)
    }
}

impl From<Sudo> for MethodSpec {
    fn from(m: Sudo) -> Self {
        MethodSpec::Sudo(m)
    }
}

impl From<Local> for MethodSpec {
    fn from(m: Local) -> Self {
        MethodSpec::Local(m)
    }
}

impl From<Ssh> for MethodSpec {
    fn from(m: Ssh) -> Self {
        MethodSpec::Ssh(m)
    }
}

impl From<OpenSsh> for MethodSpec {
    fn from(m: OpenSsh) -> Self {
        MethodSpec::OpenSsh(m)
    }
}

impl MethodSpec {
    /// The method itself.
    pub fn method(&self) -> &dyn Method {
        match self {
            MethodSpec::Local(m) => m,
            MethodSpec::Ssh(m) => m,
            MethodSpec::OpenSsh(m) => m,
            MethodSpec::Sudo(m) => m,
            MethodSpec::Su(m) => m,
        }
    }

    /// Ready to run on another host (the context `loans` are made to): what this host holds goes
    /// along in memory (key files, known hosts), or is lent for the start (ssh-agents).
    pub fn for_remote(self, loans: &mut AgentLoans) -> std::io::Result<MethodSpec> {
        Ok(match self {
            MethodSpec::Ssh(m) => MethodSpec::Ssh(m.for_remote(loans)?),
            MethodSpec::OpenSsh(m) => MethodSpec::OpenSsh(m.for_remote(loans)?),
            other => other,
        })
    }
}

impl Method for MethodSpec {
    fn target(&self) -> String {
        self.method().target()
    }

    fn start<'a>(&'a self, nonce: &'a str) -> crate::BoxFuture<'a, Result<crate::Transport, BootError>> {
        self.method().start(nonce)
    }

    fn handshake_timeout(&self) -> Duration {
        self.method().handshake_timeout()
    }
}

/// Ask a context to start a child with `method` (a builtin, served by every context).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spawn {
    /// The child's id, allocated by the controller.
    pub id: ContextId,
    /// The child's name.
    pub name: String,
    /// How to start it.
    pub method: MethodSpec,
    /// Ids the child may give to children it starts by itself.
    pub ids: IdBlock,
    /// The builds of the program the asking context can serve, one per architecture; the parent
    /// offers them to the child's host and fetches the one it needs and lacks.
    pub builds: Vec<Offer>,
}

/// The started child.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spawned {
    /// What the child said about itself.
    pub hello: Hello,
    /// Bytes of agent uploaded to start it, if any.
    pub uploaded: Option<u64>,
}

impl Request for Spawn {
    type Response = Spawned;
    const NAME: &'static str = "hypha.spawn";
}

/// A duration in whole milliseconds, as the Init carries it.
pub(crate) fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// Ids given to each child a context starts by itself, out of its own block.
const CHILD_IDS: ContextId = 64;

/// Start a child of the context a handler runs in, from handler code: the child's id (and a smaller
/// block for its own children) come from this context's block, which the controller allocated, and
/// its route is announced up to the controller like any other. Returns the child's id and Hello.
pub async fn spawn_child(cx: &Cx, method: MethodSpec, name: &str) -> Result<(ContextId, Spawned), BootError> {
    let no_ids = || {
        let reason = format!("context {} has no ids left to give to a child", cx.id());
        BootError::start(method.method().target(), reason, None)
    };
    let (id, _) = cx.router().allocate_ids(1).ok_or_else(no_ids)?;
    let ids = cx.router().allocate_ids(CHILD_IDS).unwrap_or((0, 0));
    let spawned = spawn(Spawn { id, name: name.to_owned(), method, ids, builds: Vec::new() }, cx.clone()).await?;
    Ok((id, spawned))
}

/// The `hypha.spawn` handler.
pub(crate) async fn spawn(req: Spawn, cx: Cx) -> Result<Spawned, BootError> {
    let router = cx.router().clone();
    let cfg = router.config();
    let ancestors: Vec<ContextId> = std::iter::once(router.id()).chain(cfg.ancestors.iter().copied()).collect();
    let max_frame = cfg.max_frame;
    let mut spec = req.method;
    let target = spec.method().target();
    let io = |source| BootError::Io { target: target.clone(), source };
    learn_builds(&req.builds, cx.caller(), &router).map_err(io)?;
    // Agents lent by an ancestor are reached through relays that last as long as the start.
    let relays = relay_agents(&mut spec, &router).map_err(io)?;
    let (link_timeout_ms, call_timeout_ms) = (millis(cfg.link_timeout), millis(cfg.call_timeout));
    let init = |_: &Hello| Init {
        id: req.id,
        ancestors,
        name: req.name.clone(),
        max_frame: max_frame as u32,
        ids: req.ids,
        link_timeout_ms,
        call_timeout_ms,
    };
    let booted = boot(spec.method(), max_frame, init).await.map_err(|e| match e {
        // Why a lent agent failed is known here, not in the method: add it.
        BootError::Auth { target, reason, source } => {
            let lent: Vec<String> = relays.iter().filter_map(Relay::refused).collect();
            let reason =
                if lent.is_empty() { reason } else { format!("{reason} (the lent ssh-agent: {})", lent.join("; ")) };
            BootError::Auth { target, reason, source }
        }
        e => e,
    })?;
    drop(relays);
    let hello = booted.hello;
    let span = info_span!("context", id = req.id, name = %req.name, host = %hello.host);
    let opts = LinkOptions {
        role: Role::Child(req.id),
        name: format!("{}: {target}, pid {}", req.name, hello.pid),
        span,
        initial: booted.leftover,
    };
    // Only the child's subtree may announce the ids of the child's block.
    router.grant(req.ids, req.id);
    // Attaching announces the child to the ancestors before this answers: the answer travels the
    // same links and cannot overtake the announcement.
    let mut link = router.attach(booted.transport.reader, booted.transport.writer, opts);
    let process = booted.transport.process;
    tokio::spawn(async move {
        link.closed().await;
        // The link is gone: its process (a local child, or an ssh client) must not outlive it.
        if let Some(mut process) = process {
            if tokio::time::timeout(Duration::from_secs(1), process.wait()).await.is_err() {
                let _ = process.start_kill();
            }
        }
    });
    Ok(Spawned { hello, uploaded: booted.transport.uploaded })
}

/// Offer the builds a via start named to this context's children: those that are not this
/// executable are fetched from `from` (the context that asked) when a child first needs one.
fn learn_builds(offers: &[Offer], from: ContextId, router: &Router) -> std::io::Result<()> {
    let own = exe_hash()?;
    for offer in offers.iter().filter(|o| o.fingerprint.hash != own) {
        // They go on a remote command line (the stub's arguments): plain tokens only.
        let plain = |s: &str, ok: fn(char) -> bool| !s.is_empty() && s.len() <= 64 && s.chars().all(ok);
        if !plain(&offer.arch, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || !plain(&offer.fingerprint.hash, |c| c.is_ascii_hexdigit())
        {
            return Err(std::io::Error::other(format!("refusing a build named {:?}", offer.arch)));
        }
        let (router, hash, len) = (router.clone(), offer.fingerprint.hash.clone(), offer.fingerprint.len);
        let fetch = move || -> crate::BoxFuture<'static, std::io::Result<Payload>> {
            let (router, hash) = (router.clone(), hash.clone());
            Box::pin(async move {
                let mut gzip = Bounded { data: Vec::new(), limit: len.saturating_add(len / 8 + (1 << 16)) };
                let raw_len =
                    router.download(from, &BuildRequest { hash: hash.clone() }, &mut gzip).await.map_err(|e| {
                        std::io::Error::other(format!("fetching the build {hash} from context {from}: {e}"))
                    })?;
                if raw_len != len {
                    return Err(std::io::Error::other(format!(
                        "context {from} sent a build of {raw_len} bytes, not {len}"
                    )));
                }
                blocking(move || Payload::from_gzip(gzip.data, len)).await
            })
        };
        learn(Build::new(&offer.arch, offer.fingerprint.clone(), Source::Fetch(Box::new(fetch))));
    }
    Ok(())
}

/// A writer that takes at most `limit` bytes: a fetched build may be no larger than it was said to
/// be (compressed, it is smaller; a little slack for incompressible builds).
struct Bounded {
    data: Vec<u8>,
    limit: u64,
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if (self.data.len() + buf.len()) as u64 > self.limit {
            return std::task::Poll::Ready(Err(std::io::Error::other("a build larger than it was said to be")));
        }
        self.data.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

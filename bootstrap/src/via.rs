//! Starting a context *from* another context (Mitogen's `via=`), with any method registered by name.
//!
//! A method that can travel implements [`Portable`]: a stable name, and serde. Registering it
//! ([`RegisterMethod::method`], done for the built-in ones) installs a handler under that name in
//! every copy of the program; asking context P to start a child with method M is a call to P of
//! that handler ([`Spawn`]). P runs the method from its own host and serves the child the build of
//! the program for the child's architecture: its own executable, or a build named in the request,
//! which it fetches from the context that asked, once, when a first child needs it
//! ([`crate::builds`]). It lets only the child's subtree announce the ids of the child's block
//! (`Router::grant`), attaches the child's link (which announces the new route to its ancestors,
//! `Control::AddRoute`, before the answer, so the answer cannot overtake it), and answers with the
//! child's Hello.
//!
//! Credentials for an ssh hop travel inside the request, in memory: [`Portable::for_remote`] turns
//! key files into [`Auth::KeyData`] and known_hosts into lines the hop checks against, and lends
//! ssh-agents for the start ([`crate::forward`]). The hop hands the key to libssh2 from memory
//! (`userauth_pubkey_memory`); nothing is written to its disk.

use std::io;
use std::time::Duration;

use hypha_runtime::proto::{Hello, IdBlock};
use hypha_runtime::{ContextId, Cx, Handlers, KindedError, Request, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::info_span;

use crate::builds::{blocking, learn, Build, BuildRequest, Offer, Source};
use crate::child::{reap, start_child, ChildInit};
use crate::forward::{relay_agents, Agent, AgentLoans, Relay};
use crate::stub::Payload;
use crate::{exe_hash, Auth, BootError, Local, Method, OpenSsh, Ssh, Su, Sudo};

/// A method another context can be asked to run: it has a stable name, the same in every copy of
/// the program, and travels as msgpack. Register it with [`RegisterMethod::method`] on the
/// handlers given to both `run_if_agent` and the runtime; then it starts directly or via any
/// context, like the built-in ones (`hypha.local`, `hypha.ssh`, `hypha.openssh`, `hypha.sudo`,
/// `hypha.su`).
pub trait Portable: Method + Clone + Serialize + DeserializeOwned + 'static {
    /// The method's name; it shares the handlers' name space, so prefix it (`myapp.nsenter`).
    /// Names starting with `hypha.` are reserved.
    const NAME: &'static str;

    /// Ready to run on another host (the context `loans` are made to): what only this host holds
    /// goes along in memory (key files, known hosts), or is lent for the start (ssh-agents). As is,
    /// by default.
    fn for_remote(self, loans: &mut AgentLoans) -> io::Result<Self> {
        let _ = loans;
        Ok(self)
    }

    /// Visit every ssh-agent the method asks: on the parent, a relay stands in for one lent by an
    /// ancestor. None, by default.
    fn agents(&mut self, visit: &mut dyn FnMut(&mut Agent) -> io::Result<()>) -> io::Result<()> {
        let _ = visit;
        Ok(())
    }
}

/// Registering methods by name, on [`Handlers`].
pub trait RegisterMethod {
    /// Let every context start children with `M`.
    ///
    /// # Panics
    /// If a handler or method named `M::NAME` is already registered.
    fn method<M: Portable>(self) -> Self;
}

impl RegisterMethod for Handlers {
    fn method<M: Portable>(self) -> Self {
        self.on(spawn::<M>)
    }
}

impl Portable for Local {
    const NAME: &'static str = "hypha.local";
}

impl Portable for Sudo {
    const NAME: &'static str = "hypha.sudo";
}

impl Portable for Su {
    const NAME: &'static str = "hypha.su";
}

impl Portable for Ssh {
    const NAME: &'static str = "hypha.ssh";

    fn for_remote(self, loans: &mut AgentLoans) -> io::Result<Self> {
        Ssh::for_remote(self, loans)
    }

    fn agents(&mut self, visit: &mut dyn FnMut(&mut Agent) -> io::Result<()>) -> io::Result<()> {
        self.each_auth(&mut |auth| match auth {
            Auth::Agent(agent) => visit(agent),
            _ => Ok(()),
        })
    }
}

impl Portable for OpenSsh {
    const NAME: &'static str = "hypha.openssh";

    fn for_remote(self, loans: &mut AgentLoans) -> io::Result<Self> {
        OpenSsh::for_remote(self, loans)
    }

    fn agents(&mut self, visit: &mut dyn FnMut(&mut Agent) -> io::Result<()>) -> io::Result<()> {
        visit(&mut self.agent)
    }
}

/// The built-in methods, registered.
pub(crate) fn install(handlers: Handlers) -> Handlers {
    handlers.method::<Local>().method::<Ssh>().method::<OpenSsh>().method::<Sudo>().method::<Su>()
}

/// Ask a context to start a child with method `M` (the handler named `M::NAME`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound = "M: Portable")]
pub struct Spawn<M> {
    /// The child's id, from the asking context's ids.
    pub id: ContextId,
    /// The child's name.
    pub name: String,
    /// Ids the child may give to children it starts by itself.
    pub ids: IdBlock,
    /// The builds of the program the asking context can serve, one per architecture; the parent
    /// offers them to the child's host and fetches the one it needs and lacks.
    pub builds: Vec<Offer>,
    /// How to start it.
    pub method: M,
}

/// The started child.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spawned {
    /// What the child said about itself.
    pub hello: Hello,
    /// Bytes of agent uploaded to start it, if any.
    pub uploaded: Option<u64>,
}

impl<M: Portable> Request for Spawn<M> {
    type Response = Spawned;
    const NAME: &'static str = M::NAME;
}

/// Ask context `parent` (`label`: its name, for errors) to start `child` with `method`, waiting at
/// most `deadline`; `router` is this context's. The method is made ready to travel first ([`Portable::for_remote`]); ssh-agents
/// are lent until the start has answered.
pub async fn ask<M: Portable>(
    router: &Router,
    parent: ContextId,
    label: &str,
    child: &ChildInit,
    builds: Vec<Offer>,
    method: &M,
    deadline: Duration,
) -> Result<Spawned, BootError> {
    let target = format!("{} via {label} (context {parent})", method.target());
    let mut loans = AgentLoans::new(router.id(), parent);
    let method = method
        .clone()
        .for_remote(&mut loans)
        .map_err(|e| BootError::start(target.clone(), "the method cannot travel", Some(e.into())))?;
    let req = Spawn { id: child.id, name: child.name.clone(), ids: child.ids, builds, method };
    let spawned = router.call_within(parent, &req, deadline).await;
    drop(loans);
    spawned.map_err(|source| BootError::Via { target, source: Box::new(source) })
}

/// The handler of method `M`: start a child of this context with it.
async fn spawn<M: Portable>(req: Spawn<M>, cx: Cx) -> Result<Spawned, KindedError> {
    let router = cx.router().clone();
    let mut method = req.method;
    let target = method.target();
    let fail = |e: BootError| KindedError::new(e.kind(), e);
    let io = |source| fail(BootError::Io { target: target.clone(), source });
    // A gateway may serve hundreds of hosts, each a link of its own.
    crate::raise_open_files();
    learn_builds(&req.builds, cx.caller(), &router).map_err(io)?;
    // Agents lent by an ancestor are reached through relays that last as long as the start.
    let relays = relay_agents(&mut method, &router).map_err(io)?;
    let child = ChildInit { id: req.id, name: req.name, ids: req.ids };
    let span = info_span!("context", id = child.id, name = %child.name, host = tracing::field::Empty);
    let started = start_child(&router, &method, &child, span).await.map_err(|e| match e {
        // Why a lent agent failed is known here, not in the method: add it.
        BootError::Auth { target, reason, source } => {
            let lent: Vec<String> = relays.iter().filter_map(Relay::refused).collect();
            let reason =
                if lent.is_empty() { reason } else { format!("{reason} (the lent ssh-agent: {})", lent.join("; ")) };
            BootError::Auth { target, reason, source }
        }
        e => e,
    });
    drop(relays);
    let started = started.map_err(fail)?;
    let (mut link, process) = (started.link, started.process);
    tokio::spawn(async move {
        link.closed().await;
        reap(process, Duration::from_secs(1)).await;
    });
    Ok(Spawned { hello: started.hello, uploaded: started.uploaded })
}

/// Offer the builds a via start named to this context's children: those that are not this
/// executable are fetched from `from` (the context that asked) when a child first needs one.
fn learn_builds(offers: &[Offer], from: ContextId, router: &Router) -> io::Result<()> {
    let own = exe_hash()?;
    for offer in offers.iter().filter(|o| o.fingerprint.hash != own) {
        // They go on a remote command line (the stub's arguments): plain tokens only.
        let plain = |s: &str, ok: fn(char) -> bool| !s.is_empty() && s.len() <= 64 && s.chars().all(ok);
        if !plain(&offer.arch, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || !plain(&offer.fingerprint.hash, |c| c.is_ascii_hexdigit())
        {
            return Err(io::Error::other(format!("refusing a build named {:?}", offer.arch)));
        }
        let (router, hash, len) = (router.clone(), offer.fingerprint.hash.clone(), offer.fingerprint.len);
        let fetch = move || -> crate::BoxFuture<'static, io::Result<Payload>> {
            let (router, hash) = (router.clone(), hash.clone());
            Box::pin(async move {
                let mut gzip = Bounded { data: Vec::new(), limit: len.saturating_add(len / 8 + (1 << 16)) };
                let raw_len = router
                    .download(from, &BuildRequest { hash: hash.clone() }, &mut gzip)
                    .await
                    .map_err(|e| io::Error::other(format!("fetching the build {hash} from context {from}: {e}")))?;
                if raw_len != len {
                    return Err(io::Error::other(format!("context {from} sent a build of {raw_len} bytes, not {len}")));
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
    ) -> std::task::Poll<io::Result<usize>> {
        if (self.data.len() + buf.len()) as u64 > self.limit {
            return std::task::Poll::Ready(Err(io::Error::other("a build larger than it was said to be")));
        }
        self.data.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

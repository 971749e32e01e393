//! Lending the controller's ssh-agent to a via hop, for the start of one context (like `ssh -A`,
//! but only for as long as that start takes, and only for what authentication needs).
//!
//! A key held by an ssh-agent never leaves it, so an ssh hop started via another context signs
//! through the agent of the context that asked for it (the *holder*, the controller):
//!
//! - Preparing the spawn ([`Portable::for_remote`]), the holder
//!   lends each [`Agent`] the method names to the parent context under a fresh random [`Ticket`],
//!   and sends [`Agent::Lent`] in its place. The loan lasts until the spawn has answered:
//!   [`AgentLoans`] ends it when dropped.
//! - The parent opens a relay socket in a fresh 0700 directory of its own, points libssh2 at it,
//!   and turns each agent request arriving there into one [`AgentMessage`] call to the holder. The
//!   socket and its directory are removed when the spawn ends.
//! - The holder answers only a ticket on loan, only to the context it was lent to, and only the two
//!   requests authentication needs (list identities, sign); adding, removing or using keys in any
//!   other way is refused. Its router lets descendants call this one handler
//!   (`Router::open_handler_to_descendants`); every other handler stays closed to them.

use std::fmt;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hypha_runtime::{ContextId, Cx, HandlerError, Request, Router};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info};

#[cfg(doc)]
use crate::Auth;
use crate::Portable;

/// Which ssh-agent signs for an ssh client ([`Auth::Agent`], [`OpenSsh::agent`](crate::OpenSsh::agent)).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Agent {
    /// The one at `$SSH_AUTH_SOCK`, if it is set.
    #[default]
    Env,
    /// The one listening on this socket.
    Socket(PathBuf),
    /// The one context `holder` lends for this start: what the others become on the way to a via
    /// hop, where a relay stands in for it.
    Lent {
        /// The context whose agent signs.
        holder: ContextId,
        /// The loan.
        ticket: Ticket,
    },
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Agent::Env => f.write_str("Agent($SSH_AUTH_SOCK)"),
            Agent::Socket(path) => write!(f, "Agent({})", path.display()),
            Agent::Lent { holder, .. } => write!(f, "Agent(lent by context {holder})"),
        }
    }
}

impl Agent {
    /// Its socket on this host, `None` if there is no agent here to ask.
    pub(crate) fn socket(&self) -> io::Result<Option<PathBuf>> {
        match self {
            Agent::Env => Ok(std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from)),
            Agent::Socket(path) => Ok(Some(path.clone())),
            Agent::Lent { .. } => {
                Err(io::Error::other("a lent agent is only reached through a context started via another"))
            }
        }
    }

    /// What to send to another host in its place: a loan of it, `None` if there is no agent here.
    pub(crate) fn lend(self, loans: &mut AgentLoans) -> io::Result<Option<Agent>> {
        match self {
            Agent::Lent { .. } => Ok(Some(self)),
            agent => agent.socket()?.map(|socket| loans.lend(socket)).transpose(),
        }
    }
}

/// `SSH2_AGENTC_REQUEST_IDENTITIES`.
const REQUEST_IDENTITIES: u8 = 11;
/// `SSH2_AGENTC_SIGN_REQUEST`.
const SIGN_REQUEST: u8 = 13;
/// `SSH_AGENT_FAILURE`.
const FAILURE: u8 = 5;
/// The largest agent message relayed (OpenSSH's own limit).
const MAX_MESSAGE: usize = 256 << 10;
/// How long one request may take, there and back.
const TIMEOUT: Duration = Duration::from_secs(30);

/// An unguessable name for one loan of an ssh-agent. Never printed.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket(u128);

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ticket(..)")
    }
}

impl Ticket {
    fn new() -> io::Result<Ticket> {
        let mut bytes = [0u8; 16];
        // SAFETY: the buffer is valid for writes of its length.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if n != bytes.len() as isize {
            return Err(io::Error::last_os_error());
        }
        Ok(Ticket(u128::from_ne_bytes(bytes)))
    }
}

/// One ssh-agent request, relayed to the context that lent its agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentMessage {
    /// The loan it comes under.
    pub ticket: Ticket,
    /// The request, as the agent protocol frames it (without its length).
    pub message: Vec<u8>,
}

impl Request for AgentMessage {
    /// The agent's answer, without its length.
    type Response = Vec<u8>;
    const NAME: &'static str = "hypha.ssh-agent";
}

struct Loan {
    ticket: Ticket,
    caller: ContextId,
    socket: PathBuf,
}

/// Every loan this process has made and not ended.
static LOANS: Mutex<Vec<Loan>> = Mutex::new(Vec::new());

fn loans() -> std::sync::MutexGuard<'static, Vec<Loan>> {
    LOANS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The ssh-agents lent for one spawn, from `holder` (this context) to `caller` (the context that
/// runs the method). Dropping it ends every loan.
#[derive(Debug)]
pub struct AgentLoans {
    holder: ContextId,
    caller: ContextId,
    tickets: Vec<Ticket>,
}

impl AgentLoans {
    /// Loans from context `holder` (this one) to context `caller`, none made yet.
    pub fn new(holder: ContextId, caller: ContextId) -> Self {
        AgentLoans { holder, caller, tickets: Vec::new() }
    }

    /// Lend the agent at `socket`: what to send in its place.
    fn lend(&mut self, socket: PathBuf) -> io::Result<Agent> {
        let ticket = Ticket::new()?;
        loans().push(Loan { ticket, caller: self.caller, socket });
        self.tickets.push(ticket);
        Ok(Agent::Lent { holder: self.holder, ticket })
    }
}

impl Drop for AgentLoans {
    fn drop(&mut self) {
        loans().retain(|l| !self.tickets.contains(&l.ticket));
    }
}

/// The `hypha.ssh-agent` handler: answer a request under a loan with the lent agent.
pub(crate) async fn serve(req: AgentMessage, cx: Cx) -> Result<Vec<u8>, HandlerError> {
    let socket = loans().iter().find(|l| l.ticket == req.ticket && l.caller == cx.caller()).map(|l| l.socket.clone());
    let Some(socket) = socket else {
        return Err(format!(
            "no ssh-agent is lent to context {} under this ticket (loans end with their spawn)",
            cx.caller()
        )
        .into());
    };
    let kind = req.message.first().copied();
    if kind != Some(REQUEST_IDENTITIES) && kind != Some(SIGN_REQUEST) {
        return Err(format!("only listing identities and signing are relayed, not agent message {kind:?}").into());
    }
    let ask = async {
        let mut agent = UnixStream::connect(&socket).await?;
        write_message(&mut agent, &req.message).await?;
        read_message(&mut agent).await?.ok_or_else(|| io::Error::other("it closed the connection"))
    };
    let reply = match tokio::time::timeout(TIMEOUT, ask).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => return Err(format!("the ssh-agent at {}: {e}", socket.display()).into()),
        Err(_) => return Err(format!("the ssh-agent at {} did not answer within {TIMEOUT:?}", socket.display()).into()),
    };
    if kind == Some(SIGN_REQUEST) {
        info!(caller = cx.caller(), "the ssh-agent signed for a via hop");
    }
    Ok(reply)
}

/// One agent message: its length, then that many bytes. `None` at a clean end of stream.
async fn read_message(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_MESSAGE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("an agent message of {len} bytes")));
    }
    let mut message = vec![0u8; len];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

async fn write_message(stream: &mut (impl AsyncWrite + Unpin), message: &[u8]) -> io::Result<()> {
    let len = u32::try_from(message.len()).map_err(|_| io::Error::other("agent message too long"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(message).await?;
    stream.flush().await
}

/// A relay socket on the parent's host, serving one loan. Dropping it closes its connections and
/// removes the socket and its directory.
pub(crate) struct Relay {
    dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
    /// Why the holder last refused or failed a request, for the error of a failed start.
    refused: Arc<Mutex<Option<String>>>,
}

impl Relay {
    /// Open a relay for the loan `ticket` of `holder`'s agent; also returns its socket's path.
    fn start(router: &Router, holder: ContextId, ticket: Ticket) -> io::Result<(Relay, PathBuf)> {
        let base = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|d| d.is_dir());
        let base = base.unwrap_or_else(std::env::temp_dir);
        // A new directory only this user can enter; `create` fails rather than reuse one.
        let dir = base.join(format!("hypha-agent.{}.{:08x}", std::process::id(), Ticket::new()?.0 as u32));
        std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| with_path(e, &dir))?;
        let socket = dir.join("agent");
        let listener = match UnixListener::bind(&socket) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(with_path(e, &socket));
            }
        };
        let refused = Arc::new(Mutex::new(None));
        let (router, noted) = (router.clone(), refused.clone());
        let task = tokio::spawn(async move {
            // Connections end with the accept loop: aborting it drops them.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(relay(stream, router.clone(), holder, ticket, noted.clone()));
            }
        });
        Ok((Relay { dir, task, refused }, socket))
    }

    /// Why the holder refused or failed a request, if it did.
    pub(crate) fn refused(&self) -> Option<String> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Serve one connection of libssh2 to the relay: each request becomes a call to the holder.
async fn relay(
    mut stream: UnixStream,
    router: Router,
    holder: ContextId,
    ticket: Ticket,
    refused: Arc<Mutex<Option<String>>>,
) {
    loop {
        let message = match read_message(&mut stream).await {
            Ok(Some(message)) => message,
            Ok(None) => return,
            Err(e) => return debug!(error = %e, "dropped an agent connection"),
        };
        let request = AgentMessage { ticket, message };
        let reply = match tokio::time::timeout(TIMEOUT, router.call(holder, &request)).await {
            Ok(Ok(reply)) => reply,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("context {holder} did not answer within {TIMEOUT:?}"),
                };
                debug!(%why, "the lent ssh-agent failed a request");
                *refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                vec![FAILURE]
            }
        };
        if write_message(&mut stream, &reply).await.is_err() {
            return;
        }
    }
}

/// Open a relay for every agent lent to `method` and point the method at it. The relays last as
/// long as the returned values.
pub(crate) fn relay_agents<M: Portable>(method: &mut M, router: &Router) -> io::Result<Vec<Relay>> {
    let mut relays = Vec::new();
    method.agents(&mut |agent: &mut Agent| {
        if let Agent::Lent { holder, ticket } = *agent {
            let (relay, socket) = Relay::start(router, holder, ticket)?;
            relays.push(relay);
            *agent = Agent::Socket(socket);
        }
        Ok(())
    })?;
    Ok(relays)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn agent_messages_are_framed_by_length_and_bounded() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        write_message(&mut a, &[REQUEST_IDENTITIES]).await.unwrap();
        assert_eq!(read_message(&mut b).await.unwrap().unwrap(), vec![REQUEST_IDENTITIES]);
        a.write_all(&((MAX_MESSAGE as u32) + 1).to_be_bytes()).await.unwrap();
        let err = read_message(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        drop(a);
        assert!(read_message(&mut b).await.unwrap().is_none(), "a clean end of stream");
    }

    #[test]
    fn tickets_differ_and_never_print() {
        let (a, b) = (Ticket::new().unwrap(), Ticket::new().unwrap());
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "Ticket(..)");
    }

    /// A controller (0) lending an agent to its child (1), linked in memory; the agent answers
    /// every request with `reply`.
    async fn lent_agent(reply: Vec<u8>) -> (Router, Router, AgentLoans, Ticket, tempdir::Dir) {
        use hypha_runtime::{Handlers, LinkOptions, Role, RouterConfig};
        let dir = tempdir::Dir::new();
        let socket = dir.0.join("real-agent");
        let agent = UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = agent.accept().await {
                let reply = reply.clone();
                tokio::spawn(async move {
                    while let Ok(Some(_)) = read_message(&mut s).await {
                        write_message(&mut s, &reply).await.unwrap();
                    }
                });
            }
        });
        let cfg = |id, ancestors| RouterConfig::new(id, ancestors, format!("test {id}"));
        let controller = Router::new(cfg(0, vec![]), Handlers::new().on(serve));
        controller.open_handler_to_descendants(AgentMessage::NAME);
        let child = Router::new(cfg(1, vec![0]), Handlers::new());
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let opts =
            |role| LinkOptions { role, name: "peer".into(), span: tracing::Span::none(), initial: Default::default() };
        controller.attach(ar, aw, opts(Role::Child(1)));
        child.attach(br, bw, opts(Role::Parent));
        let mut loans = AgentLoans::new(0, 1);
        let Agent::Lent { ticket, .. } = loans.lend(socket).unwrap() else { panic!("lent") };
        (controller, child, loans, ticket, dir)
    }

    async fn ask(socket: &Path, message: &[u8]) -> Vec<u8> {
        let mut s = UnixStream::connect(socket).await.unwrap();
        write_message(&mut s, message).await.unwrap();
        read_message(&mut s).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_relay_answers_what_authentication_needs_while_the_loan_lasts() {
        let identities = vec![12, 0, 0, 0, 0];
        let (_controller, child, loans, ticket, _dir) = lent_agent(identities.clone()).await;
        let (relay, socket) = Relay::start(&child, 0, ticket).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(socket.parent().unwrap()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "only this user may reach the relay");
        assert_eq!(ask(&socket, &[REQUEST_IDENTITIES]).await, identities);
        assert!(relay.refused().is_none());
        // Adding a key (17) is not what authentication needs: refused, and the reason kept.
        assert_eq!(ask(&socket, &[17, 0, 0, 0, 0]).await, vec![FAILURE]);
        assert!(relay.refused().unwrap().contains("only listing identities and signing"), "{:?}", relay.refused());
        // The loan ends with the spawn: the same ticket is refused afterwards.
        drop(loans);
        assert_eq!(ask(&socket, &[REQUEST_IDENTITIES]).await, vec![FAILURE]);
        assert!(relay.refused().unwrap().contains("no ssh-agent is lent"), "{:?}", relay.refused());
        let dir = socket.parent().unwrap().to_owned();
        drop(relay);
        assert!(!dir.exists(), "the relay's directory goes with it");
    }

    #[tokio::test]
    async fn a_loan_serves_only_the_context_it_was_made_to() {
        let (controller, _child, _loans, ticket, _dir) = lent_agent(vec![12, 0, 0, 0, 0]).await;
        // The controller itself (id 0) asks under the ticket lent to context 1.
        let cx = Cx::new(controller, 2);
        let err = serve(AgentMessage { ticket, message: vec![REQUEST_IDENTITIES] }, cx).await.unwrap_err();
        assert!(err.to_string().contains("context 2"), "{err}");
    }

    /// A directory removed on drop.
    mod tempdir {
        pub(super) struct Dir(pub(super) std::path::PathBuf);
        impl Dir {
            pub(super) fn new() -> Dir {
                let dir = std::env::temp_dir().join(format!("hypha-forward-test.{}", super::Ticket::new().unwrap().0));
                std::fs::create_dir(&dir).unwrap();
                Dir(dir)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn loans_end_when_dropped() {
        let mut lent = AgentLoans::new(0, 7);
        let Agent::Lent { ticket, .. } = lent.lend("/nonexistent".into()).unwrap() else { panic!("lent") };
        assert!(loans().iter().any(|l| l.ticket == ticket && l.caller == 7));
        drop(lent);
        assert!(!loans().iter().any(|l| l.ticket == ticket));
    }
}

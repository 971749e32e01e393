//! The `ssh` method: SSH in process, with async-ssh2-lite (libssh2).
//!
//! libssh2 keeps all of a session's state unsynchronised, so one task owns each session and its
//! channel (the *pump*): it moves bytes between the channel and an in-memory duplex whose other end
//! is the context's link, keeps what the remote writes to stderr for error messages, and sends
//! keepalives. Nothing else touches the session once the pump runs.
//!
//! Readiness: `SshStream` implements async-ssh2-lite's `AsyncSessionStream` itself. After libssh2
//! says "would block", it waits for the socket direction libssh2 is blocked on, and retries inside
//! `try_io`, so a retry that would block again clears exactly the readiness it saw (no busy loop, no
//! lost wake-up). A fallback timer covers libssh2 blocking without saying in which direction.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_ssh2_lite::ssh2::{self, BlockDirections, CheckResult, HostKeyType, KnownHostFileKind, MethodType};
use async_ssh2_lite::{AsyncChannel, AsyncSession, AsyncSessionStream};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UnixStream};
use tracing::debug;

use crate::builds::Builds;
use crate::forward::{Agent, AgentLoans};
use crate::method::{with_stderr, BoxFuture, Method, StderrTail, Transport};
use crate::{stub, BootError, HostKeyPolicy};

/// How long to wait for readiness before retrying anyway (libssh2 sometimes blocks without saying
/// in which direction).
const FALLBACK: Duration = Duration::from_millis(100);
/// The receive window asked for on the channel: large enough for fast downloads.
const WINDOW: u32 = 16 << 20;
/// libssh2's largest channel packet.
const PACKET: u32 = 32 << 10;
/// Default ciphers, in order of preference. AES-CTR first: libssh2 encrypts a packet a cipher
/// block at a time, which costs its AES-GCM more than its AES-CTR (measured with
/// `benches/ssh2_floor.rs`: 375 against 263 MiB/s here); both run on AES-NI through OpenSSL.
pub const DEFAULT_CIPHERS: &str =
    "aes128-ctr,aes256-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com";

/// A credential to offer, in the order given.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Auth {
    /// A private key file (OpenSSH or PEM format; ed25519, ECDSA, RSA), with its passphrase if any.
    Key {
        /// The private key.
        path: PathBuf,
        /// Its passphrase.
        passphrase: Option<String>,
    },
    /// A private key held in memory (how a key travels to a via hop: never written to its disk).
    KeyData {
        /// The key, as its file would hold it.
        private_key: String,
        /// Its passphrase.
        passphrase: Option<String>,
    },
    /// Every identity an ssh-agent holds, one after the other.
    Agent(Agent),
    /// A password.
    Password(String),
}

impl fmt::Debug for Auth {
    // Never print secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Key { path, passphrase } => {
                write!(f, "Key({}{})", path.display(), if passphrase.is_some() { ", with passphrase" } else { "" })
            }
            Auth::KeyData { .. } => f.write_str("KeyData(..)"),
            Auth::Agent(agent) => write!(f, "{agent:?}"),
            Auth::Password(_) => f.write_str("Password(..)"),
        }
    }
}

/// Start a context over SSH, in process.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Ssh {
    /// Host name or address.
    pub host: String,
    /// Port (22).
    pub port: u16,
    /// User to log in as.
    pub user: String,
    /// Credentials to try, in order (default: the agent, then `~/.ssh/id_ed25519` and `~/.ssh/id_rsa`).
    pub auth: Vec<Auth>,
    /// known_hosts file (default `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// known_hosts lines to use instead of the file (how the controller's known hosts travel to
    /// a via hop). With [`HostKeyPolicy::AcceptNew`], new keys are accepted but not recorded.
    pub known_hosts_data: Option<String>,
    /// What to do with the host's key.
    pub host_key: HostKeyPolicy,
    /// Deadline for the TCP connection and the SSH handshake.
    pub connect_timeout: Duration,
    /// Interval of SSH keepalives, `None` for none.
    pub keepalive: Option<Duration>,
    /// Ciphers to offer, comma-separated, preferred first (like `ssh -c`).
    pub ciphers: String,
    /// SSH servers to pass through first, in order, none of which runs an agent (like `ssh -J`):
    /// each is reached through a `direct-tcpip` tunnel of the one before, and checked and
    /// authenticated with its own settings.
    pub jump: Vec<Ssh>,
    /// Deadline for authentication, the stub, the upload and the agent's handshake.
    pub timeout: Duration,
}

impl Ssh {
    /// `user@host:22` with the default credentials and host-key checking.
    pub fn new(user: impl Into<String>, host: impl Into<String>) -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        Ssh {
            host: host.into(),
            port: 22,
            user: user.into(),
            auth: vec![
                Auth::Agent(Agent::Env),
                Auth::Key { path: home.join(".ssh/id_ed25519"), passphrase: None },
                Auth::Key { path: home.join(".ssh/id_rsa"), passphrase: None },
            ],
            known_hosts: None,
            known_hosts_data: None,
            host_key: HostKeyPolicy::Enforce,
            connect_timeout: Duration::from_secs(10),
            keepalive: Some(Duration::from_secs(30)),
            ciphers: DEFAULT_CIPHERS.to_owned(),
            jump: Vec::new(),
            timeout: Duration::from_secs(60),
        }
    }

    /// Make this method runnable from another host (the context `loans` are made to): key files
    /// and known_hosts are read here and travel in memory; ssh-agents stay here and are lent for
    /// the start ([`Agent::Lent`]).
    pub fn for_remote(mut self, loans: &mut AgentLoans) -> io::Result<Ssh> {
        let mut auth = Vec::with_capacity(self.auth.len());
        for a in std::mem::take(&mut self.auth) {
            match a {
                Auth::Key { path, passphrase } => match std::fs::read_to_string(&path) {
                    Ok(private_key) => auth.push(Auth::KeyData { private_key, passphrase }),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
                },
                Auth::Agent(agent) => auth.extend(agent.lend(loans)?.map(Auth::Agent)),
                other => auth.push(other),
            }
        }
        if auth.is_empty() {
            return Err(io::Error::other(format!(
                "no credential for {} can travel to the via hop: no key file exists and no ssh-agent runs here",
                self.target()
            )));
        }
        self.auth = auth;
        self.jump = self.jump.into_iter().map(|j| j.for_remote(loans)).collect::<io::Result<_>>()?;
        if self.known_hosts_data.is_none() {
            self.known_hosts_data = Some(std::fs::read_to_string(self.known_hosts_path()).unwrap_or_default());
        }
        Ok(self)
    }

    /// Apply `f` to every credential, this host's and the jump hosts'.
    pub(crate) fn each_auth(&mut self, f: &mut dyn FnMut(&mut Auth) -> io::Result<()>) -> io::Result<()> {
        self.auth.iter_mut().try_for_each(&mut *f)?;
        self.jump.iter_mut().try_for_each(|j| j.each_auth(f))
    }

    fn known_hosts_path(&self) -> PathBuf {
        self.known_hosts
            .clone()
            .unwrap_or_else(|| std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".ssh/known_hosts"))
    }

    /// An authenticated session: through the jump hosts, each reached through the one before and
    /// checked and authenticated with its own settings, then to this host.
    async fn session(&self) -> Result<AsyncSession<SshStream>, BootError> {
        let mut tunnel = None;
        for (i, jump) in self.jump.iter().enumerate() {
            let (session, raw, known) = jump.connect(tunnel.take()).await?;
            jump.check_host_key(&session, &known)?;
            jump.authenticate(&session, &raw).await?;
            let next = self.jump.get(i + 1).unwrap_or(self);
            let channel = session.channel_direct_tcpip(&next.host, next.port, None).await.map_err(|e| {
                BootError::Unreachable {
                    target: next.target(),
                    reason: format!("jump host {} could not open a tunnel: {}", jump.target(), describe(&e)),
                }
            })?;
            let (near, far) = UnixStream::pair().map_err(|source| BootError::Io { target: jump.target(), source })?;
            // The jump session lives in this pump for as long as the tunnel carries anything.
            tokio::spawn(pump(session, channel, far, StderrTail::default(), jump.keepalive));
            tunnel = Some(near);
        }
        let (session, raw, known) = self.connect(tunnel).await?;
        self.check_host_key(&session, &known)?;
        self.authenticate(&session, &raw).await?;
        Ok(session)
    }

    /// A session after its handshake, its libssh2 session as the stream saw it, and what
    /// known_hosts says of the host.
    async fn connect(
        &self,
        tunnel: Option<UnixStream>,
    ) -> Result<(AsyncSession<SshStream>, RawSession, Known), BootError> {
        let target = self.target();
        let unreachable = |reason: String| BootError::Unreachable { target: target.clone(), reason };
        let deadline = self.connect_timeout;
        let io = match tunnel {
            Some(tunnel) => Io::Unix(tunnel),
            None => match tokio::time::timeout(deadline, TcpStream::connect((self.host.as_str(), self.port))).await {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    Io::Tcp(tcp)
                }
                Ok(Err(e)) => return Err(unreachable(e.to_string())),
                Err(_) => return Err(unreachable(format!("no connection within {deadline:?}"))),
            },
        };
        let ssh_err = |what: &str, e: async_ssh2_lite::Error| format!("{what}: {}", describe(&e));
        let raw = RawSession::default();
        let stream = SshStream { io, raw: raw.clone() };
        let mut session = AsyncSession::new(stream, None).map_err(|e| unreachable(ssh_err("session", e)))?;
        for kind in [MethodType::CryptCs, MethodType::CryptSc] {
            if let Err(e) = session.method_pref(kind, &self.ciphers).await {
                debug!(error = %describe(&e), "cipher preference not taken");
            }
        }
        // Ask for a key of a type on record first, as OpenSSH does: a server with several keys
        // would otherwise show one known_hosts cannot vouch for.
        let known = self.known(&session)?;
        if !known.types.is_empty() {
            let mut prefs: Vec<&str> = known.types.iter().flat_map(|t| algorithms(t)).copied().collect();
            let all = session.supported_algs(MethodType::HostKey).await.unwrap_or_default();
            let rest: Vec<&str> = all.into_iter().filter(|a| !prefs.contains(a)).collect();
            prefs.extend(rest);
            if let Err(e) = session.method_pref(MethodType::HostKey, &prefs.join(",")).await {
                debug!(error = %describe(&e), "host key preference not taken");
            }
        }
        match tokio::time::timeout(deadline, session.handshake()).await {
            Ok(Ok(())) => {
                debug!(
                    kex = session.methods(MethodType::Kex).unwrap_or("?"),
                    cipher_out = session.methods(MethodType::CryptCs).unwrap_or("?"),
                    cipher_in = session.methods(MethodType::CryptSc).unwrap_or("?"),
                    "ssh session up"
                );
                Ok((session, raw, known))
            }
            Ok(Err(e)) => Err(unreachable(ssh_err("SSH handshake failed", e))),
            Err(_) => Err(unreachable(format!("no SSH handshake within {deadline:?}"))),
        }
    }

    /// What known_hosts says of this host: its lines (the copy sent along, or the file's), and
    /// which key types it records for this host.
    fn known(&self, session: &AsyncSession<SshStream>) -> Result<Known, BootError> {
        if self.host_key == HostKeyPolicy::Ignore {
            return Ok(Known::default());
        }
        let lines = match &self.known_hosts_data {
            Some(lines) => lines.clone(),
            None => match std::fs::read_to_string(self.known_hosts_path()) {
                Ok(lines) => lines,
                Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
                Err(e) => {
                    let reason = format!("{}: {e}", self.known_hosts_path().display());
                    return Err(BootError::HostKey { target: self.target(), reason });
                }
            },
        };
        let mut types: Vec<String> = Vec::new();
        for kind in entries(&lines).filter_map(key_type) {
            if !types.iter().any(|t| t == kind) {
                types.push(kind.to_owned());
            }
        }
        // Which are this host's: libssh2 matches the names (hashed ones too), and a key that
        // cannot match tells "a key of this type is on record" (mismatch) from "none" (not found).
        types.retain(|kind| matches!(self.check_lines(session, &lines, kind, &[0]), Ok(CheckResult::Mismatch)));
        Ok(Known { lines, types })
    }

    /// Check `key` against the entries of `lines` holding a key of type `kind`.
    fn check_lines(
        &self,
        session: &AsyncSession<SshStream>,
        lines: &str,
        kind: &str,
        key: &[u8],
    ) -> Result<CheckResult, String> {
        let mut known = session.known_hosts().map_err(|e| e.to_string())?;
        for line in entries(lines).filter(|l| key_type(l) == Some(kind)) {
            known.read_str(line, KnownHostFileKind::OpenSSH).map_err(|e| format!("reading {line:.60}: {e}"))?;
        }
        Ok(known.check_port(&self.host, self.port, key))
    }

    /// Check the host's key against known_hosts before sending anything: against the entries of
    /// the same key type (libssh2 alone would compare it with every type's).
    fn check_host_key(&self, session: &AsyncSession<SshStream>, known: &Known) -> Result<(), BootError> {
        let target = self.target();
        let refuse = |reason: String| BootError::HostKey { target: target.clone(), reason };
        if self.host_key == HostKeyPolicy::Ignore {
            return Ok(());
        }
        let (key, kind) = session.host_key().ok_or_else(|| refuse("the server presented no host key".into()))?;
        let name = key_name(kind);
        let path = self.known_hosts_path();
        let source = match self.known_hosts_data {
            Some(_) => "the known hosts sent along".to_owned(),
            None => path.display().to_string(),
        };
        let host = self.known_host_name();
        match self.check_lines(session, &known.lines, name, key).map_err(|e| refuse(format!("{source}: {e}")))? {
            CheckResult::Match => Ok(()),
            CheckResult::Mismatch => Err(refuse(format!(
                "the {name} key presented differs from the one in {source} (possible man in the middle)"
            ))),
            CheckResult::NotFound if !known.types.is_empty() => Err(refuse(format!(
                "the server presented a {name} key, but {source} holds only {} for {host} (possible man in the \
                 middle, or its keys changed)",
                known.types.join(", ")
            ))),
            CheckResult::NotFound if self.host_key == HostKeyPolicy::AcceptNew => {
                if self.known_hosts_data.is_some() {
                    return Ok(());
                }
                record(&path, &host, kind, key).map_err(|e| refuse(format!("recording it: {e}")))
            }
            CheckResult::NotFound => Err(refuse(format!("no key for {host} in {source} (host-key policy: enforce)"))),
            CheckResult::Failure => Err(refuse(format!("could not check {source}"))),
        }
    }

    fn known_host_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }

    async fn authenticate(&self, session: &AsyncSession<SshStream>, raw: &RawSession) -> Result<(), BootError> {
        let user = self.user.as_str();
        let mut tried = Vec::new();
        for auth in &self.auth {
            let result = match auth {
                Auth::Key { path, passphrase } => {
                    if !path.exists() {
                        continue;
                    }
                    session.userauth_pubkey_file(user, None, path, passphrase.as_deref()).await
                }
                Auth::KeyData { private_key, passphrase } => {
                    session.userauth_pubkey_memory(user, None, private_key, passphrase.as_deref()).await
                }
                Auth::Agent(agent) => match agent.socket() {
                    Ok(Some(socket)) => self.agent_auth(raw, socket).await,
                    Ok(None) => continue,
                    Err(e) => {
                        tried.push(format!("{auth:?}: {e}"));
                        continue;
                    }
                },
                Auth::Password(password) => session.userauth_password(user, password).await,
            };
            match result {
                Ok(()) if session.authenticated() => return Ok(()),
                Ok(()) => tried.push(format!("{auth:?}: not accepted")),
                Err(e) => tried.push(format!("{auth:?}: {}", describe(&e))),
            }
        }
        let allowed = session.auth_methods(user).await.map(str::to_owned).unwrap_or_else(|_| "?".into());
        let tried = if tried.is_empty() { "no usable credential".to_owned() } else { tried.join("; ") };
        Err(BootError::Auth { target: self.target(), reason: format!("{tried} (the server accepts: {allowed})") })
    }
}

impl Ssh {
    /// Authenticate with the identities of the ssh-agent at `socket`, one after the other.
    ///
    /// libssh2 talks to an agent over a blocking socket. The agent may be a relay served by this
    /// very thread (a via hop's, see [`crate::forward`]), so the exchange runs on a blocking thread,
    /// with the session in blocking mode meanwhile (bounded by `timeout`).
    async fn agent_auth(&self, raw: &RawSession, socket: PathBuf) -> Result<(), async_ssh2_lite::Error> {
        let raw =
            raw.get().cloned().ok_or_else(|| async_ssh2_lite::Error::Other("no session to authenticate".into()))?;
        let (user, timeout) = (self.user.clone(), u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX));
        let job = tokio::task::spawn_blocking(move || {
            raw.set_timeout(timeout);
            raw.set_blocking(true);
            let result = (|| {
                let mut agent = raw.agent()?;
                agent.set_identity_path(&socket)?;
                agent.connect().map_err(|e| format!("the ssh-agent at {}: {}", socket.display(), e.message()))?;
                agent.list_identities()?;
                let identities = agent.identities()?;
                if identities.is_empty() {
                    return Err(format!("the ssh-agent at {} holds no identities", socket.display()).into());
                }
                for identity in &identities {
                    if agent.userauth(&user, identity).is_ok() && raw.authenticated() {
                        return Ok(());
                    }
                }
                Err(format!("none of the {} identities of the ssh-agent was accepted", identities.len()).into())
            })();
            raw.set_blocking(false);
            raw.set_timeout(0);
            result
        });
        match job.await {
            Ok(result) => {
                result.map_err(|e: Box<dyn std::error::Error + Send + Sync>| async_ssh2_lite::Error::Other(e))
            }
            Err(e) => Err(async_ssh2_lite::Error::Other(format!("the ssh-agent exchange failed: {e}").into())),
        }
    }
}

impl Method for Ssh {
    fn target(&self) -> String {
        format!("ssh {}@{}:{}", self.user, self.host, self.port)
    }

    fn start<'a>(&'a self, nonce: &'a str) -> BoxFuture<'a, Result<Transport, BootError>> {
        Box::pin(async move {
            let target = self.target();
            let io = |source| BootError::Io { target: target.clone(), source };
            let builds = Builds::current().await.map_err(io)?;
            let start = async {
                let session = self.session().await?;
                let failed = |what: &str, e: async_ssh2_lite::Error| BootError::Start {
                    target: target.clone(),
                    reason: format!("{what}: {}", describe(&e)),
                };
                let mut channel = session
                    .channel_open("session", WINDOW, PACKET, None)
                    .await
                    .map_err(|e| failed("opening a channel", e))?;
                channel.exec(&stub::command(nonce, &builds)).await.map_err(|e| failed("running the stub", e))?;
                Ok::<_, BootError>((session, channel))
            };
            let (session, channel) = match tokio::time::timeout(self.timeout, start).await {
                Ok(result) => result?,
                Err(_) => return Err(BootError::Timeout { target, stage: "authentication", after: self.timeout }),
            };
            let (near, far) = tokio::io::duplex(1 << 20);
            let tail = StderrTail::default();
            tokio::spawn(pump(session, channel, far, tail.clone(), self.keepalive));
            let (mut reader, mut writer) = tokio::io::split(near);
            let done =
                match stub::run(&mut reader, &mut writer, Default::default(), nonce, &builds, &target, self.timeout)
                    .await
                {
                    Ok(done) => done,
                    Err(e) => return Err(with_stderr(e, Some(&tail)).await),
                };
            Ok(Transport::new(reader, writer, None).after_stub(done, Some(tail)))
        })
    }

    fn handshake_timeout(&self) -> Duration {
        self.timeout
    }
}

/// Own the session: move bytes between the channel and the link until either side ends.
async fn pump<L: AsyncRead + AsyncWrite>(
    session: AsyncSession<SshStream>,
    mut channel: AsyncChannel<SshStream>,
    link: L,
    tail: StderrTail,
    keepalive: Option<Duration>,
) {
    let (mut link_in, mut link_out) = tokio::io::split(link);
    let (mut from_channel, mut to_channel, mut stderr) = (channel.stream(0), channel.stream(0), channel.stderr());
    // Link → channel: `filling` takes what the link says; `out` is what libssh2 is being offered.
    // After "would block" libssh2 must be offered the same bytes again, so `offer` stays fixed
    // until they are accepted.
    let (mut filling, mut out) = (BytesMut::with_capacity(256 << 10), BytesMut::new());
    let mut offer = 0;
    // Channel → link.
    let (mut chunk, mut pending) = (vec![0u8; 64 << 10], BytesMut::new());
    let mut errbuf = [0u8; 4096];
    let (mut link_eof, mut eof_sent, mut stderr_open) = (false, false, true);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut idle_since = tokio::time::Instant::now();
    loop {
        if out.is_empty() {
            out = filling.split();
            offer = out.len().min(PACKET as usize);
        }
        if filling.capacity() - filling.len() < (16 << 10) {
            filling.reserve(256 << 10);
        }
        if link_eof && out.is_empty() && !eof_sent {
            let _ = channel.send_eof().await;
            eof_sent = true;
        }
        tokio::select! {
            read = link_in.read_buf(&mut filling), if !link_eof && filling.len() < (256 << 10) => match read {
                Ok(0) | Err(_) => link_eof = true,
                Ok(_) => {}
            },
            wrote = to_channel.write(&out[..offer]), if offer > 0 => match wrote {
                Ok(n) => {
                    out.advance(n);
                    offer = out.len().min(PACKET as usize);
                    idle_since = tokio::time::Instant::now();
                }
                Err(e) => {
                    debug!(error = %e, "ssh channel write failed");
                    break;
                }
            },
            read = from_channel.read(&mut chunk), if pending.len() < (256 << 10) => match read {
                Ok(0) | Err(_) => {
                    let _ = link_out.write_all(&pending).await;
                    break;
                }
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            },
            wrote = link_out.write(&pending), if !pending.is_empty() => match wrote {
                Ok(n) => pending.advance(n),
                Err(_) => break,
            },
            read = stderr.read(&mut errbuf), if stderr_open => match read {
                Ok(0) | Err(_) => stderr_open = false,
                Ok(n) => tail.push(&errbuf[..n]),
            },
            _ = tick.tick() => {
                // Keepalives only when nothing is queued: libssh2 must not interleave them with a
                // half-sent data packet.
                if let Some(every) = keepalive {
                    if offer == 0 && filling.is_empty() && idle_since.elapsed() >= every {
                        let _ = session.keepalive_send().await;
                        idle_since = tokio::time::Instant::now();
                    }
                }
            }
        }
    }
    // What the remote said on stderr last (a loader's error, say) may still be buffered.
    if stderr_open {
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Ok(n) = stderr.read(&mut errbuf).await {
                if n == 0 {
                    break;
                }
                tail.push(&errbuf[..n]);
            }
        })
        .await;
    }
    tail.finish();
    let _ = link_out.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = channel.close().await;
        let _ = session.disconnect(None, "hypha context closed", None).await;
    })
    .await;
}

/// The libssh2 session under an `AsyncSession`, which async-ssh2-lite does not hand out: its
/// stream sees it with every operation and keeps a handle here (for [`Ssh::agent_auth`]).
type RawSession = Arc<OnceLock<ssh2::Session>>;

/// The socket under a libssh2 session, waiting for libssh2 the way tokio's readiness model needs.
pub struct SshStream {
    io: Io,
    raw: RawSession,
}

impl fmt::Debug for SshStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshStream").field("io", &self.io).finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Io {
    /// A direct connection.
    Tcp(TcpStream),
    /// One end of a socketpair whose other end a jump host's tunnel feeds.
    Unix(UnixStream),
}

impl AsRawFd for SshStream {
    fn as_raw_fd(&self) -> RawFd {
        match &self.io {
            Io::Tcp(s) => s.as_raw_fd(),
            Io::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl SshStream {
    async fn ready(&self, interest: Interest) -> io::Result<tokio::io::Ready> {
        match &self.io {
            Io::Tcp(s) => s.ready(interest).await,
            Io::Unix(s) => s.ready(interest).await,
        }
    }

    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        match &self.io {
            Io::Tcp(s) => s.try_io(interest, f),
            Io::Unix(s) => s.try_io(interest, f),
        }
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.io {
            Io::Tcp(s) => s.poll_read_ready(cx),
            Io::Unix(s) => s.poll_read_ready(cx),
        }
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.io {
            Io::Tcp(s) => s.poll_write_ready(cx),
            Io::Unix(s) => s.poll_write_ready(cx),
        }
    }
}

fn interest(directions: BlockDirections) -> Interest {
    match directions {
        BlockDirections::Inbound => Interest::READABLE,
        BlockDirections::Outbound => Interest::WRITABLE,
        _ => Interest::READABLE | Interest::WRITABLE,
    }
}

fn would_block(e: &ssh2::Error) -> bool {
    io::Error::from(ssh2::Error::from_errno(e.code())).kind() == io::ErrorKind::WouldBlock
}

#[async_trait::async_trait]
impl AsyncSessionStream for SshStream {
    async fn x_with<R>(
        &self,
        mut op: impl FnMut() -> Result<R, ssh2::Error> + Send,
        sess: &ssh2::Session,
        _expected: BlockDirections,
        _sleep: Option<Duration>,
    ) -> Result<R, async_ssh2_lite::Error> {
        self.raw.get_or_init(|| sess.clone());
        // libssh2 may have what it needs buffered already: try before waiting.
        match op() {
            Err(e) if would_block(&e) => {}
            done => return done.map_err(Into::into),
        }
        loop {
            let interest = interest(sess.block_directions());
            if tokio::time::timeout(FALLBACK, self.ready(interest)).await.is_err() {
                match op() {
                    Err(e) if would_block(&e) => continue,
                    done => return done.map_err(Into::into),
                }
            }
            let attempt = self.try_io(interest, || op().map_err(io::Error::from));
            match attempt {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
                Ok(r) => return Ok(r),
            }
        }
    }

    fn poll_x_with<R>(
        &self,
        cx: &mut Context<'_>,
        mut op: impl FnMut() -> Result<R, io::Error> + Send,
        sess: &ssh2::Session,
        _expected: BlockDirections,
        _sleep: Option<Duration>,
    ) -> Poll<Result<R, io::Error>> {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return Poll::Ready(done),
        }
        loop {
            let interest = interest(sess.block_directions());
            let mut ready = false;
            if interest.is_readable() {
                match self.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => ready = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if !ready && interest.is_writable() {
                match self.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => ready = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if !ready {
                return Poll::Pending;
            }
            match self.try_io(interest, &mut op) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }
}

/// What known_hosts says of a host (see [`Ssh::known`]).
#[derive(Default)]
struct Known {
    lines: String,
    types: Vec<String>,
}

/// The entries of known_hosts `lines`.
fn entries(lines: &str) -> impl Iterator<Item = &str> {
    lines.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The key type of a known_hosts entry (`ssh-ed25519`...): the field after the host names (and
/// after a marker such as `@cert-authority`).
fn key_type(entry: &str) -> Option<&str> {
    let mut fields = entry.split_whitespace().skip_while(|f| f.starts_with('@'));
    fields.next()?;
    fields.next()
}

/// The host-key algorithms that present a key of known_hosts type `kind`.
fn algorithms(kind: &str) -> &[&str] {
    match kind {
        "ssh-rsa" => &["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
        "ssh-ed25519" => &["ssh-ed25519"],
        "ecdsa-sha2-nistp256" => &["ecdsa-sha2-nistp256"],
        "ecdsa-sha2-nistp384" => &["ecdsa-sha2-nistp384"],
        "ecdsa-sha2-nistp521" => &["ecdsa-sha2-nistp521"],
        _ => &[],
    }
}

/// async-ssh2-lite's errors print as `Debug`; say just the message.
fn describe(e: &async_ssh2_lite::Error) -> String {
    match e {
        async_ssh2_lite::Error::Ssh2(e) => e.message().to_owned(),
        async_ssh2_lite::Error::Io(e) => e.to_string(),
        async_ssh2_lite::Error::Other(e) => e.to_string(),
    }
}

fn key_name(kind: HostKeyType) -> &'static str {
    match kind {
        HostKeyType::Rsa => "ssh-rsa",
        HostKeyType::Dss => "ssh-dss",
        HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
        HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
        HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
        HostKeyType::Ed25519 => "ssh-ed25519",
        _ => "unknown",
    }
}

/// Append `host kind base64(key)` to a known_hosts file.
fn record(path: &std::path::Path, host: &str, kind: HostKeyType, key: &[u8]) -> io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(file, "{host} {} {}", key_name(kind), base64(key))
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_entries_name_their_key_type() {
        assert_eq!(key_type("10.0.0.1,web1 ssh-ed25519 AAAA comment"), Some("ssh-ed25519"));
        assert_eq!(key_type("|1|salt=|hash= ecdsa-sha2-nistp256 AAAA"), Some("ecdsa-sha2-nistp256"));
        assert_eq!(key_type("@cert-authority *.example ssh-rsa AAAA"), Some("ssh-rsa"));
        assert_eq!(key_type("lonely"), None);
        let lines = "# comment\n\n  web1 ssh-rsa AAAA\n";
        assert_eq!(entries(lines).collect::<Vec<_>>(), ["web1 ssh-rsa AAAA"]);
        assert!(algorithms("ssh-rsa").contains(&"rsa-sha2-512"), "RSA keys are shown with SHA-2 signatures");
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn passwords_never_print() {
        let auth = Auth::Password("hunter2".into());
        assert!(!format!("{auth:?}").contains("hunter2"));
        let mut ssh = Ssh::new("u", "h");
        ssh.auth.push(auth);
        assert!(!format!("{ssh:?}").contains("hunter2"));
    }
}

//! The `ssh` method: SSH in process, with async-ssh2-lite (libssh2).
//!
//! - this file: the [`Ssh`] configuration, its builders, the start (connect through the jump
//!   hosts, check, authenticate, run the stub) and [`Ssh::for_remote`];
//! - `known_hosts.rs`: [`HostKeyPolicy`], and checking the host's key (or recording it) before
//!   any credential is sent;
//! - `auth.rs`: [`Auth`], the credentials offered in order (key files, keys in memory,
//!   ssh-agents on a blocking thread, passwords);
//! - `pump.rs`: the one task that owns a session and its channel once it is up (libssh2 is not
//!   safe to share), moving bytes between the channel and the context's link;
//! - `stream.rs`: [`SshStream`], the socket under a session, waiting for libssh2 the way tokio's
//!   readiness model needs.

mod auth;
mod config;
mod known_hosts;
mod pump;
mod stream;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use async_ssh2_lite::ssh2::MethodType;
use async_ssh2_lite::AsyncSession;
use tokio::net::{TcpStream, UnixStream};
use tracing::debug;

pub use auth::Auth;
pub use config::SshConfigFile;
pub use known_hosts::HostKeyPolicy;
pub use stream::SshStream;

use crate::builds::Builds;
use crate::destination::{self, Destination, DestinationError};
use crate::error::Cause;
use crate::forward::{Agent, AgentLoans};
use crate::method::{with_stderr, BoxFuture, Method, StderrTail, Transport};
use crate::{stub, BootError, Identity};
use known_hosts::{algorithms, Known};
use pump::pump;
use stream::{Io, RawSession};

/// The receive window asked for on the channel: large enough for fast downloads.
const WINDOW: u32 = 16 << 20;
/// libssh2's largest channel packet.
const PACKET: u32 = 32 << 10;
/// Default ciphers, in order of preference. AES-CTR first: libssh2 encrypts a packet a cipher
/// block at a time, which costs its AES-GCM more than its AES-CTR (measured with
/// `benches/ssh2_floor.rs`: 375 against 263 MiB/s here); both run on AES-NI through OpenSSL.
pub const DEFAULT_CIPHERS: &str =
    "aes128-ctr,aes256-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com";

/// Start a context over SSH, in process.
///
/// ```
/// use std::time::Duration;
/// use hypha_bootstrap::{HostKeyPolicy, Ssh};
///
/// let m = Ssh::new("alice@web1:2222")
///     .with_key("/home/alice/.ssh/deploy_ed25519")
///     .with_host_key(HostKeyPolicy::AcceptNew)
///     .with_jump(Ssh::new("gw.example"))
///     .with_timeout(Duration::from_secs(30));
/// assert_eq!((m.user.as_str(), m.host.as_str(), m.port), ("alice", "web1", 2222));
/// ```
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Ssh {
    /// Host name or address.
    pub host: String,
    /// Port (22 unless the destination names one).
    pub port: u16,
    /// User to log in as (this process's user unless the destination names one).
    pub user: String,
    /// Credentials to try, in order (default: the agent, then `~/.ssh/id_ed25519` and
    /// `~/.ssh/id_rsa`; the first one named with a builder replaces them).
    pub auth: Vec<Auth>,
    /// known_hosts file (default `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// known_hosts lines to use instead of the file (how the controller's known hosts travel to
    /// a via hop). With [`HostKeyPolicy::AcceptNew`], new keys are accepted but not recorded.
    pub known_hosts_data: Option<String>,
    /// What to do with the host's key ([`HostKeyPolicy::Enforce`] by default).
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
    /// What was given to [`Ssh::new`], when it is no destination: the start fails saying why.
    #[serde(default)]
    invalid: Option<String>,
    /// `auth` is still the default list, which the first credential named replaces.
    #[serde(skip)]
    default_auth: bool,
}

impl Ssh {
    /// Connect to `destination`, `[user@]host[:port]` (see [`Destination`]): as this process's
    /// user (`$USER`, else the name of its uid) unless one is named, on port 22 unless one is,
    /// with the default credentials, known_hosts enforced, 10 s to connect and 60 s to start.
    ///
    /// A `destination` that is not one makes the start fail with a [`BootError::Start`] saying
    /// why (its source is the [`DestinationError`]).
    pub fn new(destination: impl AsRef<str>) -> Ssh {
        let text = destination.as_ref();
        let (user, host, port, invalid) = match text.parse::<Destination>() {
            Ok(d) => (d.user().map_or_else(current_user, str::to_owned), d.host().to_owned(), d.port(), None),
            Err(_) => (current_user(), String::new(), None, Some(text.to_owned())),
        };
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        Ssh {
            host,
            port: port.unwrap_or(22),
            user,
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
            invalid,
            default_auth: true,
        }
    }

    /// Log in as `user`, whatever the destination said.
    pub fn with_user(mut self, user: impl Into<String>) -> Ssh {
        self.user = user.into();
        self
    }

    /// Connect to `port`, whatever the destination said.
    pub fn with_port(mut self, port: u16) -> Ssh {
        self.port = port;
        self
    }

    /// Offer exactly these credentials, in order.
    pub fn with_auth(mut self, auth: Vec<Auth>) -> Ssh {
        self.auth = auth;
        self.default_auth = false;
        self
    }

    /// Offer the private key file at `path` (one without a passphrase). The first credential
    /// named replaces the default ones; the next ones are offered after it, in order.
    pub fn with_key(self, path: impl Into<PathBuf>) -> Ssh {
        self.with_credential(Auth::Key { path: path.into(), passphrase: None })
    }

    /// Offer the private key file at `path`, unlocked with `passphrase` (see [`Ssh::with_key`]).
    pub fn with_key_passphrase(self, path: impl Into<PathBuf>, passphrase: impl Into<String>) -> Ssh {
        self.with_credential(Auth::Key { path: path.into(), passphrase: Some(passphrase.into()) })
    }

    /// Offer the identities of `agent` (see [`Ssh::with_key`]).
    pub fn with_agent(self, agent: Agent) -> Ssh {
        self.with_credential(Auth::Agent(agent))
    }

    /// Offer `password` (see [`Ssh::with_key`]).
    pub fn with_password(self, password: impl Into<String>) -> Ssh {
        self.with_credential(Auth::Password(hypha_runtime::Secret::new(password.into())))
    }

    fn with_credential(mut self, auth: Auth) -> Ssh {
        if std::mem::take(&mut self.default_auth) {
            self.auth.clear();
        }
        self.auth.push(auth);
        self
    }

    /// Check host keys against (and, with [`HostKeyPolicy::AcceptNew`], record them in) the
    /// known_hosts file at `path`.
    pub fn with_known_hosts(mut self, path: impl Into<PathBuf>) -> Ssh {
        self.known_hosts = Some(path.into());
        self
    }

    /// Check host keys against these known_hosts `lines` instead of a file.
    pub fn with_known_hosts_data(mut self, lines: impl Into<String>) -> Ssh {
        self.known_hosts_data = Some(lines.into());
        self
    }

    /// What to do with the host's key.
    pub fn with_host_key(mut self, policy: HostKeyPolicy) -> Ssh {
        self.host_key = policy;
        self
    }

    /// Deadline for the TCP connection and the SSH handshake.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Ssh {
        self.connect_timeout = timeout;
        self
    }

    /// Interval of SSH keepalives, `None` for none.
    pub fn with_keepalive(mut self, every: Option<Duration>) -> Ssh {
        self.keepalive = every;
        self
    }

    /// Ciphers to offer, comma-separated, preferred first (like `ssh -c`).
    pub fn with_ciphers(mut self, ciphers: impl Into<String>) -> Ssh {
        self.ciphers = ciphers.into();
        self
    }

    /// Pass through `jump` first, after the jump hosts named before it (like `ssh -J`).
    pub fn with_jump(mut self, jump: Ssh) -> Ssh {
        self.jump.push(jump);
        self
    }

    /// Deadline for authentication, the stub, the upload and the agent's handshake.
    pub fn with_timeout(mut self, timeout: Duration) -> Ssh {
        self.timeout = timeout;
        self
    }

    /// Where this connects, checked: the destination given to [`Ssh::new`] and the fields as they
    /// are now.
    fn destination(&self) -> Result<Destination, DestinationError> {
        if let Some(text) = &self.invalid {
            text.parse::<Destination>()?;
        }
        Destination::new(Some(&self.user), &self.host, Some(self.port))
    }

    /// This host's destination and every jump host's, checked before anything connects.
    fn check_destinations(&self) -> Result<(), BootError> {
        self.destination().map_err(|e| destination::invalid(self.target(), "", e))?;
        for jump in &self.jump {
            jump.destination().map_err(|e| destination::invalid(self.target(), "jump host ", e))?;
        }
        Ok(())
    }

    /// and known_hosts are read here and travel in memory; ssh-agents stay here and are lent for
    /// the start ([`Agent::Lent`]).
    pub(crate) fn for_remote(mut self, loans: &mut AgentLoans) -> io::Result<Ssh> {
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
                    source: Some(cause(e)),
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
    ///
    /// A server that closes a new connection before its banner is most often sshd shedding
    /// handshakes past its `MaxStartups` (a fan-out's burst): over TCP, that is tried again, up
    /// to [`DROPPED_ATTEMPTS`] times in all, after pauses that double from
    /// [`DROPPED_PAUSE`] (with jitter, so a burst does not come back at once), within the
    /// connect timeout. Nothing has been sent to the host then, so trying again is safe.
    async fn connect(
        &self,
        tunnel: Option<UnixStream>,
    ) -> Result<(AsyncSession<SshStream>, RawSession, Known), BootError> {
        if tunnel.is_some() {
            return self.connect_once(tunnel).await;
        }
        let began = std::time::Instant::now();
        let mut pause = DROPPED_PAUSE;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.connect_once(None).await {
                Err(e) if dropped(&e) => {
                    // Up to as much again, from the clock's low bits: no two hosts alike.
                    let nanos = std::time::SystemTime::UNIX_EPOCH.elapsed().map_or(0, |d| d.subsec_nanos());
                    let wait = pause + pause.mul_f64(f64::from(nanos % 1000) / 1000.0);
                    if attempt >= DROPPED_ATTEMPTS || began.elapsed() + wait >= self.connect_timeout {
                        return Err(match e {
                            BootError::Unreachable { target, reason, source } => BootError::Unreachable {
                                target,
                                reason: format!(
                                    "{reason} ({attempt} attempts: the server closed each connection before its \
                                     banner, as sshd does past its MaxStartups)"
                                ),
                                source,
                            },
                            e => e,
                        });
                    }
                    debug!(attempt, error = %e, ?wait, "the server closed the connection before its banner: trying again");
                    tokio::time::sleep(wait).await;
                    pause *= 2;
                }
                done => return done,
            }
        }
    }

    async fn connect_once(
        &self,
        tunnel: Option<UnixStream>,
    ) -> Result<(AsyncSession<SshStream>, RawSession, Known), BootError> {
        let target = self.target();
        let unreachable =
            |reason: String, source: Option<Cause>| BootError::Unreachable { target: target.clone(), reason, source };
        let deadline = self.connect_timeout;
        let io = match tunnel {
            Some(tunnel) => Io::Unix(tunnel),
            None => match tokio::time::timeout(deadline, TcpStream::connect((self.host.as_str(), self.port))).await {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    Io::Tcp(tcp)
                }
                Ok(Err(e)) => return Err(unreachable(e.to_string(), Some(Box::new(e)))),
                Err(_) => return Err(unreachable(format!("no connection within {deadline:?}"), None)),
            },
        };
        let ssh_err =
            |what: &str, e: async_ssh2_lite::Error| unreachable(format!("{what}: {}", describe(&e)), Some(cause(e)));
        let raw = RawSession::default();
        let stream = SshStream::new(io, raw.clone());
        let mut session = AsyncSession::new(stream, None).map_err(|e| ssh_err("session", e))?;
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
            Ok(Err(e)) => Err(ssh_err("SSH handshake failed", e)),
            Err(_) => Err(unreachable(format!("no SSH handshake within {deadline:?}"), None)),
        }
    }
}

impl Method for Ssh {
    fn target(&self) -> String {
        match &self.invalid {
            Some(text) => format!("ssh {text:?}"),
            None => format!("ssh {}", destination::format(Some(&self.user), &self.host, Some(self.port))),
        }
    }

    fn start<'a>(&'a self, nonce: &'a str) -> BoxFuture<'a, Result<Transport, BootError>> {
        Box::pin(async move {
            let target = self.target();
            self.check_destinations()?;
            let io = |source| BootError::Io { target: target.clone(), source };
            let builds = Builds::current().await.map_err(io)?;
            let start = async {
                let session = self.session().await?;
                let failed = |what: &str, e: async_ssh2_lite::Error| {
                    BootError::start(target.clone(), format!("{what}: {}", describe(&e)), Some(cause(e)))
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

/// This process's user: `$USER`, else the name of its uid.
fn current_user() -> String {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| Identity::current().user.clone())
}

/// async-ssh2-lite's errors print as `Debug`; say just the message.
/// How many times a connection the server closes before its banner is tried, in all.
pub(crate) const DROPPED_ATTEMPTS: u32 = 5;
/// The first pause before trying such a connection again; each next one is twice as long.
pub(crate) const DROPPED_PAUSE: Duration = Duration::from_millis(250);

/// Whether a handshake failed because the server closed the connection before (or while) sending
/// its banner: libssh2's "failed getting banner", or the socket closed or reset under it, however
/// the error is wrapped (async-ssh2-lite passes some of libssh2's errors on inside I/O errors).
fn dropped(e: &BootError) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let BootError::Unreachable { source: Some(source), .. } = e else { return false };
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
    while let Some(e) = next {
        if let Some(e) = e.downcast_ref::<async_ssh2_lite::ssh2::Error>() {
            // LIBSSH2_ERROR_BANNER_RECV, _SOCKET_DISCONNECT, _SOCKET_RECV.
            return matches!(e.code(), async_ssh2_lite::ssh2::ErrorCode::Session(-2 | -13 | -43));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe) {
                return true;
            }
            if let Some(inner) = io.get_ref() {
                next = Some(inner);
                continue;
            }
        }
        if e.source().is_none() {
            // async-ssh2-lite keeps only the message of some: libssh2's own words, then.
            return e.to_string() == "Failed getting banner";
        }
        next = e.source();
    }
    false
}

fn describe(e: &async_ssh2_lite::Error) -> String {
    match e {
        async_ssh2_lite::Error::Ssh2(e) => e.message().to_owned(),
        async_ssh2_lite::Error::Io(e) => e.to_string(),
        async_ssh2_lite::Error::Other(e) => e.to_string(),
    }
}

/// The error under async-ssh2-lite's (libssh2's, or the socket's), to keep as a source.
fn cause(e: async_ssh2_lite::Error) -> Cause {
    match e {
        async_ssh2_lite::Error::Ssh2(e) => Box::new(e),
        async_ssh2_lite::Error::Io(e) => Box::new(e),
        async_ssh2_lite::Error::Other(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_destination_gives_user_host_and_port() {
        let m = Ssh::new("alice@web1:2222");
        assert_eq!((m.user.as_str(), m.host.as_str(), m.port), ("alice", "web1", 2222));
        assert_eq!(m.target(), "ssh alice@web1:2222");
        let m = Ssh::new("[::1]:2222");
        assert_eq!((m.user, m.host.as_str(), m.port), (current_user(), "::1", 2222));
        let m = Ssh::new("::1");
        assert_eq!((m.host.as_str(), m.port), ("::1", 22));
        assert_eq!(Ssh::new("bob@::1").target(), "ssh bob@[::1]:22");
        let m = Ssh::new("web1").with_user("carol").with_port(2200);
        assert_eq!(m.target(), "ssh carol@web1:2200");
        assert!(!current_user().is_empty());
    }

    #[test]
    fn a_bad_destination_fails_the_start_naming_it() {
        for bad in ["a@", "host:99999", "[::1", "-oProxyCommand=x", "web 1"] {
            let m = Ssh::new(bad);
            let err = m.check_destinations().expect_err(bad);
            assert!(matches!(err, BootError::Start { .. }), "{err}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
            let source = std::error::Error::source(&err).expect("a source");
            assert!(source.downcast_ref::<DestinationError>().is_some(), "{source}");
            assert!(m.target().contains(&format!("{bad:?}")), "{}", m.target());
        }
        // A jump host too, and a field set in place to what no destination may hold.
        let err = Ssh::new("web1").with_jump(Ssh::new("gw:x")).check_destinations().unwrap_err();
        assert!(err.to_string().contains("jump host") && err.to_string().contains("\"gw:x\""), "{err}");
        let mut m = Ssh::new("web1");
        m.user = "-lroot".into();
        assert!(m.check_destinations().is_err());
    }

    #[test]
    fn the_first_credential_named_replaces_the_defaults() {
        let defaults = Ssh::new("web1");
        assert_eq!(defaults.auth.len(), 3);
        let m = Ssh::new("web1").with_key("/k1").with_password("pw").with_agent(Agent::Env);
        let shown: Vec<String> = m.auth.iter().map(|a| format!("{a:?}")).collect();
        assert_eq!(shown, ["Key(/k1)", "Password(..)", "Agent($SSH_AUTH_SOCK)"]);
        let m = Ssh::new("web1").with_auth(vec![]).with_key_passphrase("/k2", "pp");
        assert_eq!(format!("{:?}", m.auth), "[Key(/k2, with passphrase)]");
    }

    #[test]
    fn every_setting_has_a_builder() {
        let d = Duration::from_secs(3);
        let m = Ssh::new("web1")
            .with_known_hosts("/kh")
            .with_known_hosts_data("web1 ssh-ed25519 AAAA")
            .with_host_key(HostKeyPolicy::Ignore)
            .with_connect_timeout(d)
            .with_keepalive(None)
            .with_ciphers("aes128-ctr")
            .with_jump(Ssh::new("gw"))
            .with_jump(Ssh::new("gw2"))
            .with_timeout(d * 2);
        assert_eq!(m.known_hosts, Some(PathBuf::from("/kh")));
        assert_eq!(m.known_hosts_data.as_deref(), Some("web1 ssh-ed25519 AAAA"));
        assert_eq!(m.host_key, HostKeyPolicy::Ignore);
        assert_eq!((m.connect_timeout, m.keepalive, m.timeout), (d, None, d * 2));
        assert_eq!(m.ciphers, "aes128-ctr");
        assert_eq!(m.jump.iter().map(|j| j.host.as_str()).collect::<Vec<_>>(), ["gw", "gw2"]);
    }
}

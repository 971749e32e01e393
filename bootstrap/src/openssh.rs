//! The `openssh` method: the system `ssh` client as the transport.
//!
//! `ssh -T -o BatchMode=yes [options] -- [user@]host 'sh -c <stub> ...'`: everything in the user's
//! `~/.ssh/config` (ProxyJump, ControlMaster, IdentityFile, aliases) applies, except the host-key
//! policy, which is [`OpenSsh::host_key`]'s (enforce unless told otherwise, as for the `ssh`
//! method). BatchMode means no prompts: keys and agents work, passwords do not (use the `ssh`
//! method for those). The destination and jump hosts are checked ([`Destination`]) before `ssh`
//! sees them, and follow `--`: none can be read as an option.

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;

use crate::builds::Builds;
use crate::destination::{self, Destination};
use crate::forward::{Agent, AgentLoans};
use crate::method::{spawn_piped, with_stderr, BoxFuture, Method, StderrTail, Transport};
use crate::{stub, BootError, HostKeyPolicy};

/// Start a context over the system `ssh` client.
///
/// ```
/// use hypha_bootstrap::OpenSsh;
///
/// let m = OpenSsh::new("alice@web1:2222").with_jump("gw.example").with_args(["-F", "/dev/null"]);
/// assert_eq!((m.user.as_deref(), m.host.as_str(), m.port), (Some("alice"), "web1", Some(2222)));
/// ```
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct OpenSsh {
    /// User to log in as; `None` leaves it to the ssh configuration.
    pub user: Option<String>,
    /// Host name, address, or an alias from `~/.ssh/config`.
    pub host: String,
    /// Port; `None` leaves it to the ssh configuration.
    pub port: Option<u16>,
    /// Private key to offer (`-i`).
    pub identity: Option<PathBuf>,
    /// The ssh-agent the client asks (its `SSH_AUTH_SOCK`). Started via another context, the
    /// client is lent this host's agent for the start, through a relay.
    pub agent: Agent,
    /// known_hosts file to check against (and record into, with [`HostKeyPolicy::AcceptNew`]).
    pub known_hosts: Option<PathBuf>,
    /// What to do with the host's key ([`HostKeyPolicy::Enforce`] by default, whatever the ssh
    /// configuration says).
    pub host_key: HostKeyPolicy,
    /// Deadline for the TCP connection (`ConnectTimeout`).
    pub connect_timeout: Duration,
    /// Deadline for the stub, the upload and the agent's handshake.
    pub timeout: Duration,
    /// Jump hosts, each `[user@]host[:port]` (see [`Destination`]), passed through in order (`-J`).
    pub jump: Vec<String>,
    /// Further arguments for `ssh`, before the destination (`-F`, `-o Cipher=...`...).
    pub args: Vec<String>,
    /// The client to run.
    pub program: PathBuf,
    /// What was given to [`OpenSsh::new`], when it is no destination: the start fails saying why.
    #[serde(default)]
    invalid: Option<String>,
}

impl OpenSsh {
    /// Connect to `destination`, `[user@]host[:port]` (see [`Destination`]; the host may be an
    /// alias from `~/.ssh/config`), with what the ssh configuration says of the user, port and
    /// keys where the destination says nothing, known_hosts enforced, 10 s to connect and 60 s
    /// to start.
    ///
    /// A `destination` that is not one makes the start fail with a [`BootError::Start`] saying
    /// why (its source is the [`DestinationError`](crate::DestinationError)).
    pub fn new(destination: impl AsRef<str>) -> OpenSsh {
        let text = destination.as_ref();
        let (user, host, port, invalid) = match text.parse::<Destination>() {
            Ok(d) => (d.user().map(str::to_owned), d.host().to_owned(), d.port(), None),
            Err(_) => (None, String::new(), None, Some(text.to_owned())),
        };
        OpenSsh {
            user,
            host,
            port,
            identity: None,
            agent: Agent::Env,
            known_hosts: None,
            host_key: HostKeyPolicy::Enforce,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            jump: Vec::new(),
            args: Vec::new(),
            program: PathBuf::from("ssh"),
            invalid,
        }
    }

    /// Log in as `user`, whatever the destination said.
    pub fn with_user(mut self, user: impl Into<String>) -> OpenSsh {
        self.user = Some(user.into());
        self
    }

    /// Connect to `port`, whatever the destination said.
    pub fn with_port(mut self, port: u16) -> OpenSsh {
        self.port = Some(port);
        self
    }

    /// Offer the private key file at `path` only (`-i`, with `IdentitiesOnly`).
    pub fn with_identity(mut self, path: impl Into<PathBuf>) -> OpenSsh {
        self.identity = Some(path.into());
        self
    }

    /// Ask `agent` to sign.
    pub fn with_agent(mut self, agent: Agent) -> OpenSsh {
        self.agent = agent;
        self
    }

    /// Check host keys against (and, with [`HostKeyPolicy::AcceptNew`], record them in) the
    /// known_hosts file at `path`.
    pub fn with_known_hosts(mut self, path: impl Into<PathBuf>) -> OpenSsh {
        self.known_hosts = Some(path.into());
        self
    }

    /// What to do with the host's key.
    pub fn with_host_key(mut self, policy: HostKeyPolicy) -> OpenSsh {
        self.host_key = policy;
        self
    }

    /// Deadline for the TCP connection (`ConnectTimeout`, in whole seconds, at least one).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> OpenSsh {
        self.connect_timeout = timeout;
        self
    }

    /// Deadline for the stub, the upload and the agent's handshake.
    pub fn with_timeout(mut self, timeout: Duration) -> OpenSsh {
        self.timeout = timeout;
        self
    }

    /// Pass through `jump`, `[user@]host[:port]`, after the jump hosts named before it (`-J`).
    pub fn with_jump(mut self, jump: impl Into<String>) -> OpenSsh {
        self.jump.push(jump.into());
        self
    }

    /// Give `ssh` these arguments too, after the ones given before, ahead of the destination.
    pub fn with_args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> OpenSsh {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Run this client instead of the `ssh` on the `PATH`.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> OpenSsh {
        self.program = program.into();
        self
    }

    /// The destination argument (`[user@]host`, an IPv6 host bare as `ssh` takes it) and the `-J`
    /// list, both checked.
    fn destinations(&self) -> Result<(String, Option<String>), BootError> {
        if let Some(text) = &self.invalid {
            text.parse::<Destination>().map_err(|e| destination::invalid(self.target(), "", e))?;
        }
        let here = Destination::new(self.user.as_deref(), &self.host, self.port)
            .map_err(|e| destination::invalid(self.target(), "", e))?;
        let argument = match here.user() {
            Some(user) => format!("{user}@{}", here.host()),
            None => here.host().to_owned(),
        };
        let mut jumps = Vec::with_capacity(self.jump.len());
        for jump in &self.jump {
            let jump = jump.parse::<Destination>().map_err(|e| destination::invalid(self.target(), "jump host ", e))?;
            jumps.push(jump.to_string());
        }
        Ok((argument, (!jumps.is_empty()).then(|| jumps.join(","))))
    }

    fn command(&self, remote: &str) -> Result<Command, BootError> {
        let (destination, jumps) = self.destinations()?;
        let mut cmd = Command::new(&self.program);
        let socket = self.agent.socket().map_err(|source| BootError::Io { target: self.target(), source })?;
        if let Some(socket) = socket {
            cmd.env("SSH_AUTH_SOCK", socket);
        }
        cmd.arg("-T").args(["-o", "BatchMode=yes"]);
        cmd.arg("-o").arg(format!("ConnectTimeout={}", self.connect_timeout.as_secs().max(1)));
        if let Some(port) = self.port {
            cmd.arg("-p").arg(port.to_string());
        }
        if let Some(identity) = &self.identity {
            cmd.arg("-i").arg(identity).args(["-o", "IdentitiesOnly=yes"]);
        }
        // ssh takes the first value it is given for an option: under Ignore, no file at all.
        let known = match (self.host_key, &self.known_hosts) {
            (HostKeyPolicy::Ignore, _) => Some(PathBuf::from("/dev/null")),
            (_, known) => known.clone(),
        };
        if let Some(known) = known {
            cmd.arg("-o").arg(format!("UserKnownHostsFile={}", known.display()));
        }
        let strict = match self.host_key {
            HostKeyPolicy::Enforce => "yes",
            HostKeyPolicy::AcceptNew => "accept-new",
            HostKeyPolicy::Ignore => "no",
        };
        cmd.arg("-o").arg(format!("StrictHostKeyChecking={strict}"));
        if let Some(jumps) = jumps {
            cmd.arg("-J").arg(jumps);
        }
        cmd.args(&self.args).arg("--").arg(destination).arg(remote);
        Ok(cmd)
    }

    /// Ready to run on another host (the context `loans` are made to): the agent is lent for the
    /// start; files (identity, known hosts, configuration) are that host's.
    pub(crate) fn for_remote(mut self, loans: &mut AgentLoans) -> std::io::Result<OpenSsh> {
        self.agent = std::mem::take(&mut self.agent).lend(loans)?.unwrap_or_default();
        Ok(self)
    }
}

impl Method for OpenSsh {
    fn target(&self) -> String {
        match &self.invalid {
            Some(text) => format!("openssh {text:?}"),
            None => format!("openssh {}", destination::format(self.user.as_deref(), &self.host, self.port)),
        }
    }

    fn start<'a>(&'a self, nonce: &'a str) -> BoxFuture<'a, Result<Transport, BootError>> {
        Box::pin(async move {
            let target = self.target();
            let builds = Builds::current().await.map_err(|source| BootError::Io { target: target.clone(), source })?;
            let (mut child, mut stdin, mut stdout, stderr) =
                spawn_piped(self.command(&stub::command(nonce, &builds))?, &target)?;
            let tail = StderrTail::collect(stderr);
            let done =
                match stub::run(&mut stdout, &mut stdin, Default::default(), nonce, &builds, &target, self.timeout)
                    .await
                {
                    Ok(done) => done,
                    Err(e) => {
                        let _ = child.start_kill();
                        return Err(classify(with_stderr(e, Some(&tail)).await));
                    }
                };
            Ok(Transport::new(stdout, stdin, Some(child)).after_stub(done, Some(tail)))
        })
    }

    fn handshake_timeout(&self) -> Duration {
        self.timeout
    }
}

/// Name the cause when the ssh client said what went wrong before the stub could run.
fn classify(err: BootError) -> BootError {
    let BootError::Exited { target, output } = err else { return err };
    let said = output.as_str();
    let has = |needle: &str| said.contains(needle);
    if has("Host key verification failed") || has("REMOTE HOST IDENTIFICATION HAS CHANGED") || has("host key for") {
        BootError::HostKey { target, reason: output, source: None }
    } else if has("Permission denied") || has("Too many authentication failures") {
        BootError::Auth { target, reason: output, source: None }
    } else if has("Connection timed out")
        || has("Connection refused")
        || has("No route to host")
        || has("Network is unreachable")
        || has("Could not resolve hostname")
        || has("Operation timed out")
    {
        BootError::Unreachable { target, reason: output, source: None }
    } else {
        BootError::Exited { target, output }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(m: &OpenSsh) -> Result<Vec<String>, BootError> {
        let cmd = m.command("REMOTE")?;
        Ok(cmd.as_std().get_args().map(|a| a.to_string_lossy().into_owned()).collect())
    }

    #[test]
    fn the_destination_reaches_ssh_after_the_options_and_checked() {
        let m = OpenSsh::new("alice@[::1]:2222").with_jump("gw@[::1]:22").with_jump("127.0.0.1");
        assert_eq!(m.target(), "openssh alice@[::1]:2222");
        let args = argv(&m).unwrap();
        let at = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(&args[at..], ["--", "alice@::1", "REMOTE"]);
        let pair = |flag: &str| args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone());
        assert_eq!(pair("-p").as_deref(), Some("2222"));
        assert_eq!(pair("-J").as_deref(), Some("gw@[::1]:22,127.0.0.1"));
        assert!(args.contains(&"StrictHostKeyChecking=yes".to_owned()), "enforce by default: {args:?}");
        // No user, no port: the ssh configuration's.
        let args = argv(&OpenSsh::new("127.0.0.1")).unwrap();
        assert!(
            !args.contains(&"-p".to_owned()) && args.ends_with(&["--".into(), "127.0.0.1".into(), "REMOTE".into()])
        );
    }

    #[test]
    fn a_bad_destination_or_jump_never_reaches_ssh() {
        for bad in ["-oProxyCommand=touch /tmp/x", "a@", "host:99999", "[::1", "h:x"] {
            let err = argv(&OpenSsh::new(bad)).expect_err(bad);
            assert!(matches!(err, BootError::Start { .. }) && err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let err = argv(&OpenSsh::new("127.0.0.1").with_jump("-oProxyCommand=x")).unwrap_err();
        assert!(err.to_string().contains("jump host"), "{err}");
        let err = argv(&OpenSsh::new("127.0.0.1").with_jump("a,b")).unwrap_err();
        assert!(err.to_string().contains("','"), "{err}");
    }

    #[test]
    fn the_policy_means_what_it_says_and_ignore_reads_no_file() {
        let m = OpenSsh::new("127.0.0.1").with_known_hosts("/kh");
        let policy = |m: OpenSsh| {
            argv(&m)
                .unwrap()
                .into_iter()
                .filter(|a| a.contains("HostKeyChecking=") || a.contains("KnownHostsFile="))
                .collect::<Vec<_>>()
        };
        assert_eq!(policy(m.clone()), ["UserKnownHostsFile=/kh", "StrictHostKeyChecking=yes"]);
        assert_eq!(
            policy(m.clone().with_host_key(HostKeyPolicy::AcceptNew)),
            ["UserKnownHostsFile=/kh", "StrictHostKeyChecking=accept-new"]
        );
        assert_eq!(
            policy(m.with_host_key(HostKeyPolicy::Ignore)),
            ["UserKnownHostsFile=/dev/null", "StrictHostKeyChecking=no"]
        );
    }

    #[test]
    fn every_setting_has_a_builder() {
        let d = Duration::from_secs(4);
        let m = OpenSsh::new("web1")
            .with_user("bob")
            .with_port(2022)
            .with_identity("/id")
            .with_agent(Agent::Socket("/agent".into()))
            .with_connect_timeout(d)
            .with_timeout(d * 2)
            .with_args(["-F", "/dev/null"])
            .with_args(["-v"])
            .with_program("/usr/local/bin/ssh");
        assert_eq!(m.target(), "openssh bob@web1:2022");
        assert_eq!(m.identity, Some(PathBuf::from("/id")));
        assert!(matches!(&m.agent, Agent::Socket(p) if p == std::path::Path::new("/agent")));
        assert_eq!((m.connect_timeout, m.timeout), (d, d * 2));
        assert_eq!(m.args, ["-F", "/dev/null", "-v"]);
        assert_eq!(m.program, PathBuf::from("/usr/local/bin/ssh"));
    }
}

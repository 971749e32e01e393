//! The ssh and agent options shared by the `remote` and `chain` examples.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use hypha::{BootError, Context, Destination, HostKeyPolicy, OpenSsh, Options, Portable, Runtime, Ssh};

/// `--method ssh|openssh`, `--port N`, `--identity FILE`, `--password-env VAR`,
/// `--known-hosts FILE`, `--accept-new`, `--ignore-host-key`, and `--agent ARCH=PATH`
/// (repeatable: a build of this program for hosts of another architecture).
#[derive(Debug, Default)]
pub(crate) struct SshOptions {
    agents: Vec<(String, PathBuf)>,
    method: Option<String>,
    port: Option<u16>,
    identity: Option<PathBuf>,
    password_env: Option<String>,
    known_hosts: Option<PathBuf>,
    policy: Option<HostKeyPolicy>,
}

/// What the ssh options say about their flags.
pub(crate) const SSH_USAGE: &str = "[--method ssh|openssh] [--port N] [--identity FILE] [--password-env VAR] \
                             [--known-hosts FILE | --accept-new | --ignore-host-key] [--agent ARCH=PATH]...";

impl SshOptions {
    /// Take `arg` (and its value from `rest`) if it is one of the ssh options.
    pub(crate) fn take(&mut self, arg: &str, rest: &mut impl Iterator<Item = String>) -> anyhow::Result<bool> {
        let mut value = || rest.next().with_context(|| format!("{arg} needs a value"));
        match arg {
            "--method" => self.method = Some(value()?),
            "--port" => self.port = Some(value()?.parse().context("--port")?),
            "--identity" => self.identity = Some(value()?.into()),
            "--password-env" => self.password_env = Some(value()?),
            "--known-hosts" => self.known_hosts = Some(value()?.into()),
            "--accept-new" => self.policy = Some(HostKeyPolicy::AcceptNew),
            "--ignore-host-key" => self.policy = Some(HostKeyPolicy::Ignore),
            "--agent" => {
                let value = value()?;
                let Some((arch, path)) = value.split_once('=').filter(|(a, p)| !a.is_empty() && !p.is_empty()) else {
                    bail!("--agent takes ARCH=PATH (as aarch64=target/agents/aarch64/remote), not {value:?}");
                };
                self.agents.push((arch.to_owned(), path.into()));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The runtime's options: the builds named with `--agent`.
    pub(crate) fn runtime(&self) -> Options {
        self.agents.iter().fold(Options::default(), |o, (arch, path)| o.agent_for(arch, path))
    }

    /// The method for `[user@]host[:port]`, through `jump` hosts (each `[user@]host[:port]`).
    pub(crate) fn method(&self, destination: &str, jump: &[String]) -> anyhow::Result<SshMethod> {
        match self.method.as_deref().unwrap_or("ssh") {
            "ssh" => {
                let mut m = self.ssh(destination)?;
                for j in jump {
                    m = m.with_jump(self.ssh(j)?);
                }
                Ok(SshMethod::Ssh(m))
            }
            "openssh" => {
                if self.password_env.is_some() {
                    bail!("--password-env needs --method ssh: the openssh method runs ssh in BatchMode");
                }
                let mut m = OpenSsh::new(destination);
                if let Some(port) = self.port.filter(|_| port_of(destination).is_none()) {
                    m = m.with_port(port);
                }
                if let Some(path) = &self.identity {
                    m = m.with_identity(path);
                }
                if let Some(path) = &self.known_hosts {
                    m = m.with_known_hosts(path);
                }
                if let Some(policy) = self.policy {
                    m = m.with_host_key(policy);
                }
                for j in jump {
                    m = m.with_jump(j);
                }
                Ok(SshMethod::OpenSsh(m))
            }
            other => bail!("unknown method {other} (ssh or openssh)"),
        }
    }

    fn ssh(&self, destination: &str) -> anyhow::Result<Ssh> {
        let mut m = Ssh::new(destination);
        if let Some(port) = self.port.filter(|_| port_of(destination).is_none()) {
            m = m.with_port(port);
        }
        if let Some(path) = &self.identity {
            m = m.with_key(path);
        }
        if let Some(var) = &self.password_env {
            let password = std::env::var(var).with_context(|| format!("${var} is not set"))?;
            // After the key, or the default credentials.
            let before = m.auth.clone();
            m = m.with_auth(before).with_password(password);
        }
        if let Some(path) = &self.known_hosts {
            m = m.with_known_hosts(path);
        }
        if let Some(policy) = self.policy {
            m = m.with_host_key(policy);
        }
        Ok(m)
    }
}

/// The port `destination` names, if it is a destination that names one (one that is not is
/// refused when the method starts, saying why).
fn port_of(destination: &str) -> Option<u16> {
    destination.parse::<Destination>().ok()?.port()
}

/// One of the two SSH methods, as `--method` chose.
pub(crate) enum SshMethod {
    Ssh(Ssh),
    OpenSsh(OpenSsh),
}

impl SshMethod {
    /// Start a context with it, via `parent` if there is one.
    pub(crate) async fn start(self, rt: &Runtime, parent: Option<&Context>) -> Result<Context, BootError> {
        match self {
            SshMethod::Ssh(m) => start(rt, m, parent).await,
            SshMethod::OpenSsh(m) => start(rt, m, parent).await,
        }
    }
}

/// Start a context with `method`, via `parent` if there is one.
pub(crate) async fn start<M: Portable>(
    rt: &Runtime,
    method: M,
    parent: Option<&Context>,
) -> Result<Context, BootError> {
    match parent {
        Some(parent) => rt.start(method).via(parent).await,
        None => rt.start(method).await,
    }
}

/// `println!` that returns an error instead of panicking when stdout is closed (`| head`).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*).context("writing to stdout")?;
    }};
}
pub(crate) use say;

/// The exit status for what `run` returned, with the error on stderr. A closed stdout is no error:
/// whoever reads it has seen enough, as with any Unix tool.
pub(crate) fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

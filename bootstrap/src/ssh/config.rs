//! The user's ssh configuration (`~/.ssh/config`) for the `ssh` method, as OpenSSH reads it for
//! what matters to a start: `Host` patterns, `HostName`, `User`, `Port`, `IdentityFile`,
//! `ProxyJump`, `UserKnownHostsFile`, `StrictHostKeyChecking` and `ConnectTimeout` (parsed by the
//! `ssh2-config` crate). What the destination names (a user, a port) wins over the file, and any
//! builder called afterwards wins over both.

use std::path::{Path, PathBuf};

use ssh2_config::{ParseRule, SshConfig};

use super::{Auth, HostKeyPolicy, Ssh};

/// A `ProxyJump` chain deeper than this is refused (a loop of aliases, say).
const MAX_JUMPS: usize = 8;

/// A parsed ssh configuration file.
#[derive(Debug)]
pub struct SshConfigFile {
    config: SshConfig,
    path: PathBuf,
}

impl SshConfigFile {
    /// Read `path`. A file that does not parse is an error naming it.
    pub fn read(path: impl AsRef<Path>) -> std::io::Result<SshConfigFile> {
        let path = path.as_ref();
        let file = std::fs::File::open(path)?;
        let rules = ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS;
        let config = SshConfig::default()
            .parse(&mut std::io::BufReader::new(file), rules)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?;
        Ok(SshConfigFile { config, path: path.to_owned() })
    }

    /// The user's own, `~/.ssh/config`, if there is one that parses (one that does not is logged
    /// and left out, as a start without it still works).
    pub fn user() -> Option<SshConfigFile> {
        let path = PathBuf::from(std::env::var_os("HOME")?).join(".ssh/config");
        match SshConfigFile::read(&path) {
            Ok(config) => Some(config),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the ssh configuration is left out");
                None
            }
        }
    }

    /// Where it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Ssh {
    /// [`Ssh::new`], then what the user's `~/.ssh/config` says of the destination's host (see
    /// [`Ssh::with_config`]).
    /// The file is read once per process.
    pub fn configured(destination: impl AsRef<str>) -> Ssh {
        static USER: std::sync::OnceLock<Option<SshConfigFile>> = std::sync::OnceLock::new();
        let ssh = Ssh::new(destination.as_ref());
        match USER.get_or_init(SshConfigFile::user) {
            Some(config) => ssh.with_config_of(destination.as_ref(), config, 0),
            None => ssh,
        }
    }

    /// [`Ssh::new`], then what `config` says of the destination's host: `HostName`, `User` and
    /// `Port` (unless the destination names them), `IdentityFile` (in place of the default keys;
    /// the agent is still tried first), `ProxyJump` (jump hosts, each configured from the same
    /// file), `UserKnownHostsFile`, `StrictHostKeyChecking` (`yes`, `accept-new`, `no`) and
    /// `ConnectTimeout`.
    pub fn with_config(destination: impl AsRef<str>, config: &SshConfigFile) -> Ssh {
        Ssh::new(destination.as_ref()).with_config_of(destination.as_ref(), config, 0)
    }

    fn with_config_of(mut self, destination: &str, config: &SshConfigFile, depth: usize) -> Ssh {
        let named: Option<crate::Destination> = destination.parse().ok();
        let (named_user, named_port) =
            named.as_ref().map_or((false, false), |d| (d.user().is_some(), d.port().is_some()));
        let p = config.config.query(&self.host);
        if let Some(user) = p.user.filter(|_| !named_user) {
            self.user = user;
        }
        if let Some(port) = p.port.filter(|_| !named_port) {
            self.port = port;
        }
        if let Some(files) = p.identity_file {
            let keys = files.into_iter().map(|path| Auth::Key { path, passphrase: None });
            self.auth = std::iter::once(Auth::Agent(crate::forward::Agent::Env)).chain(keys).collect();
            self.default_auth = false;
        }
        if let Some(timeout) = p.connect_timeout {
            self.connect_timeout = timeout;
        }
        let extra = |key: &str| {
            p.unsupported_fields.get(key).or_else(|| p.ignored_fields.get(key)).and_then(|v| v.first()).cloned()
        };
        if let Some(file) = extra("userknownhostsfile") {
            self.known_hosts = Some(expand_home(&file));
        }
        match extra("stricthostkeychecking").as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("yes") | Some("ask") => self.host_key = HostKeyPolicy::Enforce,
            Some("accept-new") => self.host_key = HostKeyPolicy::AcceptNew,
            Some("no") | Some("off") => self.host_key = HostKeyPolicy::Ignore,
            _ => {}
        }
        if let Some(jumps) = p.proxy_jump.filter(|j| !j.iter().any(|h| h.eq_ignore_ascii_case("none"))) {
            if depth >= MAX_JUMPS {
                self.invalid = Some(format!("{destination}: ProxyJump goes deeper than {MAX_JUMPS} hosts"));
            } else {
                self.jump = jumps.iter().map(|j| Ssh::new(j).with_config_of(j, config, depth + 1)).collect();
            }
        }
        // Last: the patterns matched the alias; the connection goes to its HostName.
        if let Some(host) = p.host_name {
            self.host = host;
        }
        self
    }
}

fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config(text: &str) -> SshConfigFile {
        let path = std::env::temp_dir().join(format!("hypha-ssh-config-{}-{}", std::process::id(), text.len()));
        std::fs::write(&path, text).unwrap();
        let config = SshConfigFile::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        config
    }

    #[test]
    fn a_host_alias_takes_its_settings_and_the_destination_wins() {
        let c = config(
            "Host web*\n  HostName 10.0.0.5\n  User deploy\n  Port 2222\n  IdentityFile /keys/web\n  \
             UserKnownHostsFile /kh/web\n  StrictHostKeyChecking accept-new\n  ConnectTimeout 7\n\
             Host *\n  User fallback\n",
        );
        let m = Ssh::with_config("web1", &c);
        assert_eq!((m.user.as_str(), m.host.as_str(), m.port), ("deploy", "10.0.0.5", 2222));
        assert!(matches!(&m.auth[1], Auth::Key { path, .. } if path == Path::new("/keys/web")));
        assert_eq!(m.known_hosts.as_deref(), Some(Path::new("/kh/web")));
        assert_eq!(m.host_key, HostKeyPolicy::AcceptNew);
        assert_eq!(m.connect_timeout, std::time::Duration::from_secs(7));
        let m = Ssh::with_config("alice@web1:22", &c);
        assert_eq!((m.user.as_str(), m.port), ("alice", 22));
        let m = Ssh::with_config("db1", &c);
        assert_eq!((m.user.as_str(), m.host.as_str(), m.port), ("fallback", "db1", 22));
    }

    #[test]
    fn proxy_jump_hosts_are_configured_from_the_same_file_and_loops_are_refused() {
        let c = config("Host far\n  HostName 10.0.2.2\n  ProxyJump gw\nHost gw\n  HostName 10.0.0.1\n  User jumper\n");
        let m = Ssh::with_config("far", &c);
        assert_eq!(m.jump.len(), 1);
        assert_eq!((m.jump[0].host.as_str(), m.jump[0].user.as_str()), ("10.0.0.1", "jumper"));
        let looped = config("Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n");
        let mut m = Ssh::with_config("a", &looped);
        let mut depth = 0;
        while let Some(next) = m.jump.first().cloned() {
            depth += 1;
            m = next;
        }
        assert!(depth <= MAX_JUMPS && m.invalid.is_some(), "{depth} {:?}", m.invalid);
    }
}

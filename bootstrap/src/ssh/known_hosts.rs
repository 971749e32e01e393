//! Host keys: the one policy both SSH methods follow, and how the in-process method checks a
//! host's key against known_hosts before it sends anything, and records a new one.
//!
//! As OpenSSH does, the session asks first for the key types known_hosts records for the host
//! (found by letting libssh2 match the names, hashed ones too, against a key that cannot match),
//! and the presented key is compared with entries of its own type only: libssh2's `check_port`
//! alone compares it with every type's and calls an ed25519 key a mismatch when only the host's
//! ECDSA key is on record.

use std::io;
use std::path::{Path, PathBuf};

use async_ssh2_lite::ssh2::{CheckResult, HostKeyType, KnownHostFileKind};
use async_ssh2_lite::AsyncSession;

use super::stream::SshStream;
use super::{cause, describe, Ssh};
use crate::error::Cause;
use crate::{BootError, Method};

/// What to do with a host's key, the same for [`Ssh`] and [`OpenSsh`](crate::OpenSsh).
///
/// Both check the key before sending any credential, against a known_hosts file
/// (`~/.ssh/known_hosts` unless one is named; [`OpenSsh`](crate::OpenSsh) also reads the system
/// one, as `ssh` does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum HostKeyPolicy {
    /// Refuse a host whose key is not on record (the default). A changed key is always refused.
    #[default]
    Enforce,
    /// Record the key of a host seen for the first time; refuse a changed one (`ssh -o
    /// StrictHostKeyChecking=accept-new`). [`Ssh`] counts a host on record with keys of other
    /// types only as changed.
    AcceptNew,
    /// Accept any key, and record none. For throw-away test hosts only.
    Ignore,
}

/// What known_hosts says of a host (see [`Ssh::known`]).
#[derive(Default)]
pub(super) struct Known {
    lines: String,
    /// The key types on record for the host.
    pub(super) types: Vec<String>,
}

impl Ssh {
    /// The known_hosts file: the one named, or `~/.ssh/known_hosts`.
    pub(super) fn known_hosts_path(&self) -> PathBuf {
        self.known_hosts
            .clone()
            .unwrap_or_else(|| std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".ssh/known_hosts"))
    }

    /// What known_hosts says of this host: its lines (the copy sent along, or the file's), and
    /// which key types it records for this host.
    pub(super) fn known(&self, session: &AsyncSession<SshStream>) -> Result<Known, BootError> {
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
                    return Err(BootError::HostKey { target: self.target(), reason, source: Some(Box::new(e)) });
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
    ) -> Result<CheckResult, (String, Cause)> {
        let mut known = session.known_hosts().map_err(|e| (describe(&e), cause(e)))?;
        for line in entries(lines).filter(|l| key_type(l) == Some(kind)) {
            known
                .read_str(line, KnownHostFileKind::OpenSSH)
                .map_err(|e| (format!("reading {line:.60}: {e}"), Box::new(e) as Cause))?;
        }
        Ok(known.check_port(&self.host, self.port, key))
    }

    /// Check the host's key against known_hosts before sending anything: against the entries of
    /// the same key type (libssh2 alone would compare it with every type's).
    pub(super) fn check_host_key(&self, session: &AsyncSession<SshStream>, known: &Known) -> Result<(), BootError> {
        let target = self.target();
        let refuse =
            |reason: String, source: Option<Cause>| BootError::HostKey { target: target.clone(), reason, source };
        if self.host_key == HostKeyPolicy::Ignore {
            return Ok(());
        }
        let (key, kind) = session.host_key().ok_or_else(|| refuse("the server presented no host key".into(), None))?;
        let name = key_name(kind);
        let path = self.known_hosts_path();
        let source = match self.known_hosts_data {
            Some(_) => "the known hosts sent along".to_owned(),
            None => path.display().to_string(),
        };
        let host = self.known_host_name();
        let checked = self
            .check_lines(session, &known.lines, name, key)
            .map_err(|(why, e)| refuse(format!("{source}: {why}"), Some(e)))?;
        match checked {
            CheckResult::Match => Ok(()),
            CheckResult::Mismatch => Err(refuse(
                format!("the {name} key presented differs from the one in {source} (possible man in the middle)"),
                None,
            )),
            CheckResult::NotFound if !known.types.is_empty() => Err(refuse(
                format!(
                    "the server presented a {name} key, but {source} holds only {} for {host} (possible man in the \
                     middle, or its keys changed)",
                    known.types.join(", ")
                ),
                None,
            )),
            CheckResult::NotFound if self.host_key == HostKeyPolicy::AcceptNew => {
                if self.known_hosts_data.is_some() {
                    return Ok(());
                }
                record(&path, &host, kind, key).map_err(|e| refuse(format!("recording it: {e}"), Some(Box::new(e))))
            }
            CheckResult::NotFound => {
                Err(refuse(format!("no key for {host} in {source} (host-key policy: enforce)"), None))
            }
            CheckResult::Failure => Err(refuse(format!("could not check {source}"), None)),
        }
    }

    /// The host as known_hosts names it: `host`, or `[host]:port` off port 22.
    fn known_host_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
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
pub(super) fn algorithms(kind: &str) -> &[&str] {
    match kind {
        "ssh-rsa" => &["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
        "ssh-ed25519" => &["ssh-ed25519"],
        "ecdsa-sha2-nistp256" => &["ecdsa-sha2-nistp256"],
        "ecdsa-sha2-nistp384" => &["ecdsa-sha2-nistp384"],
        "ecdsa-sha2-nistp521" => &["ecdsa-sha2-nistp521"],
        _ => &[],
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
fn record(path: &Path, host: &str, kind: HostKeyType, key: &[u8]) -> io::Result<()> {
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
    fn the_policy_is_enforce_unless_said() {
        assert_eq!(HostKeyPolicy::default(), HostKeyPolicy::Enforce);
    }
}

//! Authentication: the credentials [`Ssh`] offers, in order (key files, keys in memory,
//! ssh-agent identities, passwords), none of which ever prints.

use std::fmt;
use std::path::PathBuf;

use async_ssh2_lite::AsyncSession;
use hypha_runtime::Secret;

use super::stream::{RawSession, SshStream};
use super::{cause, describe, Ssh};
use crate::error::Cause;
use crate::forward::Agent;
use crate::{BootError, Method};

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
    Password(Secret<String>),
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

impl Ssh {
    /// Offer the credentials in order until one is accepted.
    pub(super) async fn authenticate(
        &self,
        session: &AsyncSession<SshStream>,
        raw: &RawSession,
    ) -> Result<(), BootError> {
        let user = self.user.as_str();
        let mut tried = Vec::new();
        // The error of the last credential that failed with one, for `source()`.
        let mut last: Option<Cause> = None;
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
                        last = Some(Box::new(e));
                        continue;
                    }
                },
                Auth::Password(password) => session.userauth_password(user, password.expose()).await,
            };
            match result {
                Ok(()) if session.authenticated() => return Ok(()),
                Ok(()) => tried.push(format!("{auth:?}: not accepted")),
                Err(e) => {
                    tried.push(format!("{auth:?}: {}", describe(&e)));
                    last = Some(cause(e));
                }
            }
        }
        let allowed = session.auth_methods(user).await.map(str::to_owned).unwrap_or_else(|_| "?".into());
        let tried = if tried.is_empty() { "no usable credential".to_owned() } else { tried.join("; ") };
        let reason = format!("{tried} (the server accepts: {allowed})");
        Err(BootError::Auth { target: self.target(), reason, source: last })
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_print() {
        let auth = Auth::Password(Secret::new("hunter2".into()));
        assert!(!format!("{auth:?}").contains("hunter2"));
        let ssh = Ssh::new("u@h").with_password("hunter2").with_key_passphrase("/k", "s3cret");
        let shown = format!("{ssh:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("s3cret"), "{shown}");
    }
}

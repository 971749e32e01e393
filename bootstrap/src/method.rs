//! Methods: how a parent gets a byte stream with a freshly started agent on the far end.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use hypha_runtime::proto::{Hello, Init};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{handshake, BootError};

/// A boxed future, as [`Method::start`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The byte stream a method opened, and the process behind it, if this side owns one.
pub struct Transport {
    /// Bytes from the agent.
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
    /// Bytes to the agent.
    pub writer: Pin<Box<dyn AsyncWrite + Send>>,
    /// The local process carrying the stream (the agent itself, or an `ssh` client), to reap or
    /// kill when the context ends.
    pub process: Option<tokio::process::Child>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("process", &self.process.as_ref().and_then(|c| c.id()))
            .finish()
    }
}

/// How to start an agent somewhere. Implement it to add a method of your own.
pub trait Method: Send + Sync + fmt::Debug {
    /// Method and host, for names and errors: `local on web1`, `ssh alice@web2:22`.
    fn target(&self) -> String;

    /// Start an agent that will print the sync marker for `nonce`, and return the stream to it.
    fn start<'a>(&'a self, nonce: &'a str) -> BoxFuture<'a, Result<Transport, BootError>>;

    /// Deadline for the handshake after [`Method::start`] returned.
    fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// An agent that finished its handshake.
#[derive(Debug)]
pub struct Booted {
    /// The stream, ready to attach to a router.
    pub transport: Transport,
    /// What the agent said about itself.
    pub hello: Hello,
    /// Bytes read past the Hello, to hand to the router.
    pub leftover: BytesMut,
}

/// Start an agent with `method`, check its Hello against this binary, and send it `init`.
pub async fn boot(
    method: &dyn Method,
    binary_hash: &str,
    max_frame: usize,
    init: impl FnOnce(&Hello) -> Init,
) -> Result<Booted, BootError> {
    let nonce = handshake::nonce();
    let target = method.target();
    let mut transport = method.start(&nonce).await?;
    let expect = handshake::Expect {
        nonce: &nonce,
        binary_hash,
        max_frame,
        timeout: method.handshake_timeout(),
        target: &target,
    };
    let (reader, writer) = (&mut transport.reader, &mut transport.writer);
    match handshake::parent(reader, writer, &expect, init).await {
        Ok((hello, leftover)) => Ok(Booted {
            transport,
            hello,
            leftover,
        }),
        Err(e) => {
            if let Some(mut child) = transport.process.take() {
                // Killed and dropped: tokio reaps a dropped child in the background.
                let _ = child.start_kill();
            }
            Err(e)
        }
    }
}

//! The handshake: the agent's sync marker and Hello, the parent's Init.
//!
//! ```text
//! agent  → parent   anything (MOTD, rc-file noise) … "HYPHA-SYNC-<nonce>\n" Frame(HELLO, Hello)
//! parent → agent    Frame(INIT, Init)
//! ```
//! The nonce is chosen by the parent per start, so text printed before the agent runs cannot fake
//! the marker. The parent ignores everything before the marker.

use std::time::Duration;

use bytes::BytesMut;
use hypha_runtime::frame::{self, handles, Frame, Header};
use hypha_runtime::proto::{Hello, Init, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::BootError;

/// At most this much output before the marker is skipped; more means something is wrong.
const MAX_PREAMBLE: usize = 1 << 20;
/// How much of the skipped output an error quotes.
const QUOTE: usize = 2048;

/// The marker an agent started with `nonce` prints before its Hello.
pub fn marker(nonce: &str) -> String {
    format!("HYPHA-SYNC-{nonce}\n")
}

/// A fresh nonce for one start: unpredictable enough that nothing printed earlier matches it.
pub fn nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// What the parent expects of the agent.
#[derive(Clone, Debug)]
pub struct Expect<'a> {
    /// The nonce the agent was started with.
    pub nonce: &'a str,
    /// Hash the agent's binary must have.
    pub binary_hash: &'a str,
    /// Largest frame to accept.
    pub max_frame: usize,
    /// Deadline for the whole handshake.
    pub timeout: Duration,
    /// Method and host, for errors.
    pub target: &'a str,
}

/// Parent side: skip to the marker, read and check the Hello, answer with the Init `init` builds.
/// `buf` holds bytes already read from the stream. Returns the Hello and any bytes read past it.
pub async fn parent<R, W>(
    reader: &mut R,
    writer: &mut W,
    expect: &Expect<'_>,
    init: impl FnOnce(&Hello) -> Init,
    mut buf: BytesMut,
) -> Result<(Hello, BytesMut), BootError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let target = expect.target.to_owned();
    let run = async {
        let marker = marker(expect.nonce);
        loop {
            if let Some(at) = find(&buf, marker.as_bytes()) {
                let _ = buf.split_to(at + marker.len());
                break;
            }
            if buf.len() > MAX_PREAMBLE {
                return Err(BootError::Garbled {
                    target: target.clone(),
                    reason: format!("no sync marker in the first {MAX_PREAMBLE} bytes; last output: {}", tail(&buf)),
                });
            }
            read_more(reader, &mut buf, &target).await?;
        }
        let hello_frame = next_frame(reader, &mut buf, expect.max_frame, &target).await?;
        if hello_frame.header.handle != handles::HELLO {
            return Err(BootError::Garbled { target: target.clone(), reason: "the first frame is not a Hello".into() });
        }
        let hello: Hello = rmp_serde::from_slice(&hello_frame.body)
            .map_err(|e| BootError::Garbled { target: target.clone(), reason: format!("undecodable Hello: {e}") })?;
        if hello.protocol != PROTOCOL_VERSION {
            return Err(BootError::Mismatch {
                target: target.clone(),
                what: "protocol version",
                ours: PROTOCOL_VERSION.to_string(),
                theirs: hello.protocol.to_string(),
            });
        }
        if hello.binary_hash != expect.binary_hash {
            return Err(BootError::Mismatch {
                target: target.clone(),
                what: "binary hash",
                ours: expect.binary_hash.to_owned(),
                theirs: hello.binary_hash.clone(),
            });
        }
        let init = init(&hello);
        let header = Header { dst: init.id, src: 0, handle: handles::INIT, reply_to: 0, flags: 0 };
        write_frame(writer, header, &init, expect.max_frame, &target).await?;
        Ok((hello, buf))
    };
    tokio::time::timeout(expect.timeout, run).await.unwrap_or(Err(BootError::Timeout {
        target: expect.target.to_owned(),
        stage: "agent handshake",
        after: expect.timeout,
    }))
}

/// Agent side: print the marker and Hello, wait for Init. Returns it and any bytes read past it.
pub async fn agent<R, W>(
    reader: &mut R,
    writer: &mut W,
    nonce: &str,
    hello: &Hello,
    timeout: Duration,
) -> Result<(Init, BytesMut), BootError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let target = "parent".to_owned();
    let run = async {
        let mut out = BytesMut::from(marker(nonce).as_bytes());
        let body = rmp_serde::to_vec(hello)
            .map_err(|e| BootError::Garbled { target: target.clone(), reason: e.to_string() })?;
        let header = Header { handle: handles::HELLO, ..Header::default() };
        frame::encode(&header, &body, frame::DEFAULT_MAX_FRAME, &mut out)
            .map_err(|e| BootError::Garbled { target: target.clone(), reason: e.to_string() })?;
        let io = |source| BootError::Io { target: target.clone(), source };
        writer.write_all(&out).await.map_err(io)?;
        writer.flush().await.map_err(io)?;
        let mut buf = BytesMut::with_capacity(4096);
        let f = next_frame(reader, &mut buf, frame::DEFAULT_MAX_FRAME, &target).await?;
        if f.header.handle != handles::INIT {
            return Err(BootError::Garbled { target: target.clone(), reason: "expected Init".into() });
        }
        let init: Init = rmp_serde::from_slice(&f.body)
            .map_err(|e| BootError::Garbled { target: target.clone(), reason: format!("undecodable Init: {e}") })?;
        Ok((init, buf))
    };
    tokio::time::timeout(timeout, run).await.unwrap_or(Err(BootError::Timeout {
        target: "parent".into(),
        stage: "Init",
        after: timeout,
    }))
}

async fn write_frame<W: AsyncWrite + Unpin, T: serde::Serialize>(
    writer: &mut W,
    header: Header,
    value: &T,
    max: usize,
    target: &str,
) -> Result<(), BootError> {
    let body =
        rmp_serde::to_vec(value).map_err(|e| BootError::Garbled { target: target.into(), reason: e.to_string() })?;
    let mut out = BytesMut::new();
    frame::encode(&header, &body, max, &mut out)
        .map_err(|e| BootError::Garbled { target: target.into(), reason: e.to_string() })?;
    let io = |source| BootError::Io { target: target.into(), source };
    writer.write_all(&out).await.map_err(io)?;
    writer.flush().await.map_err(io)
}

async fn next_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max: usize,
    target: &str,
) -> Result<Frame, BootError> {
    loop {
        match frame::decode(buf, max) {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => read_more(reader, buf, target).await?,
            Err(e) => return Err(BootError::Garbled { target: target.into(), reason: e.to_string() }),
        }
    }
}

async fn read_more<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut BytesMut, target: &str) -> Result<(), BootError> {
    buf.reserve(8192);
    match reader.read_buf(buf).await {
        Ok(0) => Err(BootError::Exited { target: target.into(), output: tail(buf) }),
        Ok(_) => Ok(()),
        Err(source) => Err(BootError::Io { target: target.into(), source }),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn tail(buf: &[u8]) -> String {
    String::from_utf8_lossy(&buf[buf.len().saturating_sub(QUOTE)..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(protocol: u32, hash: &str) -> Hello {
        Hello { protocol, binary_hash: hash.into(), pid: 1, user: "u".into(), host: "h".into(), arch: "x".into() }
    }

    fn init(_: &Hello) -> Init {
        Init {
            id: 9,
            ancestors: vec![0],
            name: "t".into(),
            max_frame: 1 << 20,
            ids: (0, 0),
            link_timeout_ms: 30_000,
            call_timeout_ms: 30_000,
            log_level: 3,
        }
    }

    async fn run(agent_says: Vec<u8>, hash: &str) -> Result<(Hello, BytesMut), BootError> {
        let (mut near, mut far) = tokio::io::duplex(1 << 20);
        far.write_all(&agent_says).await.unwrap();
        drop(far.shutdown().await);
        let (mut r, mut w) = tokio::io::split(&mut near);
        let expect = Expect {
            nonce: "n1",
            binary_hash: hash,
            max_frame: 1 << 20,
            timeout: Duration::from_secs(5),
            target: "test",
        };
        parent(&mut r, &mut w, &expect, init, BytesMut::new()).await
    }

    fn agent_bytes(preamble: &[u8], h: &Hello) -> Vec<u8> {
        let mut out = preamble.to_vec();
        out.extend_from_slice(marker("n1").as_bytes());
        let body = rmp_serde::to_vec(h).unwrap();
        let mut f = BytesMut::new();
        frame::encode(&Header { handle: handles::HELLO, ..Header::default() }, &body, 1 << 20, &mut f).unwrap();
        out.extend_from_slice(&f);
        out
    }

    #[tokio::test]
    async fn junk_before_the_marker_is_skipped() {
        let junk = b"Welcome!\nLast login: yesterday\nHYPHA-SYNC-wrongnonce\n";
        let (h, _) = run(agent_bytes(junk, &hello(PROTOCOL_VERSION, "abc")), "abc").await.expect("handshake");
        assert_eq!(h.binary_hash, "abc");
    }

    #[tokio::test]
    async fn protocol_and_binary_mismatches_are_refused() {
        let err = run(agent_bytes(b"", &hello(PROTOCOL_VERSION + 1, "abc")), "abc").await.unwrap_err();
        assert!(matches!(err, BootError::Mismatch { what: "protocol version", .. }), "{err}");
        let err = run(agent_bytes(b"", &hello(PROTOCOL_VERSION, "abc")), "def").await.unwrap_err();
        assert!(err.to_string().contains("binary hash mismatch: the agent has abc, this side has def"), "{err}");
    }

    #[tokio::test]
    async fn an_agent_that_dies_early_is_quoted() {
        let err = run(b"./agent: error while loading shared libraries\n".to_vec(), "abc").await.unwrap_err();
        assert!(err.to_string().contains("it said: ./agent: error while loading shared libraries"), "{err}");
    }

    #[tokio::test]
    async fn garbage_after_the_marker_is_an_error() {
        let mut bytes = marker("n1").into_bytes();
        bytes.extend_from_slice(b"this is not a frame at all");
        let err = run(bytes, "abc").await.unwrap_err();
        assert!(matches!(err, BootError::Garbled { .. }), "{err}");
    }
}

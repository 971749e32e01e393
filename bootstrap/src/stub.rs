//! The sh stub: what a remote host runs before the agent exists there.
//!
//! The stub (`stub.sh`, run as `sh -c '<stub>' hypha NONCE HASH`) looks for a cached agent with the
//! binary's content hash in `$XDG_CACHE_HOME/hypha`, `~/.cache/hypha`, `/tmp/hypha-$UID` and
//! `/dev/shm/hypha-$UID`, finds the first of them that is writable and lets programs run, and
//! prints one line:
//!
//! ```text
//! HYPHA-STUB <nonce> <arch> <user> CACHED|NEED|NODIR gzip|raw <dir, or the dirs tried>
//! ```
//! The parent answers `RUN` (cached) or `SEND <len> <cksum>` followed by `len` bytes (gzip when the
//! host has it); the stub writes them under a temporary name, checks the POSIX `cksum`, makes the
//! file executable, renames it into place, and `exec`s it as the agent.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{BootError, Identity};

const STUB: &str = include_str!("stub.sh");
/// At most this much output before the stub's line is skipped.
const MAX_PREAMBLE: usize = 1 << 20;

/// The remote command line that runs the stub.
pub fn command(nonce: &str, hash: &str) -> String {
    format!("sh -c '{STUB}' hypha {nonce} {hash}")
}

/// The stub as an argument vector, for methods that run it without a shell (sudo, su).
pub fn argv(nonce: &str, hash: &str) -> [String; 6] {
    ["sh".into(), "-c".into(), STUB.into(), "hypha".into(), nonce.into(), hash.into()]
}

/// This executable, ready to upload.
#[derive(Debug)]
pub struct Payload {
    /// The executable's size.
    pub raw_len: u64,
    /// POSIX `cksum` CRC of the executable.
    pub cksum: u32,
    /// The executable itself.
    pub raw: Vec<u8>,
    /// The executable, gzip-compressed (fast level).
    pub gzip: Vec<u8>,
}

impl Payload {
    /// This executable's payload, read and compressed once per process.
    pub fn current() -> std::io::Result<&'static Payload> {
        static PAYLOAD: OnceLock<Payload> = OnceLock::new();
        if let Some(p) = PAYLOAD.get() {
            return Ok(p);
        }
        let raw = std::fs::read(std::env::current_exe()?)?;
        let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(raw.len() / 2), flate2::Compression::fast());
        gz.write_all(&raw)?;
        let gzip = gz.finish()?;
        let payload = Payload { raw_len: raw.len() as u64, cksum: cksum(&raw), raw, gzip };
        Ok(PAYLOAD.get_or_init(|| payload))
    }
}

/// The POSIX `cksum` CRC (polynomial 0x04C11DB7, the length appended, complemented).
pub fn cksum(data: &[u8]) -> u32 {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = (i as u32) << 24;
            for _ in 0..8 {
                c = if c & 0x8000_0000 != 0 { (c << 1) ^ 0x04C1_1DB7 } else { c << 1 };
            }
            *slot = c;
        }
        t
    });
    let step = |crc: u32, b: u8| (crc << 8) ^ table[((crc >> 24) as u8 ^ b) as usize];
    let mut crc = data.iter().fold(0u32, |c, &b| step(c, b));
    let mut len = data.len();
    while len > 0 {
        crc = step(crc, len as u8);
        len >>= 8;
    }
    !crc
}

/// What the stub did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes uploaded, or `None` when the agent was found cached.
    pub uploaded: Option<u64>,
    /// The cache directory the agent runs from.
    pub dir: String,
    /// The remote user, as `id -un` says.
    pub user: String,
}

/// Talk to a running stub: read its report, refuse a host we cannot serve, send the agent if it is
/// not cached. `buf` holds bytes already read. Returns what happened and any bytes read past the
/// stub's line.
pub async fn run<R, W>(
    reader: &mut R,
    writer: &mut W,
    mut buf: BytesMut,
    nonce: &str,
    target: &str,
    timeout: Duration,
) -> Result<(Outcome, BytesMut), BootError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let work = async {
        let prefix = format!("HYPHA-STUB {nonce} ");
        let line = loop {
            if let Some(start) = find(&buf, prefix.as_bytes()) {
                if let Some(end) = buf[start..].iter().position(|&b| b == b'\n') {
                    let line = String::from_utf8_lossy(&buf[start + prefix.len()..start + end]).into_owned();
                    let _ = buf.split_to(start + end + 1);
                    break line;
                }
            }
            if buf.len() > MAX_PREAMBLE {
                return Err(BootError::Garbled {
                    target: target.into(),
                    reason: "no report from the bootstrap stub".into(),
                });
            }
            buf.reserve(4096);
            match reader.read_buf(&mut buf).await {
                Ok(0) => {
                    return Err(BootError::Exited {
                        target: target.into(),
                        output: String::from_utf8_lossy(&buf).into_owned(),
                    })
                }
                Ok(_) => {}
                Err(source) => return Err(BootError::Io { target: target.into(), source }),
            }
        };
        let fields: Vec<&str> = line.splitn(5, ' ').collect();
        let [arch, user, status, compression, dir] = fields[..] else {
            return Err(BootError::Garbled { target: target.into(), reason: format!("bad stub report {line:?}") });
        };
        let ours = &Identity::current().arch;
        if arch != ours {
            return Err(BootError::Arch { target: target.into(), remote: arch.into(), local: ours.clone() });
        }
        let io = |source| BootError::Io { target: target.into(), source };
        let uploaded = match status {
            "CACHED" => {
                writer.write_all(b"RUN\n").await.map_err(io)?;
                None
            }
            "NEED" => {
                let payload = Payload::current().map_err(io)?;
                let body = if compression == "gzip" { &payload.gzip } else { &payload.raw };
                let head = format!("SEND {} {}\n", body.len(), payload.cksum);
                writer.write_all(head.as_bytes()).await.map_err(io)?;
                writer.write_all(body).await.map_err(io)?;
                Some(body.len() as u64)
            }
            "NODIR" => return Err(BootError::NoCacheDir { target: target.into(), tried: dir.replace(',', ", ") }),
            other => {
                return Err(BootError::Garbled {
                    target: target.into(),
                    reason: format!("unknown stub status {other:?}"),
                })
            }
        };
        writer.flush().await.map_err(io)?;
        Ok((Outcome { uploaded, dir: dir.into(), user: user.into() }, buf))
    };
    tokio::time::timeout(timeout, work).await.unwrap_or(Err(BootError::Timeout {
        target: target.into(),
        stage: "bootstrap stub report",
        after: timeout,
    }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cksum_matches_posix_cksum() {
        // Values printed by `printf ... | cksum` and `head -c 1000 /dev/zero | cksum`.
        assert_eq!(cksum(b""), 4294967295);
        assert_eq!(cksum(b"hello\n"), 3015617425);
        assert_eq!(cksum(&[0u8; 1000]), 2610763910);
    }

    #[test]
    fn the_stub_can_be_single_quoted() {
        assert!(!STUB.contains('\''));
    }
}

//! The sh stub: what a remote host runs before the agent exists there.
//!
//! The stub (`stub.sh`, run as `sh -c '<stub>' hypha NONCE [ARCH HASH SIZE CKSUM]...`, one
//! quadruple per build of the program, [`Builds`]) picks the build for its host's `uname -m`, then
//! the first of `$XDG_CACHE_HOME/hypha`, `~/.cache/hypha`, `/tmp/hypha-$UID` and
//! `/dev/shm/hypha-$UID` that is the connecting user's own (owned by them, writable by no one
//! else, in a parent no one else can rename entries of) and either holds that build or takes it
//! and lets it run. It uses a cached `hypha-HASH` only if that is the user's own regular file,
//! writable by no one else, of SIZE bytes and with this POSIX `cksum` (when the host has `cksum`;
//! the Hello's hash check is the last word either way). It needs only POSIX sh and the common
//! busybox applets, and falls back where one is missing (no `cksum`: size only; no `gzip`: raw;
//! no `head -c`: `dd`). It prints one line, which [`Report::parse`] reads:
//!
//! ```text
//! HYPHA-STUB <nonce> <arch> <user> CACHED|NEED|NODIR|NOBUILD gzip|raw <found> <dir, or the dirs tried>
//! ```
//! `<found>` is `-`, or what was wrong with a cached agent that NEED will replace (`size=N`,
//! `cksum=N`, `uid=N`, `mode=M`, ...); NOBUILD says no build was offered for `<arch>`. A cached
//! agent the stub `exec`s at once, with no word from the parent (that would cost a round trip);
//! for NEED the parent answers `SEND <len>` followed by `len` bytes (gzip when the host has it);
//! the stub writes them under a temporary name, checks size and `cksum`, makes the file
//! executable, renames it into place, says
//! `HYPHA-STUB-INSTALLED <nonce>` (or `HYPHA-STUB-FAILED <nonce> <why>`) and `exec`s it as the
//! agent (`hypha-HASH --hypha-agent NONCE`). Starts that find no agent wait (bounded) for the
//! one holding `.lock-HASH` in the directory to install it, so many starts at once on one host
//! upload it once.

use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::OnceCell;

use crate::builds::{blocking, Builds};
use crate::identity::{each_chunk, hex, open_exe};
use crate::{exe_hash, BootError};

const STUB: &str = include_str!("stub.sh");
/// At most this much output before the stub's line is skipped.
const MAX_PREAMBLE: usize = 1 << 20;

/// What the stub must find to run a cached agent: the build's content hash (the file's name), its
/// size and its POSIX `cksum`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    /// xxh3-128 of the executable, as [`exe_hash`] gives it.
    pub hash: String,
    /// Size in bytes.
    pub len: u64,
    /// POSIX `cksum` CRC.
    pub cksum: u32,
}

impl Fingerprint {
    /// This executable's fingerprint, computed once per process on a blocking thread (concurrent
    /// first callers wait for the same result). Cancel safe: a dropped caller leaves the work to
    /// the next one.
    pub async fn current() -> std::io::Result<&'static Fingerprint> {
        static FINGERPRINT: OnceCell<Fingerprint> = OnceCell::const_new();
        FINGERPRINT
            .get_or_try_init(|| {
                blocking(|| {
                    let hash = exe_hash()?.to_owned();
                    let (len, cksum) = sum_reader(open_exe()?)?;
                    Ok(Fingerprint { hash, len, cksum })
                })
            })
            .await
    }

    /// The fingerprint of the file at `path` (read now, once, on this thread).
    pub fn of_file(path: &std::path::Path) -> std::io::Result<Fingerprint> {
        let (mut hasher, mut crc) = (xxhash_rust::xxh3::Xxh3::new(), Cksum::new());
        each_chunk(std::fs::File::open(path)?, |chunk| {
            hasher.update(chunk);
            crc.update(chunk);
        })?;
        Ok(Fingerprint { hash: hex(hasher.digest128()), len: crc.len, cksum: crc.finish() })
    }
}

/// Size and `cksum` of everything `file` yields.
fn sum_reader(file: impl Read) -> std::io::Result<(u64, u32)> {
    let mut crc = Cksum::new();
    each_chunk(file, |chunk| crc.update(chunk))?;
    Ok((crc.len, crc.finish()))
}

/// The remote command line that runs the stub, offering `builds`.
pub fn command(nonce: &str, builds: &Builds) -> String {
    let argv = argv(nonce, builds);
    format!("sh -c '{}' {}", argv[2], argv[3..].join(" "))
}

/// The stub as an argument vector, for methods that run it without a shell (sudo, su): after the
/// nonce, `ARCH HASH SIZE CKSUM` for each build.
pub fn argv(nonce: &str, builds: &Builds) -> Vec<String> {
    let mut argv = vec!["sh".into(), "-c".into(), STUB.into(), "hypha".into(), nonce.into()];
    for b in builds.iter() {
        let f = b.fingerprint();
        argv.extend([b.arch().to_owned(), f.hash.clone(), f.len.to_string(), f.cksum.to_string()]);
    }
    argv
}

/// A build, ready to upload.
#[derive(Debug)]
pub struct Payload {
    /// Its content hash, as [`exe_hash`] gives it.
    pub hash: String,
    /// Its size.
    pub raw_len: u64,
    /// POSIX `cksum` CRC of it.
    pub cksum: u32,
    /// The executable itself.
    pub raw: Vec<u8>,
    /// The executable, gzip-compressed (fast level).
    pub gzip: Vec<u8>,
}

impl Payload {
    /// This executable's payload, read and compressed once per process on a blocking thread
    /// (concurrent first callers wait for the same result). Cancel safe, like
    /// [`Fingerprint::current`].
    pub async fn current() -> std::io::Result<Arc<Payload>> {
        static PAYLOAD: OnceCell<Arc<Payload>> = OnceCell::const_new();
        PAYLOAD.get_or_try_init(|| blocking(|| Ok(Arc::new(Payload::from_reader(open_exe()?)?)))).await.cloned()
    }

    /// The payload of everything `file` yields.
    pub fn from_reader(mut file: impl Read) -> std::io::Result<Payload> {
        let mut raw = Vec::new();
        file.read_to_end(&mut raw)?;
        let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(raw.len() / 2), flate2::Compression::fast());
        gz.write_all(&raw)?;
        let gzip = gz.finish()?;
        Ok(Payload::new(raw, gzip))
    }

    /// The payload of `gzip`, which must inflate to at most `limit` bytes.
    pub fn from_gzip(gzip: Vec<u8>, limit: u64) -> std::io::Result<Payload> {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gzip[..]).take(limit.saturating_add(1)).read_to_end(&mut raw)?;
        if raw.len() as u64 > limit {
            return Err(std::io::Error::other(format!("a build larger than the {limit} bytes it was said to be")));
        }
        Ok(Payload::new(raw, gzip))
    }

    fn new(raw: Vec<u8>, gzip: Vec<u8>) -> Payload {
        let hash = crate::identity::hash_bytes(&raw);
        Payload { hash, raw_len: raw.len() as u64, cksum: cksum(&raw), raw, gzip }
    }
}

/// The POSIX `cksum` CRC (polynomial 0x04C11DB7, most significant bit first, the length
/// appended, complemented), computed incrementally.
#[derive(Clone, Debug)]
pub struct Cksum {
    crc: u32,
    len: u64,
}

impl Default for Cksum {
    fn default() -> Self {
        Cksum::new()
    }
}

impl Cksum {
    /// Nothing summed yet.
    pub fn new() -> Self {
        Cksum { crc: 0, len: 0 }
    }

    /// Add `data`.
    pub fn update(&mut self, data: &[u8]) {
        let t = tables();
        let mut crc = self.crc;
        let mut chunks = data.chunks_exact(8);
        // Slicing by 8: eight table lookups per eight bytes instead of a dependent chain of eight.
        for c in &mut chunks {
            let a = crc ^ u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            let b = u32::from_be_bytes([c[4], c[5], c[6], c[7]]);
            crc = t[7][(a >> 24) as usize]
                ^ t[6][(a >> 16 & 0xff) as usize]
                ^ t[5][(a >> 8 & 0xff) as usize]
                ^ t[4][(a & 0xff) as usize]
                ^ t[3][(b >> 24) as usize]
                ^ t[2][(b >> 16 & 0xff) as usize]
                ^ t[1][(b >> 8 & 0xff) as usize]
                ^ t[0][(b & 0xff) as usize];
        }
        for &byte in chunks.remainder() {
            crc = step(t, crc, byte);
        }
        self.crc = crc;
        self.len += data.len() as u64;
    }

    /// The CRC `cksum` prints for everything added.
    pub fn finish(&self) -> u32 {
        let t = tables();
        let mut crc = self.crc;
        let mut len = self.len;
        while len > 0 {
            crc = step(t, crc, len as u8);
            len >>= 8;
        }
        !crc
    }
}

fn step(t: &[[u32; 256]; 8], crc: u32, byte: u8) -> u32 {
    (crc << 8) ^ t[0][((crc >> 24) as u8 ^ byte) as usize]
}

fn tables() -> &'static [[u32; 256]; 8] {
    static TABLES: OnceLock<[[u32; 256]; 8]> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = [[0u32; 256]; 8];
        for (i, slot) in t[0].iter_mut().enumerate() {
            let mut c = (i as u32) << 24;
            for _ in 0..8 {
                c = if c & 0x8000_0000 != 0 { (c << 1) ^ 0x04C1_1DB7 } else { c << 1 };
            }
            *slot = c;
        }
        // t[k][i]: the CRC of byte i followed by k zero bytes.
        for k in 1..8 {
            let (done, rest) = t.split_at_mut(k);
            let (prev, first) = (&done[k - 1], &done[0]);
            for (slot, &p) in rest[0].iter_mut().zip(prev.iter()) {
                *slot = (p << 8) ^ first[(p >> 24) as usize];
            }
        }
        t
    })
}

/// The POSIX `cksum` CRC of `data`.
pub fn cksum(data: &[u8]) -> u32 {
    let mut c = Cksum::new();
    c.update(data);
    c.finish()
}

/// How the agent is to be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// The host has `gzip`.
    Gzip,
    /// It does not: send the executable as it is.
    Raw,
}

/// What the stub found in the host's cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cache {
    /// The agent is there and fits: run it.
    Cached {
        /// The directory it is in.
        dir: String,
    },
    /// Send the agent to this directory.
    Need {
        /// The directory the stub picked.
        dir: String,
        /// What was wrong with the agent of this name already there, if one was (`size=N`,
        /// `cksum=N`, `uid=N`, `mode=M`, `type=M`, `acl`, `noexec`, `unreadable`).
        found: Option<String>,
    },
    /// There is no build for the host's architecture among those offered.
    NoBuild,
    /// No directory is both the user's own and able to take and run the agent.
    NoDir {
        /// The directories tried, each with why it was not used.
        tried: String,
    },
}

/// The stub's report line, as [`Report::parse`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The nonce the stub was started with.
    pub nonce: String,
    /// `uname -m` there.
    pub arch: String,
    /// `id -un` there.
    pub user: String,
    /// Whether it takes gzip.
    pub compression: Compression,
    /// What it found in the cache.
    pub cache: Cache,
}

/// A line from the stub that is not what it prints.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad stub report: {0}")]
pub struct ReportError(String);

impl Report {
    /// The prefix of the report line of a stub started with `nonce`.
    pub fn prefix(nonce: &str) -> String {
        format!("HYPHA-STUB {nonce} ")
    }

    /// Read a report line (`HYPHA-STUB <nonce> ...`, without its newline; a trailing `\r` is
    /// allowed). Pure: it is what a remote host says, so it refuses anything unexpected,
    /// including control characters (which would end up in error messages).
    pub fn parse(line: &str) -> Result<Report, ReportError> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let bad = |why: &str| ReportError(format!("{why} in {line:?}"));
        if line.chars().any(char::is_control) {
            return Err(bad("control characters"));
        }
        let rest = line.strip_prefix("HYPHA-STUB ").ok_or_else(|| bad("no HYPHA-STUB prefix"))?;
        let fields: Vec<&str> = rest.splitn(7, ' ').collect();
        let [nonce, arch, user, status, compression, found, dir] = fields[..] else {
            return Err(bad("too few fields"));
        };
        if [nonce, arch, user, status, compression, found].iter().any(|f| f.is_empty()) || dir.is_empty() {
            return Err(bad("an empty field"));
        }
        let compression = match compression {
            "gzip" => Compression::Gzip,
            "raw" => Compression::Raw,
            _ => return Err(bad("unknown compression")),
        };
        let dir = dir.to_owned();
        let cache = match status {
            "CACHED" => Cache::Cached { dir },
            "NEED" => Cache::Need { dir, found: (found != "-").then(|| found.to_owned()) },
            "NODIR" => Cache::NoDir { tried: dir },
            "NOBUILD" => Cache::NoBuild,
            _ => return Err(bad("unknown status")),
        };
        Ok(Report { nonce: nonce.into(), arch: arch.into(), user: user.into(), compression, cache })
    }
}

/// The stub's word after an upload, as [`Installed::parse`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Installed {
    /// The agent is in place and about to run.
    Done,
    /// It could not be installed, for this reason (the stub's words).
    Failed(String),
}

impl Installed {
    /// The prefixes of the stub's lines after an upload.
    const DONE: &'static str = "HYPHA-STUB-INSTALLED ";
    const FAILED: &'static str = "HYPHA-STUB-FAILED ";

    /// Read `HYPHA-STUB-INSTALLED <nonce>` or `HYPHA-STUB-FAILED <nonce> <why>` (without the
    /// newline) for a stub started with `nonce`. Pure, like [`Report::parse`].
    pub fn parse(line: &str, nonce: &str) -> Result<Installed, ReportError> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let bad = |why: &str| ReportError(format!("{why} in {line:?}"));
        if line.chars().any(char::is_control) {
            return Err(bad("control characters"));
        }
        if let Some(rest) = line.strip_prefix(Self::DONE) {
            return if rest == nonce { Ok(Installed::Done) } else { Err(bad("another nonce")) };
        }
        let rest = line.strip_prefix(Self::FAILED).ok_or_else(|| bad("no HYPHA-STUB-INSTALLED or -FAILED"))?;
        match rest.split_once(' ') {
            Some((n, why)) if n == nonce && !why.is_empty() => Ok(Installed::Failed(why.to_owned())),
            _ => Err(bad("another nonce, or no reason")),
        }
    }
}

/// In words, what the stub found wrong with a cached agent (a `<found>` token of its report).
pub fn describe_found(found: &str, agent: &Fingerprint) -> String {
    let (what, value) = found.split_once('=').unwrap_or((found, ""));
    match what {
        "size" => format!("{value} bytes long, not {}", agent.len),
        "cksum" => format!("damaged (cksum {value}, not {})", agent.cksum),
        "uid" => format!("owned by uid {value}, not this user"),
        "mode" => format!("writable by others (mode {value})"),
        "type" => format!("not a regular file (mode {value})"),
        "acl" => "under an access control list".to_owned(),
        "noexec" => "not executable".to_owned(),
        "unreadable" => "unreadable".to_owned(),
        _ => format!("not as expected ({found})"),
    }
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
    /// What was wrong with the cached agent the upload replaced, in words, if one was there.
    pub replaced: Option<String>,
    /// The hash of the build that runs: the agent's Hello must say the same.
    pub hash: String,
}

/// Talk to a running stub started with `builds` ([`command`]): read its report, refuse a host
/// there is no build for, send the build for the host's architecture if it is not cached (and wait
/// for the stub to say it is installed). `buf` holds bytes already read. Returns what happened and
/// any bytes read past the stub's last line.
pub async fn run<R, W>(
    reader: &mut R,
    writer: &mut W,
    mut buf: BytesMut,
    nonce: &str,
    builds: &Builds,
    target: &str,
    timeout: Duration,
) -> Result<(Outcome, BytesMut), BootError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let work = async {
        let line = read_line(reader, &mut buf, &Report::prefix(nonce), target).await?;
        let garbled = |reason: String| BootError::Garbled { target: target.into(), reason };
        let report = Report::parse(&line).map_err(|e| garbled(e.to_string()))?;
        if report.nonce != nonce {
            return Err(garbled(format!("the stub's report is for another start: {line:?}")));
        }
        let no_build =
            || BootError::Arch { target: target.into(), remote: report.arch.clone(), local: builds.arches() };
        let build = builds.get(&report.arch).ok_or_else(no_build)?;
        let agent = build.fingerprint();
        let io = |source| BootError::Io { target: target.into(), source };
        let outcome = match report.cache {
            // The stub has already started it: the agent's Hello is next.
            Cache::Cached { dir } => {
                Outcome { uploaded: None, dir, user: report.user, replaced: None, hash: agent.hash.clone() }
            }
            Cache::Need { dir, found } => {
                let replaced = found.map(|f| describe_found(&f, agent));
                if let Some(what) = &replaced {
                    tracing::warn!(%target, %dir, "the cached agent there is {what}: uploading a fresh one");
                }
                let payload = build.payload().await.map_err(io)?;
                let body = if report.compression == Compression::Gzip { &payload.gzip } else { &payload.raw };
                writer.write_all(format!("SEND {}\n", body.len()).as_bytes()).await.map_err(io)?;
                writer.write_all(body).await.map_err(io)?;
                writer.flush().await.map_err(io)?;
                let answer = read_line(reader, &mut buf, "HYPHA-STUB-", target).await?;
                match Installed::parse(&answer, nonce).map_err(|e| garbled(e.to_string()))? {
                    Installed::Done => {}
                    Installed::Failed(reason) => {
                        return Err(BootError::Install {
                            target: target.into(),
                            dir,
                            found: replaced,
                            reason: format!(
                                "sent {} bytes{}; {reason}",
                                body.len(),
                                if report.compression == Compression::Gzip { " of gzip" } else { "" }
                            ),
                        })
                    }
                }
                let hash = agent.hash.clone();
                Outcome { uploaded: Some(body.len() as u64), dir, user: report.user, replaced, hash }
            }
            // The stub was offered every build; it found none for its host (checked above, too).
            Cache::NoBuild => return Err(no_build()),
            Cache::NoDir { tried } => {
                return Err(BootError::NoCacheDir { target: target.into(), tried: tried.replace(',', ", ") })
            }
        };
        Ok((outcome, buf))
    };
    tokio::time::timeout(timeout, work).await.unwrap_or(Err(BootError::Timeout {
        target: target.into(),
        stage: "bootstrap stub report",
        after: timeout,
    }))
}

/// Read up to the first whole line that starts with `prefix` (skipping whatever comes before it,
/// at most [`MAX_PREAMBLE`] bytes), and consume it. The line without its newline.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    prefix: &str,
    target: &str,
) -> Result<String, BootError> {
    loop {
        if let Some(start) = find(buf, prefix.as_bytes()) {
            if let Some(end) = buf[start..].iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&buf[start..start + end]).into_owned();
                let _ = buf.split_to(start + end + 1);
                return Ok(line);
            }
        }
        if buf.len() > MAX_PREAMBLE {
            return Err(BootError::Garbled {
                target: target.into(),
                reason: format!("no {}line from the bootstrap stub", prefix.trim_end()),
            });
        }
        buf.reserve(4096);
        match reader.read_buf(buf).await {
            Ok(0) => {
                return Err(BootError::Exited {
                    target: target.into(),
                    output: String::from_utf8_lossy(buf).into_owned(),
                })
            }
            Ok(_) => {}
            Err(source) => return Err(BootError::Io { target: target.into(), source }),
        }
    }
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
    fn sliced_cksum_matches_the_byte_at_a_time_one() {
        fn bytewise(data: &[u8]) -> u32 {
            let t = tables();
            let mut crc = data.iter().fold(0u32, |c, &b| step(t, c, b));
            let mut len = data.len();
            while len > 0 {
                crc = step(t, crc, len as u8);
                len >>= 8;
            }
            !crc
        }
        let data: Vec<u8> = (0..10_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for len in [0, 1, 7, 8, 9, 63, 64, 1000, 9999, 10_000] {
            assert_eq!(cksum(&data[..len]), bytewise(&data[..len]), "length {len}");
        }
        // Fed in uneven pieces, the same.
        let mut c = Cksum::new();
        for piece in data.chunks(37) {
            c.update(piece);
        }
        assert_eq!(c.finish(), cksum(&data));
    }

    #[test]
    fn reports_parse_and_hostile_ones_are_refused() {
        let r = Report::parse("HYPHA-STUB n1 x86_64 alice NEED gzip size=12 /home/alice/.cache/hypha").unwrap();
        assert_eq!(r.nonce, "n1");
        assert_eq!(r.compression, Compression::Gzip);
        assert_eq!(r.cache, Cache::Need { dir: "/home/alice/.cache/hypha".into(), found: Some("size=12".into()) });
        let r = Report::parse("HYPHA-STUB n1 x86_64 alice CACHED raw - /a dir/with spaces\r").unwrap();
        assert_eq!(r.cache, Cache::Cached { dir: "/a dir/with spaces".into() });
        let r = Report::parse("HYPHA-STUB n1 x86_64 bob NODIR gzip - /tmp/hypha-1 (uid=2),/x (y)").unwrap();
        assert_eq!(r.cache, Cache::NoDir { tried: "/tmp/hypha-1 (uid=2),/x (y)".into() });
        for bad in [
            "",
            "HYPHA-STUB",
            "HYPHA-STUB n1 x86_64 alice CACHED gzip -",
            "HYPHA-STUB n1 x86_64 alice MAYBE gzip - /d",
            "HYPHA-STUB n1 x86_64 alice NEED zstd - /d",
            "HYPHA-STUB n1 x86_64  NEED gzip - /d",
            "HYPHA-STUB n1 x86_64 alice NEED gzip - /d\x1b[2J",
            "NOT-A-STUB n1 x86_64 alice NEED gzip - /d",
        ] {
            assert!(Report::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Installed::parse("HYPHA-STUB-INSTALLED n1", "n1"), Ok(Installed::Done));
        assert_eq!(Installed::parse("HYPHA-STUB-FAILED n1 disk full", "n1"), Ok(Installed::Failed("disk full".into())));
        for bad in ["HYPHA-STUB-INSTALLED n2", "HYPHA-STUB-FAILED n1", "HYPHA-STUB-FAILED n2 x", "HYPHA-STUB-OK n1"] {
            assert!(Installed::parse(bad, "n1").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_stub_can_be_single_quoted() {
        assert!(!STUB.contains('\''));
    }
}

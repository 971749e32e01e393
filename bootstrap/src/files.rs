//! The file service: files and whole trees, pushed, pulled and copied between any two contexts.
//!
//! A transfer is one byte stream of *records*, whatever the tree: an entry (path, kind, mode and,
//! when asked, owner and times), then for a file its data and its xxh3-128. One stream for the
//! whole tree means many small files are pipelined: they share chunks, with no round trip each.
//! [`ReadTree`] (`hypha.files.read`, a download) is a tree's source in the context that holds it;
//! [`WriteTree`] (`hypha.files.write`, an upload) is its sink. A push runs the source here and
//! the sink there, a pull the other way round, and a copy between two other contexts relays one's
//! source stream into the other's sink unread. Memory is bounded on every side: a few chunks on
//! their way between the file system thread and the stream, and the stream's window.
//!
//! A record is `tag (u8) | len (u32 LE) | body`: an entry's body is msgpack, data's is raw bytes,
//! a file's end is its digest. The sink writes each file to a temporary name next to its target
//! and renames it into place once size and digest match; on any failure (no space, no permission,
//! a digest that differs, a stream that ends early) the temporary file is removed. A sink trusts
//! nothing it reads: paths must stay inside the target (no `..`, no absolute paths, nothing
//! written through a symbolic link), a file's data may not pass its declared size, and a record
//! longer than its kind allows ends the transfer.
//!
//! Runs of zeros of a page or more are not written but skipped (the file is sparse where its
//! source most likely was).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hypha_runtime::stream::CHUNK;
use hypha_runtime::{ByteReceiver, ByteSender, Cx, HandlerError, Request, StreamError};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::Identity;

/// What to keep of each file beyond its content and mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Keep {
    /// Owner and group (the sink must be allowed to set them: root, as a rule).
    pub owner: bool,
    /// Modification and access times (set to the source's modification time).
    pub times: bool,
}

impl Keep {
    /// Content and mode only.
    pub fn mode() -> Self {
        Keep::default()
    }

    /// Keep owner and group too.
    pub fn with_owner(mut self) -> Self {
        self.owner = true;
        self
    }

    /// Keep modification times too.
    pub fn with_times(mut self) -> Self {
        self.times = true;
        self
    }
}

/// What a transfer moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Transfer {
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symbolic links made.
    pub links: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Entries that are neither files, directories nor links (fifos, sockets, devices): left out.
    pub skipped: u64,
}

/// Why a file, or a tree, could not be moved: names the host, the path and the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// A file system operation failed.
    #[error("{host}: {path}: {op}: {source}")]
    Io {
        /// The host it failed on.
        host: String,
        /// The path it failed on.
        path: PathBuf,
        /// What was being done (`open`, `write`, `rename`, ...).
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The stream of records was not what a source sends.
    #[error("{host}: {path}: {reason}")]
    Refused {
        /// The host that refused it.
        host: String,
        /// The path it was for.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The call carrying the transfer failed (the far side's own error, a lost link).
    #[error(transparent)]
    Call(#[from] hypha_runtime::CallError),
}

impl FileError {
    fn io(path: &Path, op: &'static str, source: std::io::Error) -> Self {
        FileError::Io { host: Identity::current().host.clone(), path: path.to_owned(), op, source }
    }

    fn refused(path: &Path, reason: impl Into<String>) -> Self {
        FileError::Refused { host: Identity::current().host.clone(), path: path.to_owned(), reason: reason.into() }
    }
}

/// Send the tree (or the file) at `path` in the context called: its source stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadTree {
    /// A file, a directory (sent whole), or a link to either.
    pub path: PathBuf,
    /// What to send beyond content and mode.
    pub keep: Keep,
}

impl Request for ReadTree {
    type Response = Transfer;
    const NAME: &'static str = "hypha.files.read";
}

/// Write the tree (or the file) the call uploads at `path` in the context called: its sink. As
/// with `cp -r` and `scp -r`: into an existing directory under the source's own name, otherwise
/// as `path` itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WriteTree {
    /// Where it goes.
    pub path: PathBuf,
    /// What to keep beyond content and mode.
    pub keep: Keep,
}

impl Request for WriteTree {
    type Response = Transfer;
    const NAME: &'static str = "hypha.files.write";
}

const ENTRY: u8 = 1;
const DATA: u8 = 2;
const DONE: u8 = 3;
/// A record's tag and length.
const HEAD: usize = 5;
/// Longest entry record: a path and a link target of 4 KiB each, and the rest.
const MAX_ENTRY: usize = 16 << 10;
/// Chunks on their way between the file system thread and the stream, each way.
const QUEUE: usize = 8;
/// Zero runs at least this long are skipped, not written.
const PAGE: usize = 4096;

#[derive(Debug, Serialize, Deserialize)]
enum Kind {
    File { size: u64 },
    Dir,
    Link { target: Vec<u8> },
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// Relative to the transfer's root, components joined by `/`; empty for the root.
    path: Vec<u8>,
    /// For the root: the source's own name (the sink's target, inside an existing directory).
    name: Vec<u8>,
    kind: Kind,
    mode: u32,
    owner: Option<(u32, u32)>,
    mtime: Option<(i64, i64)>,
}

// ---- the source ----------------------------------------------------------------------------

/// Cuts records into chunks of at most [`CHUNK`] and hands each full one on.
struct Records<'a> {
    buf: BytesMut,
    out: &'a mut dyn FnMut(Bytes) -> bool,
}

/// The receiving end went away: stop reading.
struct Gone;

impl Records<'_> {
    fn flush(&mut self) -> Result<(), Gone> {
        if !self.buf.is_empty() && !(self.out)(self.buf.split().freeze()) {
            return Err(Gone);
        }
        Ok(())
    }

    fn room(&mut self, need: usize) -> Result<(), Gone> {
        if self.buf.len() + need > CHUNK {
            self.flush()?;
        }
        if self.buf.capacity() < CHUNK {
            self.buf.reserve(CHUNK);
        }
        Ok(())
    }

    fn record(&mut self, tag: u8, body: &[u8]) -> Result<(), Gone> {
        self.room(HEAD + body.len())?;
        self.buf.put_u8(tag);
        self.buf.put_u32_le(body.len() as u32);
        self.buf.put_slice(body);
        Ok(())
    }
}

/// Why a source stopped.
enum SourceError {
    Gone,
    File(FileError),
}

impl From<Gone> for SourceError {
    fn from(_: Gone) -> Self {
        SourceError::Gone
    }
}

impl From<FileError> for SourceError {
    fn from(e: FileError) -> Self {
        SourceError::File(e)
    }
}

/// Read the tree at `root` into records, handing each chunk to `out` (false: stop). Blocking.
fn read_tree(root: &Path, keep: Keep, out: &mut dyn FnMut(Bytes) -> bool) -> Result<Transfer, SourceError> {
    let meta = fs::metadata(root).map_err(|e| FileError::io(root, "stat", e))?;
    let name = root.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
    let mut records = Records { buf: BytesMut::with_capacity(CHUNK), out };
    let mut done = Transfer::default();
    send_entry(&mut records, root, Vec::new(), name, &meta, keep, &mut done)?;
    records.flush()?;
    Ok(done)
}

fn send_entry(
    records: &mut Records<'_>,
    path: &Path,
    rel: Vec<u8>,
    name: Vec<u8>,
    meta: &fs::Metadata,
    keep: Keep,
    done: &mut Transfer,
) -> Result<(), SourceError> {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        Kind::File { size: meta.len() }
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        let target = fs::read_link(path).map_err(|e| FileError::io(path, "readlink", e))?;
        Kind::Link { target: target.into_os_string().into_vec() }
    } else {
        tracing::warn!(path = %path.display(), "not a file, directory or link: left out");
        done.skipped += 1;
        return Ok(());
    };
    // A file is opened before its entry goes: one that cannot be read fails the transfer here.
    // Below the root a link is sent as a link: one swapped in since the stat is not followed.
    let file = match kind {
        Kind::File { .. } => {
            let flags = if rel.is_empty() { 0 } else { libc::O_NOFOLLOW };
            let file = fs::OpenOptions::new().read(true).custom_flags(flags).open(path);
            Some(file.map_err(|e| FileError::io(path, "open", e))?)
        }
        _ => None,
    };
    let entry = Entry {
        path: rel.clone(),
        name,
        kind,
        mode: meta.mode() & 0o7777,
        owner: keep.owner.then(|| (meta.uid(), meta.gid())),
        mtime: keep.times.then(|| (meta.mtime(), meta.mtime_nsec())),
    };
    let body = rmp_serde::to_vec(&entry).map_err(|e| FileError::refused(path, format!("encoding its entry: {e}")))?;
    if body.len() > MAX_ENTRY {
        return Err(FileError::refused(path, "its path or link target is too long to send").into());
    }
    records.record(ENTRY, &body)?;
    match entry.kind {
        Kind::File { size } => {
            let hash = send_data(records, path, file.expect("opened above"), size)?;
            records.record(DONE, &hash.to_le_bytes())?;
            done.files += 1;
            done.bytes += size;
        }
        Kind::Link { .. } => done.links += 1,
        Kind::Dir => {
            done.dirs += 1;
            let mut names: Vec<OsString> = fs::read_dir(path)
                .map_err(|e| FileError::io(path, "read the directory", e))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(|e| FileError::io(path, "read the directory", e))?;
            names.sort();
            for child in names {
                let child_path = path.join(&child);
                let meta = fs::symlink_metadata(&child_path).map_err(|e| FileError::io(&child_path, "stat", e))?;
                let mut child_rel = rel.clone();
                if !child_rel.is_empty() {
                    child_rel.push(b'/');
                }
                child_rel.extend_from_slice(child.as_bytes());
                send_entry(records, &child_path, child_rel, Vec::new(), &meta, keep, done)?;
            }
        }
    }
    Ok(())
}

/// A file's content as data records, read straight into the chunk being filled. Exactly `size`
/// bytes are sent: a file that changes length meanwhile fails the transfer.
fn send_data(records: &mut Records<'_>, path: &Path, mut file: File, size: u64) -> Result<u128, SourceError> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut left = size;
    while left > 0 {
        records.room(HEAD + 1)?;
        let room = CHUNK - records.buf.len() - HEAD;
        let want = left.min(room as u64) as usize;
        let start = records.buf.len();
        records.buf.put_u8(DATA);
        records.buf.put_u32_le(want as u32);
        records.buf.resize(start + HEAD + want, 0);
        let mut filled = 0;
        while filled < want {
            let got = match file.read(&mut records.buf[start + HEAD + filled..]) {
                Ok(0) => return Err(FileError::refused(path, "it shrank while it was read").into()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FileError::io(path, "read", e).into()),
            };
            filled += got;
        }
        hasher.update(&records.buf[start + HEAD..]);
        left -= want as u64;
    }
    Ok(hasher.digest128())
}

// ---- the sink ------------------------------------------------------------------------------

/// Splits chunks back into records; file data comes in pieces as it arrives, uncopied.
struct Parser {
    cur: Bytes,
    /// A record head or entry that spans chunks.
    carry: BytesMut,
    /// Data bytes of the current record still to come.
    data_left: usize,
}

enum Record {
    Entry(Entry),
    Data(Bytes),
    Done(u128),
}

impl Parser {
    /// The next record (or piece of data), pulling chunks from `pull`; `None` at the end.
    fn next(&mut self, pull: &mut dyn FnMut() -> Option<Bytes>, at: &Path) -> Result<Option<Record>, FileError> {
        loop {
            if self.data_left == 0 {
                if let Some(record) = self.record(at)? {
                    return Ok(Some(record));
                }
            }
            // Inside a data record (maybe one whose head was just read): its bytes, as they came.
            if self.data_left > 0 && !self.cur.is_empty() {
                let n = self.data_left.min(self.cur.len());
                self.data_left -= n;
                return Ok(Some(Record::Data(self.cur.split_to(n))));
            }
            match pull() {
                Some(chunk) => self.cur = chunk,
                None if self.data_left == 0 && self.carry.is_empty() && self.cur.is_empty() => return Ok(None),
                None => return Err(FileError::refused(at, "the stream ended inside a record")),
            }
        }
    }

    /// A whole record head (and, but for data, its body), if what has arrived holds one.
    fn record(&mut self, at: &Path) -> Result<Option<Record>, FileError> {
        // Gather a head, then a body, into `carry` only when they span chunks.
        let need_head = HEAD.saturating_sub(self.carry.len());
        if !self.carry.is_empty() || self.cur.len() < HEAD {
            let take = need_head.min(self.cur.len());
            if self.carry.len() < HEAD {
                self.carry.extend_from_slice(&self.cur.split_to(take));
                if self.carry.len() < HEAD {
                    return Ok(None);
                }
            }
        }
        let head: &[u8] = if self.carry.is_empty() { &self.cur[..HEAD] } else { &self.carry[..HEAD] };
        let (tag, len) = (head[0], u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize);
        let max = match tag {
            ENTRY => MAX_ENTRY,
            DATA => CHUNK,
            DONE => 16,
            other => return Err(FileError::refused(at, format!("a record of unknown kind {other}"))),
        };
        if len > max || tag == DONE && len != 16 {
            return Err(FileError::refused(at, format!("a record of {len} bytes, above the {max} its kind allows")));
        }
        if tag == DATA {
            if self.carry.is_empty() {
                self.cur.advance(HEAD);
            } else {
                self.carry.clear();
            }
            self.data_left = len;
            if len == 0 {
                return Ok(Some(Record::Data(Bytes::new())));
            }
            return Ok(None); // the data comes in pieces, from `next`
        }
        let body = if self.carry.is_empty() && self.cur.len() >= HEAD + len {
            let body = self.cur.slice(HEAD..HEAD + len);
            self.cur.advance(HEAD + len);
            body
        } else {
            if self.carry.is_empty() {
                self.carry.extend_from_slice(&self.cur.split_to(HEAD));
            }
            let want = HEAD + len - self.carry.len();
            let take = want.min(self.cur.len());
            self.carry.extend_from_slice(&self.cur.split_to(take));
            if self.carry.len() < HEAD + len {
                return Ok(None);
            }
            self.carry.split().freeze().slice(HEAD..)
        };
        Ok(Some(match tag {
            ENTRY => Record::Entry(
                rmp_serde::from_slice(&body)
                    .map_err(|e| FileError::refused(at, format!("an entry that does not decode: {e}")))?,
            ),
            _ => Record::Done(u128::from_le_bytes(body[..16].try_into().expect("16 bytes, checked"))),
        }))
    }
}

/// The file being written: removed unless it was renamed into place.
struct Partial {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    size: u64,
    written: u64,
    /// Bytes skipped as zeros after the last write.
    hole: u64,
    hasher: xxhash_rust::xxh3::Xxh3,
    entry: Entry,
}

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.temp);
    }
}

static TEMP: AtomicU64 = AtomicU64::new(0);

/// A directory whose mode or times are set once its content is written.
struct Later {
    path: PathBuf,
    mode: u32,
    mtime: Option<(i64, i64)>,
}

struct Sink {
    dst: PathBuf,
    keep: Keep,
    /// Where the root goes, once its entry said what it is.
    root: Option<PathBuf>,
    done: Transfer,
    later: Vec<Later>,
}

/// Write the records `pull` yields under `dst`. Blocking.
fn write_tree(dst: &Path, keep: Keep, pull: &mut dyn FnMut() -> Option<Bytes>) -> Result<Transfer, FileError> {
    let mut parser = Parser { cur: Bytes::new(), carry: BytesMut::new(), data_left: 0 };
    let mut sink = Sink { dst: dst.to_owned(), keep, root: None, done: Transfer::default(), later: Vec::new() };
    let mut open: Option<Partial> = None;
    loop {
        let at = open.as_ref().map_or(dst, |p| p.target.as_path()).to_owned();
        let Some(record) = parser.next(pull, &at)? else { break };
        match record {
            Record::Entry(entry) => {
                if let Some(p) = &open {
                    return Err(FileError::refused(&p.target, "a new entry before the end of this file"));
                }
                open = sink.entry(entry)?;
            }
            Record::Data(data) => {
                let Some(p) = open.as_mut() else {
                    return Err(FileError::refused(dst, "file data outside any file"));
                };
                p.write(&data)?;
            }
            Record::Done(hash) => {
                let Some(p) = open.take() else {
                    return Err(FileError::refused(dst, "a file's end outside any file"));
                };
                sink.finish(p, hash)?;
            }
        }
    }
    if let Some(p) = open {
        return Err(FileError::refused(&p.target, "the stream ended inside this file"));
    }
    if sink.root.is_none() {
        return Err(FileError::refused(dst, "the stream ended before anything was sent"));
    }
    for d in sink.later.drain(..).rev() {
        set_mode(&d.path, d.mode)?;
        if let Some(t) = d.mtime {
            set_times(&d.path, t)?;
        }
    }
    Ok(sink.done)
}

impl Sink {
    /// Where `rel` goes: inside the root, every component a plain name.
    fn target(&mut self, entry: &Entry) -> Result<PathBuf, FileError> {
        let Some(root) = &self.root else {
            // The root's own entry: into an existing directory under its name, or as `dst`.
            if !entry.path.is_empty() {
                return Err(FileError::refused(&self.dst, "the first entry is not the root"));
            }
            let into_dir = fs::metadata(&self.dst).map(|m| m.is_dir()).unwrap_or(false);
            let root = if into_dir {
                let name = Path::new(OsStr::from_bytes(&entry.name));
                if !plain_name(name) {
                    return Err(FileError::refused(&self.dst, format!("a root named {name:?}")));
                }
                self.dst.join(name)
            } else {
                self.dst.clone()
            };
            self.root = Some(root.clone());
            return Ok(root);
        };
        let rel = Path::new(OsStr::from_bytes(&entry.path));
        if entry.path.is_empty()
            || rel.components().any(|c| !matches!(c, Component::Normal(_)))
            || entry.path.contains(&0)
        {
            return Err(FileError::refused(root, format!("an entry at {rel:?}, outside the tree")));
        }
        // Nothing is written through a link: every directory on the way is a real one.
        let mut dir = root.clone();
        let parents: Vec<_> = rel.parent().map(|p| p.components().collect()).unwrap_or_default();
        for c in parents {
            dir.push(c);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(FileError::refused(&dir, "not a directory (a link, or a file) on the way")),
                Err(e) => return Err(FileError::io(&dir, "stat", e)),
            }
        }
        Ok(root.join(rel))
    }

    fn entry(&mut self, entry: Entry) -> Result<Option<Partial>, FileError> {
        let target = self.target(&entry)?;
        match &entry.kind {
            Kind::Dir => {
                match fs::create_dir(&target) {
                    Ok(()) => {
                        // One it made: owner now, mode and times once its content is in (a
                        // read-only directory takes no files).
                        self.set_owner(&target, &entry, false)?;
                        self.later.push(Later { path: target, mode: self.mode(&entry), mtime: entry.mtime });
                    }
                    // One that was there keeps its mode, as with `cp -r`.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && is_real_dir(&target) => {}
                    Err(e) => return Err(FileError::io(&target, "mkdir", e)),
                }
                self.done.dirs += 1;
                Ok(None)
            }
            Kind::Link { target: to } => {
                let temp = temp_name(&target);
                std::os::unix::fs::symlink(OsStr::from_bytes(to), &temp)
                    .map_err(|e| FileError::io(&target, "symlink", e))?;
                let placed = self
                    .set_owner(&temp, &entry, false)
                    .and_then(|()| fs::rename(&temp, &target).map_err(|e| FileError::io(&target, "rename", e)));
                if placed.is_err() {
                    let _ = fs::remove_file(&temp);
                }
                placed?;
                self.done.links += 1;
                Ok(None)
            }
            &Kind::File { size } => {
                let temp = temp_name(&target);
                let file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&temp)
                    .map_err(|e| FileError::io(&target, "create", e))?;
                let hasher = xxhash_rust::xxh3::Xxh3::new();
                Ok(Some(Partial { file, temp, target, size, written: 0, hole: 0, hasher, entry }))
            }
        }
    }

    fn finish(&mut self, mut p: Partial, hash: u128) -> Result<(), FileError> {
        if p.written != p.size {
            return Err(FileError::refused(&p.target, format!("{} bytes arrived of {}", p.written, p.size)));
        }
        if p.hole > 0 {
            p.file.set_len(p.size).map_err(|e| FileError::io(&p.target, "write", e))?;
        }
        if p.hasher.digest128() != hash {
            return Err(FileError::refused(&p.target, "its checksum differs from the source's: not written"));
        }
        p.file
            .set_permissions(fs::Permissions::from_mode(self.mode(&p.entry)))
            .map_err(|e| FileError::io(&p.target, "chmod", e))?;
        self.set_owner(&p.temp, &p.entry, true)?;
        if let Some(t) = p.entry.mtime {
            set_times(&p.temp, t)?;
        }
        fs::rename(&p.temp, &p.target).map_err(|e| FileError::io(&p.target, "rename", e))?;
        self.done.files += 1;
        self.done.bytes += p.size;
        // Renamed: nothing to remove.
        p.temp = PathBuf::new();
        Ok(())
    }

    fn mode(&self, entry: &Entry) -> u32 {
        // Set-id bits only with the owner they were set for.
        if self.keep.owner {
            entry.mode & 0o7777
        } else {
            entry.mode & 0o1777
        }
    }

    fn set_owner(&self, path: &Path, entry: &Entry, follow: bool) -> Result<(), FileError> {
        let (Some((uid, gid)), true) = (entry.owner, self.keep.owner) else { return Ok(()) };
        let res = if follow {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
        } else {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        };
        res.map_err(|e| FileError::io(path, "chown", e))
    }
}

impl Partial {
    fn write(&mut self, data: &[u8]) -> Result<(), FileError> {
        if self.written + data.len() as u64 > self.size {
            return Err(FileError::refused(&self.target, format!("more data than its {} bytes", self.size)));
        }
        self.hasher.update(data);
        self.written += data.len() as u64;
        let zero_page = |b: &[u8]| b.len() == PAGE && is_zero(b);
        let mut rest = data;
        while !rest.is_empty() {
            if zero_page(&rest[..rest.len().min(PAGE)]) {
                self.hole += PAGE as u64;
                rest = &rest[PAGE..];
                continue;
            }
            // The run of pages up to the next zero page is written at once.
            let mut end = rest.len().min(PAGE);
            while end < rest.len() && !zero_page(&rest[end..rest.len().min(end + PAGE)]) {
                end = rest.len().min(end + PAGE);
            }
            if self.hole > 0 {
                let hole = i64::try_from(self.hole).unwrap_or(i64::MAX);
                self.file.seek(SeekFrom::Current(hole)).map_err(|e| FileError::io(&self.target, "seek", e))?;
                self.hole = 0;
            }
            self.file.write_all(&rest[..end]).map_err(|e| FileError::io(&self.target, "write", e))?;
            rest = &rest[end..];
        }
        Ok(())
    }
}

fn is_zero(page: &[u8]) -> bool {
    page[0] == 0 && page[page.len() - 1] == 0 && page.iter().all(|&b| b == 0)
}

fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).map(|m| m.is_dir()).unwrap_or(false)
}

fn plain_name(name: &Path) -> bool {
    let mut c = name.components();
    matches!((c.next(), c.next()), (Some(Component::Normal(_)), None))
}

fn temp_name(target: &Path) -> PathBuf {
    let name = target.file_name().unwrap_or_else(|| OsStr::new("file"));
    let n = TEMP.fetch_add(1, Ordering::Relaxed);
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(format!(".hypha-{}-{n}", std::process::id()));
    target.with_file_name(temp)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), FileError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| FileError::io(path, "chmod", e))
}

fn set_times(path: &Path, (sec, nsec): (i64, i64)) -> Result<(), FileError> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| FileError::refused(path, e.to_string()))?;
    let t = libc::timespec { tv_sec: sec as _, tv_nsec: nsec as _ };
    let times = [t, t];
    // SAFETY: `c` is a NUL-terminated path and `times` two valid timespecs, both alive for the call.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        return Err(FileError::io(path, "set times", std::io::Error::last_os_error()));
    }
    Ok(())
}

// ---- ends on streams -----------------------------------------------------------------------

/// Run the source of the tree at `path` on a blocking thread and send its records over `tx`.
pub async fn send_tree(path: PathBuf, keep: Keep, tx: &mut ByteSender) -> Result<Transfer, FileError> {
    let (chunks, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    let reader =
        tokio::task::spawn_blocking(move || read_tree(&path, keep, &mut |chunk| chunks.blocking_send(chunk).is_ok()));
    let mut sent = Ok(());
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = tx.send(chunk).await {
            sent = Err(e);
            break;
        }
    }
    drop(rx); // a reader still going stops at its next chunk
    let read =
        reader.await.map_err(|e| FileError::refused(Path::new(""), format!("the reading thread failed: {e}")))?;
    match (read, sent) {
        (Ok(done), Ok(())) => Ok(done),
        (Err(SourceError::File(e)), _) => Err(e),
        (_, Err(e)) => Err(stream_error(e)),
        (Err(SourceError::Gone), Ok(())) => Err(FileError::refused(Path::new(""), "the stream went away")),
    }
}

/// Receive records from `rx` and write them under `path`, on a blocking thread. Also says whether
/// the stream reached its end (so its answer can be taken).
pub async fn receive_tree(path: PathBuf, keep: Keep, rx: &mut ByteReceiver) -> (Result<Transfer, FileError>, bool) {
    let (chunks, mut queue) = mpsc::channel::<Bytes>(QUEUE);
    let writer = tokio::task::spawn_blocking(move || write_tree(&path, keep, &mut || queue.blocking_recv()));
    let (mut received, mut ended) = (Ok(()), false);
    loop {
        match rx.recv().await {
            Ok(Some(chunk)) => {
                if chunks.send(chunk).await.is_err() {
                    break; // the writer stopped: it says why
                }
            }
            Ok(None) => {
                ended = true;
                break;
            }
            Err(e) => {
                received = Err(e);
                break;
            }
        }
    }
    // The writer takes the end of its queue for the end of the stream: a stream cut short fails
    // it where a file or a record is left unfinished, and the stream's error says why.
    drop(chunks);
    let written = match writer.await {
        Ok(written) => written,
        Err(e) => Err(FileError::refused(Path::new(""), format!("the writing thread failed: {e}"))),
    };
    let result = match (written, received) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(stream_error(e)),
        (Ok(done), Ok(())) => Ok(done),
    };
    (result, ended)
}

fn stream_error(e: StreamError) -> FileError {
    FileError::Call(e.into_call_error(0, WriteTree::NAME))
}

/// The `hypha.files.read` handler.
pub(crate) async fn serve_read(req: ReadTree, _: Cx, mut tx: ByteSender) -> Result<Transfer, HandlerError> {
    Ok(send_tree(req.path, req.keep, &mut tx).await?)
}

/// The `hypha.files.write` handler.
pub(crate) async fn serve_write(req: WriteTree, _: Cx, mut rx: ByteReceiver) -> Result<Transfer, HandlerError> {
    Ok(receive_tree(req.path, req.keep, &mut rx).await.0?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A scratch directory, removed at the end.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("hypha-files-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn entry(path: &str, kind: Kind) -> Vec<u8> {
        let e = Entry { path: path.into(), name: b"root".to_vec(), kind, mode: 0o644, owner: None, mtime: None };
        record(ENTRY, &rmp_serde::to_vec(&e).unwrap())
    }

    fn record(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![tag];
        r.extend_from_slice(&(body.len() as u32).to_le_bytes());
        r.extend_from_slice(body);
        r
    }

    fn file(path: &str, data: &[u8]) -> Vec<u8> {
        let mut r = entry(path, Kind::File { size: data.len() as u64 });
        r.extend(record(DATA, data));
        r.extend(record(DONE, &xxhash_rust::xxh3::xxh3_128(data).to_le_bytes()));
        r
    }

    /// Feed `stream` to a sink at `dst`, cut into chunks of `chunk` bytes.
    fn sink(dst: &Path, stream: &[u8], chunk: usize) -> Result<Transfer, FileError> {
        let mut chunks = stream.chunks(chunk.max(1)).map(Bytes::copy_from_slice).collect::<Vec<_>>().into_iter();
        write_tree(dst, Keep::default(), &mut || chunks.next())
    }

    /// Every file under `dir`, as (relative path, content); temporary names included.
    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            out.push(e.file_name().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                for inner in listing(&e.path()) {
                    out.push(format!("{}/{inner}", e.file_name().to_string_lossy()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_tree_arrives_whatever_the_chunking() {
        let mut stream = entry("", Kind::Dir);
        stream.extend(entry("d", Kind::Dir));
        stream.extend(file("d/a", b"alpha"));
        stream.extend(file("b", &vec![0u8; 3 * PAGE + 1]));
        stream.extend(entry("l", Kind::Link { target: b"d/a".to_vec() }));
        for chunk in [1, 3, 7, 64, 1 << 20] {
            let s = Scratch::new(&format!("chunks{chunk}"));
            let dst = s.0.join("out");
            let done = sink(&dst, &stream, chunk).unwrap();
            assert_eq!((done.files, done.dirs, done.links), (2, 2, 1));
            assert_eq!(fs::read(dst.join("d/a")).unwrap(), b"alpha");
            assert_eq!(fs::read(dst.join("b")).unwrap(), vec![0u8; 3 * PAGE + 1]);
            assert_eq!(fs::read_link(dst.join("l")).unwrap(), Path::new("d/a"));
            assert_eq!(listing(&dst), ["b", "d", "d/a", "l"]);
        }
    }

    #[test]
    fn a_source_reads_what_a_sink_writes() {
        let s = Scratch::new("round");
        let src = s.0.join("src");
        fs::create_dir_all(src.join("sub/deeper")).unwrap();
        fs::write(src.join("sub/deeper/f"), b"deep").unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(src.join("big"), &big).unwrap();
        fs::write(src.join("empty"), b"").unwrap();
        fs::set_permissions(src.join("big"), fs::Permissions::from_mode(0o751)).unwrap();
        fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o555)).unwrap();
        let mut stream = Vec::new();
        let sent = read_tree(&src, Keep::default(), &mut |c| {
            assert!(c.len() <= CHUNK);
            stream.extend_from_slice(&c);
            true
        });
        let sent = sent.ok().unwrap();
        let dst = s.0.join("dst");
        let got = sink(&dst, &stream, 100_000).unwrap();
        assert_eq!(sent, got);
        assert_eq!(fs::read(dst.join("big")).unwrap(), big);
        assert_eq!(fs::metadata(dst.join("big")).unwrap().mode() & 0o7777, 0o751);
        assert_eq!(fs::metadata(dst.join("sub")).unwrap().mode() & 0o7777, 0o555);
        assert_eq!(fs::read(dst.join("sub/deeper/f")).unwrap(), b"deep");
        fs::set_permissions(dst.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn paths_outside_the_tree_and_writes_through_links_are_refused() {
        let s = Scratch::new("escape");
        let outside = s.0.join("outside");
        fs::create_dir(&outside).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            ([entry("", Kind::Dir), file("../escaped", b"x")].concat(), "outside the tree"),
            ([entry("", Kind::Dir), file("/etc/escaped", b"x")].concat(), "outside the tree"),
            ([entry("", Kind::Dir), file("a/../../escaped", b"x")].concat(), "outside the tree"),
            (
                [
                    entry("", Kind::Dir),
                    entry("l", Kind::Link { target: outside.as_os_str().as_bytes().to_vec() }),
                    file("l/escaped", b"x"),
                ]
                .concat(),
                "on the way",
            ),
            (file("not-root", b"x"), "not the root"),
        ];
        for (stream, why) in cases {
            let dst = s.0.join("dst");
            let err = sink(&dst, &stream, 1 << 20).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
            assert!(listing(&outside).is_empty(), "{:?}", listing(&outside));
            assert!(!s.0.join("escaped").exists());
            let _ = fs::remove_dir_all(&dst);
        }
    }

    #[test]
    fn bad_data_leaves_no_file_not_even_a_temporary_one() {
        let s = Scratch::new("bad");
        let good = file("", b"hello");
        let mut wrong_hash = entry("", Kind::File { size: 5 });
        wrong_hash.extend(record(DATA, b"hello"));
        wrong_hash.extend(record(DONE, &[0u8; 16]));
        let mut too_much = entry("", Kind::File { size: 2 });
        too_much.extend(record(DATA, b"hello"));
        let huge_entry = record(ENTRY, &vec![0u8; MAX_ENTRY + 1]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (wrong_hash, "checksum differs"),
            (too_much, "more data than its 2 bytes"),
            (good[..good.len() - 3].to_vec(), "ended inside"),
            (good[..good.len() - 21].to_vec(), "ended inside"),
            (huge_entry, "above the"),
            (record(9, b""), "unknown kind 9"),
            (Vec::new(), "before anything was sent"),
        ];
        for (stream, why) in cases {
            let dst = s.0.join("file");
            let err = sink(&dst, &stream, 2).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
            assert!(listing(&s.0).is_empty(), "{why}: {:?}", listing(&s.0));
        }
        sink(&s.0.join("file"), &good, 2).unwrap();
        assert_eq!(listing(&s.0), ["file"]);
    }

    #[test]
    fn zero_pages_become_holes_and_read_back_as_zeros() {
        let s = Scratch::new("sparse");
        let mut data = vec![0u8; 64 * PAGE];
        data[10 * PAGE] = 1;
        data[64 * PAGE - 1] = 0;
        sink(&s.0.join("sparse"), &file("", &data), 1 << 20).unwrap();
        let meta = fs::metadata(s.0.join("sparse")).unwrap();
        assert_eq!(fs::read(s.0.join("sparse")).unwrap(), data);
        assert!(meta.blocks() * 512 < data.len() as u64, "{} blocks", meta.blocks());
    }
}

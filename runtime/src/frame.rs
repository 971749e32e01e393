//! Frames: the unit of everything that crosses a stream.
//!
//! ```text
//! u32 len | u32 dst | u32 src | u32 handle | u32 reply_to | u32 flags | body (len - 20 bytes)
//! ```
//! All integers are little-endian. `len` counts the header fields after it plus the body. The body is
//! msgpack (calls, replies, control) or raw bytes (stream data, [`flags::DATA`]).
//!
//! [`encode`] and [`decode`] are pure functions over byte buffers: they do no I/O, so the code that
//! pumps streams stays small and these rules are tested on their own. [`decode`] checks the length
//! prefix against the configured maximum *before* it reserves room for the frame, so a hostile or
//! garbled length never makes us allocate.
//!
//! No header field carries authority: a receiver judges a frame by the link it arrived on and its
//! (reverse-path checked) source, never by anything the sender wrote (see `Router`).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::ContextId;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Bytes of the header that follows the length prefix.
pub const HEADER_LEN: usize = 20;
/// Default largest frame (header + body) a stream accepts: 16 MiB. Bulk data travels as chunks far
/// smaller than this (see [`crate::stream::CHUNK`]).
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// Well-known handles. Handles below [`handles::FIRST_DYNAMIC`] mean the same in every context;
/// the rest are allocated per context for replies.
pub mod handles {
    /// Typed call requests.
    pub const CALL: u32 = 1;
    /// Control messages ([`crate::proto::Control`]).
    pub const CONTROL: u32 = 2;
    /// Stream frames addressed by the caller's reply handle: upload data into a callee, credit into
    /// a download producer.
    pub const STREAM: u32 = 3;
    /// The agent's Hello, the first frame after the sync marker.
    pub const HELLO: u32 = 4;
    /// The parent's Init, answering Hello.
    pub const INIT: u32 = 5;
    /// A heartbeat: sent on a link that has been idle, so its peer knows it is alive.
    pub const HEARTBEAT: u32 = 6;
    /// First handle allocated for replies.
    pub const FIRST_DYNAMIC: u32 = 1024;
}

/// Header flag bits. A frame with a bit outside [`flags::KNOWN`] is refused as garbled.
pub mod flags {
    /// A reply to a call (to the caller's reply handle).
    pub const REPLY: u32 = 1 << 0;
    /// The body is a [`crate::RemoteError`] instead of the expected value.
    pub const ERROR: u32 = 1 << 1;
    /// Raw stream data; the body is not msgpack.
    pub const DATA: u32 = 1 << 2;
    /// The sender has finished its stream.
    pub const END: u32 = 1 << 3;
    /// Flow-control credit: the body is a msgpack `u64` of bytes the receiver may send.
    pub const CREDIT: u32 = 1 << 4;
    /// The stream was abandoned; the body is a msgpack reason string. With [`CREDIT`] too, only
    /// the sender's receiving end went away (the other way of a duplex call goes on).
    pub const ABORT: u32 = 1 << 5;
    /// A call whose caller streams bytes to the handler.
    pub const UPLOAD: u32 = 1 << 6;
    /// A call whose handler streams bytes back to the caller.
    pub const DOWNLOAD: u32 = 1 << 7;
    /// Fire-and-forget: nobody waits for a reply.
    pub const NO_REPLY: u32 = 1 << 8;
    /// Every bit defined above.
    pub const KNOWN: u32 = (1 << 9) - 1;
}

/// The fixed part of a frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Context the frame is for.
    pub dst: ContextId,
    /// Context that wrote the frame (checked on arrival: it must be behind the link the frame
    /// came on).
    pub src: ContextId,
    /// Handle in `dst` that receives the frame.
    pub handle: u32,
    /// Handle in `src` that receives answers, or 0.
    pub reply_to: u32,
    /// [`flags`] bits.
    pub flags: u32,
}

/// A whole frame: header and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Addressing and flags.
    pub header: Header,
    /// msgpack or raw bytes, per [`flags::DATA`].
    pub body: Bytes,
}

impl Frame {
    /// Bytes this frame takes on the wire.
    pub fn wire_len(&self) -> usize {
        LEN_PREFIX + HEADER_LEN + self.body.len()
    }
}

/// Why bytes could not be read as a frame. The stream they came from cannot be trusted after this
/// and is closed.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced length (header + body).
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The length prefix is shorter than the header it must contain.
    #[error("frame length {len} is shorter than the {HEADER_LEN}-byte header (garbled stream?)")]
    Short {
        /// Announced length.
        len: usize,
    },
    /// The header carries flag bits this version does not know.
    #[error("frame has unknown flag bits {flags:#x} (garbled stream or protocol mismatch)")]
    UnknownFlags {
        /// The flags field as read.
        flags: u32,
    },
}

/// Append `frame` to `out`, refusing frames larger than `max` so a peer never has to.
pub fn encode(header: &Header, body: &[u8], max: usize, out: &mut BytesMut) -> Result<(), FrameError> {
    let len = HEADER_LEN + body.len();
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    out.reserve(LEN_PREFIX + len);
    put_header(header, len, out);
    out.put_slice(body);
    Ok(())
}

/// Append only the length prefix and header for a frame with a body of `body_len` bytes; the caller
/// writes the body itself (used to send large bodies without copying them).
pub fn encode_header(header: &Header, body_len: usize, max: usize, out: &mut BytesMut) -> Result<(), FrameError> {
    let len = HEADER_LEN + body_len;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    out.reserve(LEN_PREFIX + HEADER_LEN);
    put_header(header, len, out);
    Ok(())
}

fn put_header(h: &Header, len: usize, out: &mut BytesMut) {
    // `len` <= max, and max is a usize we accept only up to u32::MAX (see `check_max`).
    out.put_u32_le(len as u32);
    out.put_u32_le(h.dst);
    out.put_u32_le(h.src);
    out.put_u32_le(h.handle);
    out.put_u32_le(h.reply_to);
    out.put_u32_le(h.flags);
}

/// Read the header at the start of `buf` without consuming anything.
///
/// Returns `Ok(None)` while `buf` holds less than a whole frame, `Ok(Some((header, total)))` when
/// the first `total` bytes are one complete frame.
pub fn peek(buf: &[u8], max: usize) -> Result<Option<(Header, usize)>, FrameError> {
    if buf.len() < LEN_PREFIX {
        return Ok(None);
    }
    let mut b = buf;
    let len = b.get_u32_le() as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if len < HEADER_LEN {
        return Err(FrameError::Short { len });
    }
    if buf.len() < LEN_PREFIX + HEADER_LEN {
        return Ok(None);
    }
    let header = Header {
        dst: b.get_u32_le(),
        src: b.get_u32_le(),
        handle: b.get_u32_le(),
        reply_to: b.get_u32_le(),
        flags: b.get_u32_le(),
    };
    if header.flags & !flags::KNOWN != 0 {
        return Err(FrameError::UnknownFlags { flags: header.flags });
    }
    let total = LEN_PREFIX + len;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((header, total)))
}

/// Take one frame off the front of `buf`.
///
/// `Ok(None)` means "need more bytes": nothing is consumed, and room for the rest of the frame is
/// reserved (only after its length passed the `max` check). The body shares `buf`'s allocation.
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    match peek(buf, max)? {
        Some((header, total)) => {
            let mut whole = buf.split_to(total);
            whole.advance(LEN_PREFIX + HEADER_LEN);
            Ok(Some(Frame { header, body: whole.freeze() }))
        }
        None => {
            if buf.len() >= LEN_PREFIX {
                let len = (&buf[..LEN_PREFIX]).get_u32_le() as usize;
                buf.reserve(LEN_PREFIX + len - buf.len());
            }
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header { dst: 7, src: 0, handle: handles::CALL, reply_to: 1025, flags: flags::UPLOAD }
    }

    fn encoded(body: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        encode(&header(), body, DEFAULT_MAX_FRAME, &mut out).expect("encode");
        out
    }

    #[test]
    fn round_trip() {
        let mut buf = encoded(b"hello");
        assert_eq!(buf.len(), LEN_PREFIX + HEADER_LEN + 5);
        let frame = decode(&mut buf, DEFAULT_MAX_FRAME).expect("valid").expect("complete");
        assert_eq!(frame.header, header());
        assert_eq!(&frame.body[..], b"hello");
        assert!(buf.is_empty());
    }

    #[test]
    fn two_frames_back_to_back() {
        let mut buf = encoded(b"one");
        buf.extend_from_slice(&encoded(b"two"));
        let a = decode(&mut buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
        let b = decode(&mut buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!((&a.body[..], &b.body[..]), (&b"one"[..], &b"two"[..]));
        assert_eq!(decode(&mut buf, DEFAULT_MAX_FRAME), Ok(None));
    }

    #[test]
    fn truncated_input_needs_more_and_consumes_nothing() {
        let whole = encoded(b"0123456789");
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(decode(&mut buf, DEFAULT_MAX_FRAME), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at cut {cut}");
        }
    }

    #[test]
    fn oversized_is_refused_before_allocating() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(u32::MAX);
        let before = buf.capacity();
        assert_eq!(decode(&mut buf, 1 << 20), Err(FrameError::TooLarge { len: u32::MAX as usize, max: 1 << 20 }));
        assert_eq!(buf.capacity(), before, "no room reserved for a refused frame");
        assert_eq!(buf.len(), 4, "nothing consumed");
    }

    #[test]
    fn encode_refuses_what_the_peer_would_refuse() {
        let mut out = BytesMut::new();
        let err = encode(&header(), &[0; 100], 64, &mut out).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { len: HEADER_LEN + 100, max: 64 });
        assert!(out.is_empty());
    }

    #[test]
    fn short_length_and_unknown_flags_are_garbage() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(3);
        assert_eq!(decode(&mut buf, DEFAULT_MAX_FRAME), Err(FrameError::Short { len: 3 }));

        let mut h = header();
        h.flags = 1 << 31;
        let mut buf = BytesMut::new();
        encode(&h, b"", DEFAULT_MAX_FRAME, &mut buf).unwrap();
        assert_eq!(decode(&mut buf, DEFAULT_MAX_FRAME), Err(FrameError::UnknownFlags { flags: 1 << 31 }));
    }

    #[test]
    fn text_is_not_a_frame() {
        // What a login shell might print: the length prefix reads as ~1.7 GB.
        let mut buf = BytesMut::from(&b"Welcome to Debian GNU/Linux!\n"[..]);
        assert!(matches!(decode(&mut buf, DEFAULT_MAX_FRAME), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn random_garbage_never_panics() {
        // A small xorshift generator: deterministic, no dependency.
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let n = (s % 96) as usize;
            let mut bytes = Vec::with_capacity(n);
            for _ in 0..n {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                bytes.push(s as u8);
            }
            let mut buf = BytesMut::from(&bytes[..]);
            // Keep decoding until an error or "need more"; any outcome but a panic is fine.
            while let Ok(Some(_)) = decode(&mut buf, 4096) {}
        }
    }
}

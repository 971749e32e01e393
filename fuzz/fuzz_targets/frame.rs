//! The frame decoder over arbitrary bytes, arriving in arbitrary pieces, with a small maximum.
//!
//! Input: two bytes of maximum frame length, one byte of piece size (0: everything at once), then
//! the stream. Checked for every step:
//! - `peek` and `decode` agree (same header and length, or the same error, or both need more);
//! - a decoded frame is at most `max`, and re-encodes to exactly the bytes it was taken from;
//! - "need more" (`Ok(None)`) consumes nothing;
//! - the buffer never grows beyond what the bytes seen and one largest frame explain (a length
//!   prefix past the maximum must be refused before anything is reserved for it).

#![no_main]

use bytes::BytesMut;
use hypha_runtime::frame::{self, HEADER_LEN, LEN_PREFIX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [m0, m1, piece, stream @ ..] = data else {
        return;
    };
    // Below the header length too: every frame is then refused.
    let max = usize::from(u16::from_le_bytes([*m0, *m1])) % 2048;
    let piece = match *piece {
        0 => stream.len().max(1),
        n => usize::from(n),
    };

    let mut buf = BytesMut::new();
    let mut seen = 0;
    for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        seen += chunk.len();
        if !drain(&mut buf, max, seen) {
            return;
        }
    }
});

/// Decode every whole frame in `buf`. False once the stream is garbled (a reader closes it then).
fn drain(buf: &mut BytesMut, max: usize, seen: usize) -> bool {
    loop {
        let before = buf.clone();
        let capacity = buf.capacity();
        let peeked = frame::peek(&before, max);
        let decoded = frame::decode(buf, max);
        match (peeked, decoded) {
            (Ok(Some((header, total))), Ok(Some(f))) => {
                assert_eq!(f.header, header, "peek and decode read different headers");
                assert_eq!(f.wire_len(), total, "peek and decode disagree on the length");
                assert!(HEADER_LEN + f.body.len() <= max, "a frame over the maximum was accepted");
                assert_eq!(buf.len(), before.len() - total, "decode consumed more or less than the frame");
                let mut again = BytesMut::new();
                frame::encode(&f.header, &f.body, max, &mut again).expect("a decoded frame re-encodes");
                assert_eq!(&again[..], &before[..total], "re-encoding gives other bytes");
            }
            (Ok(None), Ok(None)) => {
                assert_eq!(&buf[..], &before[..], "need-more consumed or changed bytes");
                check_room(buf, capacity, max, seen);
                return true;
            }
            (Err(p), Err(d)) => {
                assert_eq!(p, d, "peek and decode refuse for different reasons");
                assert_eq!(&buf[..], &before[..], "a refused frame consumed bytes");
                assert_eq!(buf.capacity(), capacity, "room was reserved for a refused frame");
                return false;
            }
            (p, d) => panic!("peek says {p:?}, decode says {d:?}"),
        }
    }
}

/// Room reserved while waiting for the rest of a frame is explained by the bytes already seen and
/// one frame of at most `max`, allowing generously for `BytesMut`'s doubling: what this catches is
/// room taken for an announced length that was never checked (up to 4 GiB).
fn check_room(buf: &BytesMut, capacity_before: usize, max: usize, seen: usize) {
    if buf.capacity() > capacity_before {
        let explained = 4 * (seen + LEN_PREFIX + max) + 64;
        assert!(
            buf.capacity() <= explained,
            "reserved {} bytes with {} buffered, {seen} seen and a maximum of {max}",
            buf.capacity(),
            buf.len()
        );
    }
    if buf.len() >= LEN_PREFIX {
        let announced = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        assert!(announced <= max, "need-more for a frame longer than the maximum");
    }
}

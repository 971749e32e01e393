//! Both sides of the handshake, fed what a broken or hostile far side might send.
//!
//! Input: a selector byte (which side, whether the far side closes after its bytes or stays open,
//! how many bytes count as already read), then the far side's bytes.
//! - Parent side: arbitrary agent output (noise, the marker, a Hello frame or garbage). It must
//!   accept only a Hello of this protocol and binary, answer it with exactly one Init frame, and
//!   never hang: a far side that closed is an error, never a timeout.
//! - Agent side: an arbitrary Init from the parent. It must say only its own marker and Hello, and
//!   an Init it accepts becomes a router the way an agent builds one, which must survive the Init
//!   and whatever frames came with it.
//!
//! The tokio runtime is built once per process, with time paused: a side waiting for bytes that
//! never come reaches its deadline at once, so no input can hang the fuzzer.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use hypha_bootstrap::handshake::{self, Expect};
use hypha_bootstrap::BootError;
use hypha_runtime::frame::{self, handles};
use hypha_runtime::proto::{Hello, Init, PROTOCOL_VERSION};
use hypha_runtime::{Handlers, LinkOptions, Role, Router, RouterConfig};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

const NONCE: &str = "fuzz0123";
const HASH: &str = "0123456789abcdef0123456789abcdef";
const MAX_FRAME: usize = 64 << 10;
/// The handshake's deadline: virtual time, so as long as it likes.
const TIMEOUT: Duration = Duration::from_secs(30);
/// An Init that asks for more is honoured up to this here, to keep the fuzzer's memory small
/// (the parent is trusted to set the agent's limit; 16 MiB by default).
const AGENT_MAX_FRAME: usize = 1 << 20;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("a tokio runtime")
    })
}

fn our_hello() -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        binary_hash: HASH.into(),
        pid: 42,
        user: "fuzz".into(),
        host: "fuzzhost".into(),
        arch: "x86_64".into(),
    }
}

fn init_for(hello: &Hello) -> Init {
    Init {
        id: hello.pid,
        ancestors: vec![0],
        name: format!("fuzz on {}", hello.host),
        max_frame: MAX_FRAME as u32,
        ids: (1 << 24, (1 << 24) + 4096),
        link_timeout_ms: 30_000,
        call_timeout_ms: 300_000,
        log_level: 3,
    }
}

fuzz_target!(|data: &[u8]| {
    let [select, far @ ..] = data else {
        return;
    };
    let closes = select & 2 == 0;
    // How much of the far side's output the caller had read already (0..=7 eighths).
    let ahead = far.len() * usize::from((select >> 2) & 7) / 8;
    let (ahead, rest) = far.split_at(ahead);
    runtime().block_on(async {
        if select & 1 == 0 {
            parent_side(ahead, rest, closes).await
        } else {
            agent_side(ahead, rest, closes).await
        }
    });
});

async fn parent_side(ahead: &[u8], rest: &[u8], closes: bool) {
    let (mut near, mut far) = tokio::io::duplex(2 << 20);
    far.write_all(rest).await.expect("the pipe holds the input");
    if closes {
        far.shutdown().await.expect("shutdown");
    }
    let (mut r, mut w) = tokio::io::split(&mut near);
    let expect = Expect { nonce: NONCE, binary_hash: HASH, max_frame: MAX_FRAME, timeout: TIMEOUT, target: "fuzz" };
    let result = handshake::parent(&mut r, &mut w, &expect, init_for, BytesMut::from(ahead)).await;
    drop((r, w));
    drop(near);
    let mut answer = Vec::new();
    far.read_to_end(&mut answer).await.expect("read the answer");
    match result {
        Ok((hello, left)) => {
            assert_eq!(hello.protocol, PROTOCOL_VERSION, "another protocol was accepted");
            assert_eq!(hello.binary_hash, HASH, "another binary was accepted");
            assert!(left.len() <= ahead.len() + rest.len(), "more bytes left over than were sent");
            let mut answer = BytesMut::from(&answer[..]);
            let f = frame::decode(&mut answer, MAX_FRAME).expect("a valid frame").expect("a whole Init frame");
            assert_eq!(f.header.handle, handles::INIT);
            let init: Init = rmp_serde::from_slice(&f.body).expect("a decodable Init");
            assert_eq!(init, init_for(&hello));
            assert!(answer.is_empty(), "more than one Init was written");
        }
        Err(e) => {
            assert!(answer.is_empty(), "an Init was written to an agent that was refused: {e}");
            if closes {
                assert!(!matches!(e, BootError::Timeout { .. }), "waited for a far side that had closed: {e}");
            }
        }
    }
}

async fn agent_side(ahead: &[u8], rest: &[u8], closes: bool) {
    // The agent reads only from the pipe; what counts as read ahead is sent first.
    let (mut near, mut far) = tokio::io::duplex(2 << 20);
    far.write_all(ahead).await.expect("the pipe holds the input");
    far.write_all(rest).await.expect("the pipe holds the input");
    if closes {
        far.shutdown().await.expect("shutdown");
    }
    let (mut r, mut w) = tokio::io::split(&mut near);
    let result = handshake::agent(&mut r, &mut w, NONCE, &our_hello(), TIMEOUT).await;
    drop((r, w));
    drop(near);
    let mut said = Vec::new();
    far.read_to_end(&mut said).await.expect("read what the agent said");
    let marker = handshake::marker(NONCE);
    assert!(said.starts_with(marker.as_bytes()), "the agent did not start with its marker");
    let mut hello = BytesMut::from(&said[marker.len()..]);
    let f = frame::decode(&mut hello, MAX_FRAME).expect("a valid frame").expect("a whole Hello frame");
    assert_eq!(f.header.handle, handles::HELLO);
    assert_eq!(rmp_serde::from_slice::<Hello>(&f.body).expect("a decodable Hello"), our_hello());
    assert!(hello.is_empty(), "the agent said more than its marker and Hello");
    match result {
        Ok((init, left)) => {
            assert!(left.len() <= ahead.len() + rest.len(), "more bytes left over than were sent");
            serve_briefly(init, left).await;
        }
        Err(e) => {
            if closes {
                assert!(!matches!(e, BootError::Timeout { .. }), "waited for a parent that had closed: {e}");
            }
        }
    }
}

/// Build the agent's router from `init` as an agent does, give it the bytes read past the Init,
/// and let it run until its silent parent link closes.
async fn serve_briefly(init: Init, left: BytesMut) {
    let cfg = RouterConfig::new(init.id, init.ancestors, "fuzz")
        .with_max_frame((init.max_frame as usize).min(AGENT_MAX_FRAME))
        .with_link_timeout(Duration::from_millis(init.link_timeout_ms))
        .with_call_timeout(Duration::from_millis(init.call_timeout_ms));
    let router = Router::new(cfg, Handlers::new());
    router.grant_ids(init.ids);
    let (near, far) = tokio::io::duplex(64 << 10);
    let (r, w) = tokio::io::split(near);
    let opts = LinkOptions { role: Role::Parent, name: "parent".into(), span: tracing::Span::none(), initial: left };
    let mut link = router.attach(r, w, opts);
    // Virtual time: an hour passes at once if nothing happens sooner.
    let _ = tokio::time::timeout(Duration::from_secs(3600), link.closed()).await;
    router.close(link.id(), hypha_runtime::CloseReason::Local("fuzz input done".into()));
    drop(far);
}

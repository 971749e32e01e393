//! Shared by the integration tests: the handlers every test agent serves, and helpers.
//!
//! The test binary is its own agent: a constructor runs [`hypha::run_if_agent`] before libtest's
//! `main`, so a context started from a test serves these handlers and never runs the tests.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use hypha::{ByteReceiver, ByteSender, Cx, HandlerError, Handlers, Request, Runtime};
use serde::{Deserialize, Serialize};

macro_rules! request {
    ($name:ident $(($($field:ty),*))? => $resp:ty) => {
        #[derive(Clone, Debug, Serialize, Deserialize)]
        pub struct $name $(($(pub $field),*))?;
        impl Request for $name {
            type Response = $resp;
            const NAME: &'static str = concat!("test.", stringify!($name));
        }
    };
}

request!(Echo(String) => String);
request!(Fail(String) => ());
request!(Panic(String) => ());
request!(Sleep(u64) => u64);
request!(Bump(u64) => ());
request!(Count => u64);
request!(Sink => u64);
request!(SinkThenFail(u64) => u64);
request!(Source(u64) => u64);
request!(Big(usize) => String);
request!(NotRegistered => ());

static BUMPS: AtomicU64 = AtomicU64::new(0);

/// The handlers of the test agents.
pub fn handlers() -> Handlers {
    Handlers::new()
        .on(|Echo(s), _: Cx| async move { Ok::<_, HandlerError>(s) })
        .on(|Fail(what), _: Cx| async move {
            let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
            Err::<(), _>(
                anyhow::Error::new(inner).context(format!("could not open {what}")).context("config not loaded"),
            )
        })
        .on(|Panic(msg), _: Cx| async move {
            if !msg.is_empty() {
                panic!("{msg}");
            }
            Ok::<_, HandlerError>(())
        })
        .on(|Sleep(ms), _: Cx| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, HandlerError>(ms)
        })
        .on(|Bump(n), _: Cx| async move {
            BUMPS.fetch_add(n, Ordering::SeqCst);
            Ok::<_, HandlerError>(())
        })
        .on(|Count, _: Cx| async move { Ok::<_, HandlerError>(BUMPS.load(Ordering::SeqCst)) })
        .on_upload(|Sink, _: Cx, mut rx: ByteReceiver| async move { rx.drain().await.map_err(HandlerError::from) })
        .on_upload(|SinkThenFail(limit), _: Cx, mut rx: ByteReceiver| async move {
            let mut n = 0;
            while let Some(chunk) = rx.recv().await? {
                n += chunk.len() as u64;
                if n >= limit {
                    return Err(HandlerError::from(format!("refusing more than {limit} bytes")));
                }
            }
            Ok(n)
        })
        .on_download(|Source(n), _: Cx, mut tx: ByteSender| async move {
            let chunk = bytes::Bytes::from(vec![7u8; 1 << 20]);
            let mut left = n;
            while left > 0 {
                let take = left.min(chunk.len() as u64) as usize;
                tx.send(chunk.slice(..take)).await?;
                left -= take as u64;
            }
            Ok::<_, HandlerError>(n)
        })
        .on(|Big(n), _: Cx| async move { Ok::<_, HandlerError>("x".repeat(n)) })
}

/// Environment variable that turns the test binary into a small controller (see `orphans`).
pub const CONTROLLER_ENV: &str = "HYPHA_TEST_CONTROLLER";

/// Before libtest's main: serve as an agent, or as the controller of the orphan test.
#[ctor::ctor]
fn before_main() {
    hypha::run_if_agent(&handlers());
    hypha::bootstrap::init_logging();
    if let Ok(n) = std::env::var(CONTROLLER_ENV) {
        let n: usize = n.parse().unwrap_or(2);
        let code = match controller(n) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("test controller: {e:#}");
                1
            }
        };
        std::process::exit(code);
    }
}

/// Start `n` contexts, print their pids on one line, then wait to be killed.
fn controller(n: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let hypha = Runtime::start(handlers())?;
        let mut pids = Vec::new();
        for _ in 0..n {
            pids.push(hypha.local().await.context("start")?.hello().pid.to_string());
        }
        println!("PIDS {}", pids.join(" "));
        use std::io::Write;
        std::io::stdout().flush()?;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    })
}

/// A runtime for one test.
pub fn runtime() -> Runtime {
    Runtime::start(handlers()).expect("runtime starts")
}

/// True while `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Wait up to `limit` for `pid` to be gone.
pub async fn gone_within(pid: u32, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !alive(pid)
}

/// This process's resident set size, in bytes.
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Send SIGKILL to `pid`.
pub fn kill9(pid: u32) {
    // SAFETY: sending a signal has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

//! Every log line about a context carries its span: `context{id=.. name=.. host=..}`.
//!
//! A binary of its own, because it installs the process-wide subscriber.

#![allow(clippy::unwrap_used)]

mod util;

use std::io::Write;
use std::sync::{Arc, Mutex};

use util::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn context_events_carry_id_name_and_host() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .init();

    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    ctx.call(Echo("x".into())).await.unwrap();
    ctx.shutdown().await;
    rt.shutdown().await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let host = &ctx.hello().host;
    let span = format!("context{{id={} name={} host=\"{host}\"}}", ctx.id(), ctx.name());
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("hypha_")).collect();
    assert!(ours.iter().any(|l| l.contains("context ready")), "{text}");
    assert!(ours.iter().any(|l| l.contains("context ended")), "{text}");
    for line in &ours {
        assert!(line.contains(&span), "a line without the context's span ({span}):\n{line}");
    }
}

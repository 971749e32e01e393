//! Typed streams between contexts, either way, on a local context, over SSH and through a chain;
//! a command's stdin streamed while its lines come back; and hostile items refused.

#![allow(clippy::unwrap_used)]

mod util;

use std::time::Duration;

use hypha::process::{Command, Exit, Stream};
use hypha::{CallError, Context};
use util::*;

/// Items both ways, and a command fed while it runs, in `ctx`.
async fn streams_work(ctx: &Context) {
    // Yielded: every item, in order, then the answer.
    let mut items = ctx.items(Numbers(100_000)).await.unwrap();
    let mut want = 0;
    while let Some(n) = items.next().await.unwrap() {
        assert_eq!(n, want);
        want += 1;
    }
    assert_eq!(want, 100_000);
    assert_eq!(items.answer().await.unwrap(), 100_000);

    // Taken: one at a time and in batches.
    let mut feed = ctx.feed(Total(u64::MAX)).await.unwrap();
    for n in 0..1000u64 {
        feed.send(&n).await.unwrap();
    }
    let batch: Vec<u64> = (1000..100_000).collect();
    feed.send_all(&batch).await.unwrap();
    assert_eq!(feed.answer().await.unwrap(), (0..100_000u64).sum::<u64>());

    // A command's stdin, written while its output is read: each line comes back before the next
    // is written, so this only ends if both ways stream.
    let (mut stdin, mut lines) = ctx.spawn(Command::new(["cat"])).await.unwrap();
    for i in 0..100 {
        stdin.write(format!("line {i}\n")).await.unwrap();
        let line = lines.next().await.unwrap();
        assert_eq!((line.stream, line.text), (Stream::Stdout, format!("line {i}")));
    }
    stdin.close().await.unwrap();
    assert!(lines.next().await.is_none());
    assert_eq!(lines.exit().await.unwrap(), Exit::Code(0));

    // More stdin than any window, from a reader; the request's own bytes come first.
    let (stdin, lines) = ctx.spawn(Command::new(["wc", "-c"]).with_stdin("12345")).await.unwrap();
    let data = vec![b'x'; 10 << 20];
    assert_eq!(stdin.copy_from(&data[..]).await.unwrap(), 10 << 20);
    let mut lines = lines;
    assert_eq!(lines.next().await.unwrap().text.trim(), ((10 << 20) + 5).to_string());
    assert_eq!(lines.exit().await.unwrap(), Exit::Code(0));
}

#[tokio::test]
async fn typed_streams_flow_both_ways_in_a_local_context() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    streams_work(&ctx).await;
    rt.shutdown().await;
}

#[tokio::test]
async fn typed_streams_flow_both_ways_over_ssh_and_through_a_sudo_hop() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let ctx = rt.start(lab.ssh("plain")).await.unwrap();
    streams_work(&ctx).await;
    let sudo = rt.start(hypha::Sudo::new("hypha-nopw")).via(&ctx).await.unwrap();
    streams_work(&sudo).await;
    rt.shutdown().await;
}

#[tokio::test]
async fn a_handler_that_stops_taking_items_fails_the_feed_with_its_error_naming_the_path() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let mut feed = ctx.feed(Total(10)).await.unwrap();
    let mut failed = None;
    // The handler fails at the fifth item; the window lets a few more go before the feed sees it.
    for n in 0..1_000_000u64 {
        if let Err(e) = feed.send(&n).await {
            failed = Some(e);
            break;
        }
    }
    let err = failed.expect("the feed failed");
    let CallError::Remote(remote) = &err else { panic!("{err:?}") };
    assert!(remote.message.contains("the sum passed 10"), "{err}");
    assert!(remote.path.as_deref().is_some_and(|p| p.starts_with("controller → ")), "{err}");
    // The context goes on.
    assert_eq!(ctx.call(Echo("still here".into())).await.unwrap(), "still here");
    rt.shutdown().await;
}

#[tokio::test]
async fn dropping_a_stream_of_items_stops_its_handler() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let before = ctx.call(Count).await.unwrap();
    let mut items = ctx.items(Numbers(u64::MAX)).await.unwrap();
    for want in 0..10 {
        assert_eq!(items.next().await.unwrap(), Some(want));
    }
    drop(items);
    // The handler's next send fails and counts itself out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ctx.call(Count).await.unwrap() == before {
        assert!(tokio::time::Instant::now() < deadline, "the handler went on after its caller left");
        tokio::task::yield_now().await;
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn items_that_are_garbage_or_too_long_are_refused_and_the_context_goes_on() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let record = |len: u32, body: &[u8]| [&len.to_le_bytes()[..], body].concat();
    let cases = [
        // Not a number at all (a msgpack string).
        (record(2, &[0xa1, b'x']), "does not decode as u64"),
        // A length past any limit: refused before anything is buffered.
        (record(u32::MAX, b""), "above the limit"),
        // Cut short by the end of the stream.
        (record(100, b"abc"), "ended inside an item"),
    ];
    for (bytes, why) in cases {
        let mut items = ctx.items(Garbage(bytes)).await.unwrap();
        let err = match items.next().await {
            Ok(Some(n)) => panic!("a garbage item decoded as {n}"),
            Ok(None) => panic!("garbage ended cleanly ({why})"),
            Err(e) => e,
        };
        assert!(err.to_string().contains(why), "{err}");
        assert_eq!(ctx.call(Echo("still here".into())).await.unwrap(), "still here");
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn dropping_the_lines_kills_a_command_whose_stdin_is_still_open() {
    // The handler then waits twice on the one call: for more stdin, and for its caller to go.
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let (stdin, mut lines) = ctx.spawn(Command::shell("echo $$; exec sleep 300")).await.unwrap();
    let pid: u32 = lines.next().await.unwrap().text.parse().unwrap();
    assert!(alive(pid));
    drop(lines);
    assert!(gone_within(pid, Duration::from_secs(10)).await, "the command {pid} still runs");
    drop(stdin);
    assert_eq!(ctx.call(Echo("still here".into())).await.unwrap(), "still here");
    rt.shutdown().await;
}

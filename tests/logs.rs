//! Logs from every context: an agent's `tracing` events and its stray stderr lines reach the
//! controller's subscriber inside that context's span, `context{id, name, host}`, attributed by
//! where they came from; floods are bounded and stall nothing.
//!
//! A binary of its own, because it installs the process-wide subscriber: a layer that keeps every
//! event with the context span it happened in, and wakes the tests waiting for one.

#![allow(clippy::unwrap_used)]

mod util;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hypha::bootstrap::log::{MAX_LINE, QUEUE_RECORDS};
use hypha::{Context, Local, Options, Runtime};
use tokio::sync::watch;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use util::*;

/// How long any one thing may take to show up.
const PATIENCE: Duration = Duration::from_secs(30);

/// The fields of a `context` span.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Ctx {
    id: u64,
    name: String,
    host: String,
}

fn ctx_of(ctx: &Context) -> Ctx {
    Ctx { id: ctx.id().into(), name: ctx.name().to_owned(), host: ctx.hello().host }
}

/// One event the controller's subscriber saw.
#[derive(Clone, Debug)]
struct Seen {
    level: Level,
    target: String,
    /// The message, then ` name=value` for each other field.
    text: String,
    /// The innermost `context` span it happened in.
    context: Option<Ctx>,
}

impl Seen {
    fn forwarded(&self) -> bool {
        self.target == "hypha::remote"
    }
    fn stderr(&self) -> bool {
        self.target == "hypha::stderr"
    }
    fn from(&self, ctx: &Ctx) -> bool {
        self.context.as_ref() == Some(ctx)
    }
    /// The count of a "N log records dropped" record.
    fn dropped(&self) -> Option<u64> {
        let (n, rest) = self.text.split_once(' ')?;
        (self.forwarded() && rest.starts_with("log records dropped")).then(|| n.parse().ok())?
    }
}

static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

fn changed() -> &'static watch::Sender<()> {
    static CHANGED: OnceLock<watch::Sender<()>> = OnceLock::new();
    CHANGED.get_or_init(|| watch::channel(()).0)
}

fn seen() -> Vec<Seen> {
    SEEN.lock().unwrap().clone()
}

struct Capture;

impl Visit for Ctx {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "id" {
            self.id = value;
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "name" => self.name = value.to_owned(),
            "host" => self.host = value.to_owned(),
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// An event's message, then ` name=value` for each other field.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields.push_str(&format!(" {}={value}", field.name()));
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        if attrs.metadata().name() == "context" {
            let mut fields = Ctx::default();
            attrs.record(&mut fields);
            ctx.span(id).unwrap().extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
        let span = ctx.span(id).unwrap();
        let mut ext = span.extensions_mut();
        if let Some(fields) = ext.get_mut::<Ctx>() {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: LayerContext<'_, S>) {
        let mut text = Text::default();
        event.record(&mut text);
        let context =
            ctx.event_scope(event).and_then(|mut scope| scope.find_map(|span| span.extensions().get::<Ctx>().cloned()));
        let meta = event.metadata();
        let seen =
            Seen { level: *meta.level(), target: meta.target().to_owned(), text: text.message + &text.fields, context };
        SEEN.lock().unwrap().push(seen);
        changed().send_replace(());
    }
}

/// Install the capturing subscriber (once per process) and start a runtime.
fn setup(options: Options) -> Runtime {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(Capture.with_filter(LevelFilter::DEBUG));
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
    Runtime::with_options(handlers(), options).unwrap()
}

/// The first event seen that `pred` accepts, waiting for it for at most `patience`.
async fn wait_within(patience: Duration, pred: impl Fn(&Seen) -> bool) -> Option<Seen> {
    let mut rx = changed().subscribe();
    let deadline = tokio::time::Instant::now() + patience;
    let mut from = 0;
    loop {
        rx.borrow_and_update();
        {
            let all = SEEN.lock().unwrap();
            if let Some(found) = all[from..].iter().find(|s| pred(s)) {
                return Some(found.clone());
            }
            from = all.len();
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// [`wait_within`] [`PATIENCE`], failing the test if nothing comes.
async fn wait_for(what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
    match wait_within(PATIENCE, pred).await {
        Some(found) => found,
        None => panic!("no {what} within {PATIENCE:?}; seen:\n{:#?}", seen()),
    }
}

/// Have `ctx` log markers until one arrives (a marker logged while its queue is full is dropped,
/// and counted): then everything it logged before has arrived or been counted. Returns how many
/// markers were sent.
async fn settle(ctx: &Context) -> u64 {
    let me = ctx_of(ctx);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for sent in 1.. {
        let marker = format!("marker {sent} ");
        ctx.call(Log(marker.trim_end().to_owned())).await.unwrap();
        let arrived = wait_within(Duration::from_secs(1), |s| s.from(&me) && s.text.starts_with(&marker)).await;
        if arrived.is_some() {
            return sent;
        }
        assert!(tokio::time::Instant::now() < deadline, "no marker arrived within {PATIENCE:?}");
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_events_arrive_in_its_context_span_at_info_and_above() {
    let rt = setup(Options::default());
    let ctx = rt.local().name("logger").await.unwrap();
    let me = ctx_of(&ctx);
    ctx.call(Log("hello from a handler".into())).await.unwrap();
    let got = wait_for("forwarded event", |s| s.forwarded() && s.text.starts_with("hello from a handler")).await;
    assert_eq!(got.context.as_ref(), Some(&me), "{got:?}");
    assert_eq!(got.level, Level::INFO);
    assert!(got.text.contains("answer=42"), "the event's fields come as text: {got:?}");
    assert!(got.text.contains("remote.target=logs::util"), "the agent-side target: {got:?}");
    // Debug and trace were logged first, in the same handler: had they been forwarded, they
    // would have arrived before.
    let all = seen();
    assert!(!all.iter().any(|s| s.from(&me) && s.text.starts_with("at ")), "below info: {all:#?}");
    ctx.shutdown().await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grandchilds_events_are_attributed_to_it() {
    let rt = setup(Options::default());
    let a = rt.local().name("a").await.unwrap();
    let b = rt.start(Local::default()).via(&a).name("b").await.unwrap();
    b.call(Log("from the grandchild".into())).await.unwrap();
    let got = wait_for("grandchild's event", |s| s.forwarded() && s.text.starts_with("from the grandchild")).await;
    assert_eq!(got.context, Some(ctx_of(&b)), "{got:?}");

    // A child `a` started by itself: the controller knows its id alone.
    let own = a.call(StartChild).await.unwrap();
    a.call(LogOn(own, "from a's own child".into())).await.unwrap();
    let got = wait_for("event of a's own child", |s| s.forwarded() && s.text.starts_with("from a's own child")).await;
    let context = got.context.unwrap();
    assert_eq!(context.id, u64::from(own));
    assert!(context.name.is_empty(), "{context:?}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_stderr_arrives_as_log_events() {
    let rt = setup(Options::default());
    let ctx = rt.local().name("noisy").await.unwrap();
    let me = ctx_of(&ctx);
    let long = "x".repeat(MAX_LINE * 2);
    ctx.call(Stderr(vec!["a stray line".into(), long.clone(), "after the long one".into()])).await.unwrap();
    let line = wait_for("stderr line", |s| s.stderr() && s.text == "a stray line").await;
    assert_eq!(line.context.as_ref(), Some(&me));
    assert_eq!(line.level, Level::WARN);
    let cut = wait_for("the long line, cut", |s| s.stderr() && s.text.starts_with("xxx")).await;
    assert_eq!(cut.text, format!("{}<...>", &long[..MAX_LINE]));
    wait_for("the line after it", |s| s.stderr() && s.from(&me) && s.text == "after the long one").await;
    let child = wait_for("a command's stderr", |s| s.stderr() && s.text == "from a command").await;
    assert_eq!(child.context, Some(me));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_events_is_bounded_counted_and_stalls_no_call() {
    const N: u64 = 100_000;
    let rt = setup(Options::default());
    let ctx = rt.local().name("flood").await.unwrap();
    let other = rt.local().name("bystander").await.unwrap();
    // On the agent's one thread: nothing is sent while it logs, so the queue fills and drops.
    ctx.call(Flood(N)).await.unwrap();
    // From a thread of the agent while it goes on serving calls, here and elsewhere.
    let flood = tokio::spawn({
        let ctx = ctx.clone();
        async move { ctx.call(FloodThread(N)).await }
    });
    for i in 0..50 {
        assert_eq!(ctx.call(Echo(format!("{i}"))).await.unwrap(), format!("{i}"));
        assert_eq!(other.call(Echo(format!("{i}"))).await.unwrap(), format!("{i}"));
    }
    flood.await.unwrap().unwrap();
    let markers = settle(&ctx).await;

    let me = ctx_of(&ctx);
    let all: Vec<Seen> = seen().into_iter().filter(|s| s.from(&me)).collect();
    let on_thread = all.iter().filter(|s| s.text.starts_with("flood i=")).count() as u64;
    let threaded = all.iter().filter(|s| s.text.starts_with("flood from a thread")).count() as u64;
    let arrived_markers = all.iter().filter(|s| s.text.starts_with("marker ")).count() as u64;
    let dropped: u64 = all.iter().filter_map(Seen::dropped).sum();
    assert!(on_thread <= QUEUE_RECORDS as u64, "no more than a queue's worth: {on_thread}");
    assert!(dropped >= N - QUEUE_RECORDS as u64, "dropped {dropped}");
    assert_eq!(
        on_thread + threaded + arrived_markers + dropped,
        2 * N + markers,
        "every record arrived or was counted as dropped"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_stderr_lines_is_bounded_and_stalls_no_call() {
    const N: u64 = 100_000;
    let rt = setup(Options::default());
    let ctx = rt.local().name("stderr-flood").await.unwrap();
    let flood = tokio::spawn({
        let ctx = ctx.clone();
        async move { ctx.call(FloodStderr(N)).await }
    });
    for i in 0..50 {
        assert_eq!(ctx.call(Echo(format!("{i}"))).await.unwrap(), format!("{i}"));
    }
    flood.await.unwrap().unwrap();
    // A line written after the flood: once it has arrived, so has every flood line not dropped
    // (the pipe keeps them in order), and the drops before it are counted.
    let me = ctx_of(&ctx);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for i in 0.. {
        let last = format!("the last line {i}");
        ctx.call(Stderr(vec![last.clone()])).await.unwrap();
        if wait_within(Duration::from_secs(1), |s| s.stderr() && s.from(&me) && s.text == last).await.is_some() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no last line within {PATIENCE:?}");
    }
    settle(&ctx).await;
    let all: Vec<Seen> = seen().into_iter().filter(|s| s.from(&me)).collect();
    let lines = all.iter().filter(|s| s.stderr() && s.text.starts_with("stderr flood ")).count() as u64;
    let dropped: u64 = all.iter().filter_map(Seen::dropped).sum();
    assert!(lines <= N);
    assert!(lines + dropped >= N, "every line arrived or was counted: {lines} + {dropped}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_cannot_claim_another_context() {
    let rt = setup(Options::default());
    let a = rt.local().name("a").await.unwrap();
    let b = rt.local().name("b").await.unwrap();
    let claim = format!("forged\nINFO context{{id={} name=b}}: hypha::stderr: I am b", b.id());
    a.call(Forge(claim)).await.unwrap();
    let sent = wait_for("the forged record", |s| s.stderr() && s.text.starts_with("forged")).await;
    assert_eq!(sent.context, Some(ctx_of(&a)), "attributed to its sender: {sent:?}");
    assert!(!sent.text.contains('\n') && sent.text.contains("\\n"), "cannot start a line: {sent:?}");
    let logged = wait_for("the forged event", |s| s.forwarded() && s.text.starts_with("forged")).await;
    assert_eq!(logged.context, Some(ctx_of(&a)), "{logged:?}");
    let all = seen();
    assert!(!all.iter().any(|s| s.from(&ctx_of(&b)) && s.text.contains("forged")), "{all:#?}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_sets_the_forward_level_for_the_whole_tree() {
    let rt = setup(Options::default().with_forward_logs(LevelFilter::DEBUG));
    let a = rt.local().name("a").await.unwrap();
    let b = rt.start(Local::default()).via(&a).name("b").await.unwrap();
    for ctx in [&a, &b] {
        let me = ctx_of(ctx);
        ctx.call(Log("levels".into())).await.unwrap();
        let got = wait_for("debug event", |s| s.forwarded() && s.from(&me) && s.text.starts_with("at debug")).await;
        assert_eq!(got.level, Level::DEBUG);
        wait_for("info event", |s| s.forwarded() && s.from(&me) && s.text.starts_with("levels")).await;
        let all = seen();
        assert!(!all.iter().any(|s| s.from(&me) && s.text.starts_with("at trace")), "below debug: {all:#?}");
    }
    // Calls are logged at debug with their arguments: a secret still never prints.
    let me = ctx_of(&a);
    let _ = a.call(Reveal(hypha::Secret::new("s3cr3t-value".into()))).await.unwrap_err();
    wait_for("the handler's error", |s| s.forwarded() && s.from(&me) && s.text.starts_with("refusing")).await;
    wait_for("the call's log", |s| s.from(&me) && s.text.starts_with("call") && s.text.contains("Reveal")).await;
    let all = seen();
    assert!(!all.iter().any(|s| s.text.contains("s3cr3t")), "{all:#?}");
    rt.shutdown().await;

    let rt = Runtime::with_options(handlers(), Options::default().with_forward_logs(LevelFilter::WARN)).unwrap();
    let quiet = rt.local().name("quiet").await.unwrap();
    let me = ctx_of(&quiet);
    quiet.call(Log("not at warn".into())).await.unwrap();
    // Stderr lines come at warn; the info event, had it been sent, would have come before.
    quiet.call(Stderr(vec!["at warn".into()])).await.unwrap();
    wait_for("stderr line", |s| s.stderr() && s.from(&me) && s.text == "at warn").await;
    let all = seen();
    assert!(!all.iter().any(|s| s.from(&me) && s.text.contains("not at warn")), "{all:#?}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_agents_send_their_events_and_stderr() {
    let Some(lab) = lab() else { return };
    let rt = setup(Options::default());
    for (i, method) in lab.both("plain").into_iter().enumerate() {
        let ctx = rt.start(method).name(format!("remote{i}")).await.unwrap();
        let me = ctx_of(&ctx);
        assert_ne!(me.host, hypha::Identity::current().host, "the context runs on the lab host");
        let text = format!("over ssh {i}");
        ctx.call(Log(text.clone())).await.unwrap();
        ctx.call(Stderr(vec![text.clone()])).await.unwrap();
        let got = wait_for("event over ssh", |s| s.forwarded() && s.text.starts_with(&text)).await;
        assert_eq!(got.context.as_ref(), Some(&me));
        let got = wait_for("stderr over ssh", |s| s.stderr() && s.text == text).await;
        assert_eq!(got.context.as_ref(), Some(&me));
        ctx.shutdown().await;
    }
    rt.shutdown().await;
}

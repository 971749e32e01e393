//! Logs from every context: an agent's `tracing` events and its stray stderr, re-emitted by the
//! controller inside that context's span.
//!
//! Mitogen forwards each child's `logging` records to the master, under a logger named after the
//! child. hypha does the same with `tracing`, and no setup: [`run_if_agent`](crate::run_if_agent)
//! installs a subscriber whose forwarding layer turns every event at or above the forward level
//! (info unless the controller says otherwise:
//! [`Init::log_level`](hypha_runtime::proto::Init::log_level)) into a [`Record`]: level, target,
//! message and fields as text, the agent-side spans it happened in. The agent also points
//! its own stderr (and stdout, which already went there) at a pipe that a thread of its own reads
//! line by line, so whatever it or a library or a command it started writes there becomes a record
//! too ([`Source::Stderr`]).
//!
//! Records wait in a bounded queue and a task sends them to the controller (context 0) in
//! batches, each a one-way call of `hypha.log` ([`Batch`]). Routing already carries calls up to
//! ancestors, so a grandchild's records go straight to the root through its ancestors' routers,
//! which only forward them. The controller opens that one handler to its descendants and takes
//! a record's context from the call's checked source ([`Cx::caller`]: the router accepted the
//! frame only from the link that context is behind), never from anything the record says. It
//! emits each record as a `tracing` event at the record's level inside the span of that context
//! (`context{id, name, host}`, the one its actor logs in; an id it did not start itself, such as
//! a child an agent started, gets a span with the id alone): target `hypha::remote` with the
//! agent-side target and spans as the fields `remote.target` and `remote.spans`, or
//! `hypha::stderr` for a stderr line (at warn).
//!
//! A context may be hostile or merely noisy, so every step is bounded:
//!
//! - Queueing never waits: a full queue ([`QUEUE_RECORDS`] records or [`QUEUE_BYTES`] of text)
//!   drops the record and counts it; when there is room again, a warning record says how many
//!   were dropped, in its place in the order. A handler that logs in a tight loop, or writes
//!   to stderr, never waits for the link.
//! - A record's text is cut to [`MAX_TEXT`] bytes, a stderr line to [`MAX_LINE`]; the stderr
//!   reader holds one line at most.
//! - The sending task sends one batch at a time, waiting as any sender does when the link to the
//!   parent is congested (so a flood slows only this context's records, and drops them).
//! - The controller handles a batch as it reads it, on that context's link (a flood holds back
//!   that link alone, and the agent's queue drops), emits at most [`MAX_BATCH`] records of one
//!   batch, cuts every text to the same limits again, and escapes control characters, so a
//!   record cannot start a line that looks like another context's.
//! - Nothing in the path logs into itself: events raised while a record is being made, or by
//!   the sending task, are not forwarded.
//!
//! With `HYPHA_LOG` ([`LOG_ENV`](crate::LOG_ENV)) set, an agent also writes its events at that
//! level to the stderr it was started with, as before: on a local child, the controller's.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::fmt::{self, Write as _};
use std::future::Future;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use hypha_runtime::{ContextId, Cx, HandlerError, Request, Router};
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record as SpanRecord};
use tracing::{Event, Level, Metadata, Span, Subscriber};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::{Context, Filter, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// If set on the controller (to `off`, `error`, `warn`, `info`, `debug` or `trace`), the default of
/// the forward level its contexts use (`Options::forward_logs` in `hypha-actors`); `info` if unset.
pub const FORWARD_LOG_ENV: &str = "HYPHA_FORWARD_LOG";
/// Forward level when nothing says otherwise.
pub const DEFAULT_FORWARD_LEVEL: LevelFilter = LevelFilter::INFO;
/// Longest text of one record (message and fields), in bytes; longer ones are cut.
pub const MAX_TEXT: usize = 4 << 10;
/// Longest stderr line, in bytes; the rest of a longer one is skipped.
pub const MAX_LINE: usize = 4 << 10;
/// Most records an agent keeps waiting to be sent.
pub const QUEUE_RECORDS: usize = 4096;
/// Most bytes of record text an agent keeps waiting to be sent.
pub const QUEUE_BYTES: usize = 4 << 20;
/// Most records the controller emits from one batch.
pub const MAX_BATCH: usize = 1024;
/// Longest target and longest span list kept, in bytes.
const MAX_TARGET: usize = 256;
const MAX_SPANS: usize = 1 << 10;
/// What a cut text ends with.
const CUT: &str = "<...>";
/// A batch an agent sends holds at most this many records, and about this many bytes (or half
/// the frame limit, if that is less).
const BATCH_RECORDS: usize = 256;
const BATCH_BYTES: usize = 256 << 10;
/// Target of the controller's events for records of agent events, and for stderr lines.
const REMOTE_TARGET: &str = "hypha::remote";
const STDERR_TARGET: &str = "hypha::stderr";

/// One log record of a context, as it travels to the controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// 1 error, 2 warn, 3 info, 4 debug, 5 trace ([`level_code`]).
    pub level: u8,
    /// Where it came from in the agent.
    pub source: Source,
    /// The message, then its fields as `name=value`.
    pub text: String,
}

/// Where a [`Record`] came from in the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// A `tracing` event.
    Event {
        /// Its target (the module path, unless the event named one).
        target: String,
        /// The spans it happened in below the agent's own context span, outermost first, as
        /// `name{fields}:name{fields}`; empty if none.
        spans: String,
    },
    /// A line the agent process (or a command that inherited its stderr) wrote to stderr.
    Stderr,
}

/// Records for the controller: a one-way call of `hypha.log`, which every context serves and
/// only the controller opens to its descendants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Oldest first.
    pub records: Vec<Record>,
}

impl Request for Batch {
    type Response = ();
    const NAME: &'static str = "hypha.log";
}

/// A level as a record carries it: 1 error to 5 trace.
pub fn level_code(level: Level) -> u8 {
    match level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        _ => 5,
    }
}

/// A forward level as [`Init::log_level`](hypha_runtime::proto::Init::log_level) carries it: 0 off,
/// then as [`level_code`].
pub fn filter_code(filter: LevelFilter) -> u8 {
    filter.into_level().map_or(0, level_code)
}

/// The forward level of [`filter_code`]'s number (above 5: trace).
pub fn filter_from_code(code: u8) -> LevelFilter {
    match code {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// The forward level a context gives the children it starts, kept with its router.
#[derive(Clone)]
struct Setting(Arc<AtomicU8>);

fn setting(router: &Router) -> Setting {
    router.extension(|| Setting(Arc::new(AtomicU8::new(filter_code(DEFAULT_FORWARD_LEVEL)))))
}

/// Set the forward level `router`'s context passes on to the children it starts (the controller:
/// from its options; an agent: what its parent said). Not public API.
#[doc(hidden)]
pub fn set_forward_level(router: &Router, level: LevelFilter) {
    setting(router).0.store(filter_code(level), Ordering::Relaxed);
}

/// The forward level `router`'s context passes on to its children ([`DEFAULT_FORWARD_LEVEL`]
/// unless set). Not public API.
#[doc(hidden)]
pub fn forward_level(router: &Router) -> LevelFilter {
    filter_from_code(setting(router).0.load(Ordering::Relaxed))
}

/// The forward level named by [`FORWARD_LOG_ENV`], if it is set and names one.
pub fn forward_level_from_env() -> Option<LevelFilter> {
    std::env::var(FORWARD_LOG_ENV).ok()?.trim().parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The controller's side.

/// The span of each context a runtime started, by id, kept with its router: records from a
/// context are emitted in it.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<HashMap<ContextId, Span>>>);

fn spans(router: &Router) -> Spans {
    router.extension(Spans::default)
}

impl Spans {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ContextId, Span>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Emit the records of context `id` in `span` from now on. Not public API (the actors register
/// each context's span when they start it).
#[doc(hidden)]
pub fn register_span(router: &Router, id: ContextId, span: Span) {
    spans(router).lock().insert(id, span);
}

/// Context `id` has ended for good: forget its span. Not public API.
#[doc(hidden)]
pub fn forget_span(router: &Router, id: ContextId) {
    let span = spans(router).lock().remove(&id);
    drop(span); // closing a span may log: not under the lock
}

/// The `hypha.log` handler: emit the records in the span of the context that sent them.
pub(crate) async fn serve(batch: Batch, cx: Cx) -> Result<(), HandlerError> {
    emit(cx.router(), cx.caller(), &batch.records);
    Ok(())
}

/// Emit `records`, sent by context `from` (a checked source), as this process's own events.
fn emit(router: &Router, from: ContextId, records: &[Record]) {
    let span = spans(router).lock().get(&from).cloned();
    let span = span.unwrap_or_else(|| {
        tracing::info_span!("context", id = from, name = tracing::field::Empty, host = tracing::field::Empty)
    });
    let _in = span.enter();
    for record in records.iter().take(MAX_BATCH) {
        emit_one(record);
    }
    if records.len() > MAX_BATCH {
        let over = records.len() - MAX_BATCH;
        tracing::warn!(target: "hypha::log", over, "a batch of log records over the limit: the rest were dropped");
    }
}

/// `tracing::event!` at a level chosen at run time (a callsite's level is fixed).
macro_rules! event_at {
    ($level:expr, target: $target:expr, $($rest:tt)+) => {
        match $level {
            1 => tracing::event!(target: $target, Level::ERROR, $($rest)+),
            2 => tracing::event!(target: $target, Level::WARN, $($rest)+),
            3 => tracing::event!(target: $target, Level::INFO, $($rest)+),
            4 => tracing::event!(target: $target, Level::DEBUG, $($rest)+),
            _ => tracing::event!(target: $target, Level::TRACE, $($rest)+),
        }
    };
}

fn emit_one(record: &Record) {
    let text = sanitize(&record.text, MAX_TEXT + CUT.len());
    match &record.source {
        Source::Stderr => event_at!(record.level, target: STDERR_TARGET, "{text}"),
        Source::Event { target, spans } => {
            let target = sanitize(target, MAX_TARGET);
            let spans = (!spans.is_empty()).then(|| sanitize(spans, MAX_SPANS));
            event_at!(record.level, target: REMOTE_TARGET, remote.target = %target, remote.spans = spans.as_deref(), "{text}")
        }
    }
}

/// `text` cut to `max` bytes, with control characters escaped (`\n`, `\u{1b}`): what a context
/// sent cannot start a line of its own in the controller's log, nor drive its terminal.
fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + CUT.len());
    for c in text.chars() {
        if out.len() + c.len_utf8() > max {
            out.push_str(CUT);
            break;
        }
        if c.is_control() && c != '\t' {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The agent's side.

/// The records an agent has yet to send, shared by the forwarding layer (any thread), the stderr
/// reader (a thread of its own) and the sending task.
struct Queue {
    state: Mutex<Queued>,
    /// Wakes the sending task when a record is queued.
    ready: tokio::sync::Notify,
}

#[derive(Default)]
struct Queued {
    records: VecDeque<Record>,
    /// Bytes of text in `records`.
    bytes: usize,
    /// Records dropped since the last that was queued.
    dropped: u64,
    /// False once forwarding is off: nothing is queued.
    off: bool,
}

/// What a record costs in the queue and in a batch, roughly its encoded size.
fn cost(record: &Record) -> usize {
    let source = match &record.source {
        Source::Event { target, spans } => target.len() + spans.len(),
        Source::Stderr => 0,
    };
    record.text.len() + source + 16
}

impl Queue {
    fn new() -> Self {
        Queue { state: Mutex::new(Queued::default()), ready: tokio::sync::Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `record`, or drop it if the queue is full. Never waits (but for the lock, which is
    /// held only to move records in and out).
    fn push(&self, record: Record) {
        let mut q = self.lock();
        if q.off {
            return;
        }
        let fits = |q: &Queued, cost: usize| q.records.len() < QUEUE_RECORDS && q.bytes + cost <= QUEUE_BYTES;
        if q.dropped > 0 {
            let notice = Record {
                level: level_code(Level::WARN),
                source: Source::Event { target: "hypha::log".into(), spans: String::new() },
                text: format!("{} log records dropped: the queue was full", q.dropped),
            };
            // Room for the notice and the record itself, or the record counts as dropped too.
            if !fits(&q, cost(&notice) + cost(&record)) {
                q.dropped += 1;
                return;
            }
            q.bytes += cost(&notice);
            q.records.push_back(notice);
            q.dropped = 0;
        }
        let c = cost(&record);
        if !fits(&q, c) {
            q.dropped += 1;
            return;
        }
        q.bytes += c;
        q.records.push_back(record);
        drop(q);
        self.ready.notify_one();
    }

    /// The oldest records, up to `max_records` and about `max_bytes` (at least one, if any).
    fn take(&self, max_records: usize, max_bytes: usize) -> Vec<Record> {
        let mut q = self.lock();
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(first) = q.records.front() {
            let c = cost(first);
            if batch.len() == max_records || !batch.is_empty() && bytes + c > max_bytes {
                break;
            }
            bytes += c;
            q.bytes -= c;
            batch.extend(q.records.pop_front());
        }
        batch
    }

    /// Stop queueing, and forget what waits (forwarding is off).
    fn turn_off(&self) {
        let mut q = self.lock();
        q.off = true;
        q.records.clear();
        q.bytes = 0;
        q.dropped = 0;
    }
}

thread_local! {
    /// Set while this thread makes a record or sends records: an event raised meanwhile (by a
    /// field's `Debug`, or by the router sending a batch) is not forwarded, so the path cannot feed
    /// itself.
    static IN_LOG_PATH: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as in the log path until dropped (see [`IN_LOG_PATH`]).
struct Quiet(bool);

impl Quiet {
    fn enter() -> Quiet {
        Quiet(IN_LOG_PATH.with(|q| q.replace(true)))
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        IN_LOG_PATH.with(|q| q.set(self.0));
    }
}

/// A future polled with its thread marked as in the log path.
struct Quietly<F>(Pin<Box<F>>);

impl<F: Future> Future for Quietly<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let _quiet = Quiet::enter();
        self.0.as_mut().poll(cx)
    }
}

/// The forward level of an agent's layer, changed when the Init names it.
#[derive(Clone)]
struct ForwardFilter(Arc<AtomicU8>);

impl ForwardFilter {
    fn allows(&self, level: &Level) -> bool {
        filter_from_code(self.0.load(Ordering::Relaxed)) >= *level
    }
}

impl<S> Filter<S> for ForwardFilter {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        self.allows(meta.level())
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        // Cached until the level changes, which rebuilds the cache.
        if self.allows(meta.level()) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(filter_from_code(self.0.load(Ordering::Relaxed)))
    }
}

/// The layer that turns an agent's events into records.
struct Forward {
    queue: Arc<Queue>,
}

/// A span's fields as text, kept in its extensions for the records of events inside it.
struct SpanFields(String);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Forward {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let _quiet = Quiet::enter();
        let mut text = Bounded::new(MAX_SPANS);
        attrs.record(&mut Fields { message: None, fields: &mut text });
        span.extensions_mut().insert(SpanFields(text.out));
    }

    fn on_record(&self, id: &Id, values: &SpanRecord<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let _quiet = Quiet::enter();
        let mut ext = span.extensions_mut();
        if let Some(SpanFields(text)) = ext.get_mut::<SpanFields>() {
            let mut more = Bounded::new(MAX_SPANS.saturating_sub(text.len() + 1));
            values.record(&mut Fields { message: None, fields: &mut more });
            if !more.out.is_empty() {
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(&more.out);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if IN_LOG_PATH.with(Cell::get) {
            return;
        }
        let _quiet = Quiet::enter();
        let meta = event.metadata();
        let text = event_text(event);
        let mut spans = Bounded::new(MAX_SPANS);
        if let Some(scope) = ctx.event_scope(event) {
            // Outermost first; the outermost is the agent's own context span, which the
            // controller knows better than the agent does.
            let mut scope = scope.from_root().peekable();
            if scope.peek().is_some_and(|s| s.name() == "context") {
                scope.next();
            }
            for (i, span) in scope.enumerate() {
                if i > 0 {
                    spans.write(":");
                }
                spans.write(span.name());
                if let Some(SpanFields(fields)) = span.extensions().get::<SpanFields>() {
                    if !fields.is_empty() {
                        spans.write("{");
                        spans.write(fields);
                        spans.write("}");
                    }
                }
            }
        }
        let mut target = Bounded::new(MAX_TARGET);
        target.write(meta.target());
        self.queue.push(Record {
            level: level_code(*meta.level()),
            source: Source::Event { target: target.out, spans: spans.out },
            text,
        });
    }
}

/// A string that takes at most `left` more bytes, then notes that it was cut.
struct Bounded {
    out: String,
    left: usize,
    cut: bool,
}

impl Bounded {
    fn new(max: usize) -> Self {
        Bounded { out: String::new(), left: max, cut: false }
    }

    fn write(&mut self, s: &str) {
        let _ = self.write_str(s);
    }
}

impl fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.cut {
            return Err(fmt::Error);
        }
        if s.len() <= self.left {
            self.out.push_str(s);
            self.left -= s.len();
            return Ok(());
        }
        let mut end = self.left;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.out.push_str(&s[..end]);
        self.out.push_str(CUT);
        self.left = 0;
        self.cut = true;
        // Stops the formatting of the rest: a huge value costs no more than its first bytes.
        Err(fmt::Error)
    }
}

/// Collects an event's message and its other fields (` name=value`), or a span's fields.
struct Fields<'a> {
    /// The message (for a span: nothing).
    message: Option<&'a mut Bounded>,
    fields: &'a mut Bounded,
}

impl Fields<'_> {
    fn field(&mut self, name: &str, value: fmt::Arguments<'_>) {
        if !self.fields.out.is_empty() {
            self.fields.write(" ");
        }
        let _ = write!(self.fields, "{name}={value}");
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match &mut self.message {
            Some(message) if field.name() == "message" => message.write(value),
            _ => self.field(field.name(), format_args!("{value:?}")),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match &mut self.message {
            Some(message) if field.name() == "message" => {
                let _ = write!(message, "{value:?}");
            }
            _ => self.field(field.name(), format_args!("{value:?}")),
        }
    }
}

/// An event's text: its message, then its other fields, at most [`MAX_TEXT`] bytes in all.
fn event_text(event: &Event<'_>) -> String {
    let (mut message, mut fields) = (Bounded::new(MAX_TEXT), Bounded::new(MAX_TEXT));
    event.record(&mut Fields { message: Some(&mut message), fields: &mut fields });
    if fields.out.is_empty() {
        return message.out;
    }
    let mut text = Bounded::new(MAX_TEXT);
    text.write(&message.out);
    if !message.out.is_empty() {
        text.write(" ");
    }
    text.write(&fields.out);
    text.out
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes: the rest of a longer line is
/// skipped (the kept part ends with a mark), and a last line without a newline comes at the end.
#[derive(Default)]
struct Lines {
    line: Vec<u8>,
    /// The current line was longer than the limit: skip to its end.
    skipping: bool,
}

impl Lines {
    fn feed(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(String)) {
        while !bytes.is_empty() {
            let end = bytes.iter().position(|&b| b == b'\n');
            let (part, rest) = match end {
                Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
                None => (bytes, None),
            };
            if !self.skipping {
                let room = MAX_LINE - self.line.len();
                if part.len() > room {
                    self.line.extend_from_slice(&part[..room]);
                    emit(self.text(true));
                    self.skipping = true;
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            match rest {
                Some(rest) => {
                    if !self.skipping {
                        emit(self.text(false));
                    }
                    self.skipping = false;
                    bytes = rest;
                }
                None => break,
            }
        }
    }

    /// The stream ended: the last line, if it had no newline.
    fn finish(&mut self, emit: &mut impl FnMut(String)) {
        if !self.skipping && !self.line.is_empty() {
            emit(self.text(false));
        }
    }

    fn text(&mut self, cut: bool) -> String {
        let bytes = std::mem::take(&mut self.line);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(&bytes);
        let mut text = String::from_utf8_lossy(bytes).into_owned();
        if cut {
            text.push_str(CUT);
        }
        text
    }
}

/// Read the stderr pipe until it ends, queueing each line. A thread of its own: the agent's one
/// runtime thread may be busy (or be the writer, blocked on a full pipe).
/// Lines count as warnings: a forward level of error leaves them out.
fn read_stderr(pipe: OwnedFd, queue: Arc<Queue>, level: ForwardFilter) {
    let mut pipe = std::fs::File::from(pipe);
    let mut lines = Lines::default();
    let mut emit = |text: String| {
        if level.allows(&Level::WARN) {
            queue.push(Record { level: level_code(Level::WARN), source: Source::Stderr, text });
        }
    };
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => lines.feed(&buf[..n], &mut emit),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    lines.finish(&mut emit);
}

/// Writes `HYPHA_LOG`'s lines to the stderr the agent was started with.
#[derive(Clone)]
struct OriginalStderr(Arc<std::fs::File>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for OriginalStderr {
    type Writer = &'a std::fs::File;

    fn make_writer(&'a self) -> Self::Writer {
        &self.0
    }
}

/// An agent's log forwarding: made at start-up, given the router once there is one.
pub(crate) struct AgentLogs {
    queue: Arc<Queue>,
    level: ForwardFilter,
}

impl AgentLogs {
    /// Capture stderr (see [`crate::fdio::capture_stderr`]) and install the agent's subscriber:
    /// forwarding at [`DEFAULT_FORWARD_LEVEL`] until [`AgentLogs::set_level`], and with
    /// `HYPHA_LOG` set, lines at that level on the stderr the agent was started with. Records
    /// queue until [`AgentLogs::forward`].
    pub(crate) fn install() -> AgentLogs {
        let logs = AgentLogs {
            queue: Arc::new(Queue::new()),
            level: ForwardFilter(Arc::new(AtomicU8::new(filter_code(DEFAULT_FORWARD_LEVEL)))),
        };
        let original = match crate::fdio::capture_stderr() {
            Ok((pipe, original)) => {
                let (queue, level) = (logs.queue.clone(), logs.level.clone());
                let reader = std::thread::Builder::new().name("hypha-stderr".into());
                // Without the thread, stderr goes into a pipe nobody reads: put it back.
                if reader.spawn(move || read_stderr(pipe, queue, level)).is_err() {
                    crate::fdio::restore_stderr();
                }
                Some(std::fs::File::from(original))
            }
            Err(_) => None,
        };
        let own = std::env::var(crate::LOG_ENV).ok().map(|level| {
            let level: Level = level.parse().unwrap_or(Level::INFO);
            let writer = match original {
                Some(file) => BoxMakeWriter::new(OriginalStderr(Arc::new(file))),
                // Not captured: stderr is still the original.
                None => BoxMakeWriter::new(std::io::stderr),
            };
            tracing_subscriber::fmt::layer().with_writer(writer).with_filter(LevelFilter::from_level(level))
        });
        let forward = Forward { queue: logs.queue.clone() }.with_filter(logs.level.clone());
        let subscriber = tracing_subscriber::registry().with(own).with(forward);
        let _ = tracing::subscriber::set_global_default(subscriber);
        logs
    }

    /// Forward at `level` from now on (what the Init said); `off` forgets what waits.
    pub(crate) fn set_level(&self, level: LevelFilter) {
        self.level.0.store(filter_code(level), Ordering::Relaxed);
        if level == LevelFilter::OFF {
            self.queue.turn_off();
        }
        tracing::callsite::rebuild_interest_cache();
    }

    /// Send the records to the controller, from now on, in a task on this runtime.
    pub(crate) fn forward(&self, router: Router) {
        let queue = self.queue.clone();
        tokio::spawn(Quietly(Box::pin(async move {
            loop {
                if !send_batch(&router, &queue).await {
                    queue.ready.notified().await;
                }
            }
        })));
    }

    /// Send what waits now, for at most `patience` (before a shutdown closes the link).
    pub(crate) async fn flush(&self, router: &Router, patience: Duration) {
        let (queue, router) = (self.queue.clone(), router.clone());
        let flush = Quietly(Box::pin(async move { while send_batch(&router, &queue).await {} }));
        let _ = tokio::time::timeout(patience, flush).await;
    }
}

/// Send one batch of what waits to the controller; false if nothing waited.
async fn send_batch(router: &Router, queue: &Queue) -> bool {
    let batch = queue.take(BATCH_RECORDS, BATCH_BYTES.min(router.config().max_frame / 2));
    if batch.is_empty() {
        return false;
    }
    let root = router.config().ancestors.last().copied().unwrap_or(0);
    // Lost with the link if it fails: there is nowhere else to send it.
    let _ = router.send(root, &Batch { records: batch }).await;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        let mut l = Lines::default();
        for c in chunks {
            l.feed(c, &mut |t| out.push(t));
        }
        l.finish(&mut |t| out.push(t));
        out
    }

    #[test]
    fn lines_split_however_the_reads_fall_and_the_last_comes_at_the_end() {
        assert_eq!(lines(&[b"one\ntw", b"o\r\n", b"\nthree"]), ["one", "two", "", "three"]);
        assert_eq!(lines(&[b"a\n"]), ["a"]);
        assert!(lines(&[]).is_empty());
    }

    #[test]
    fn a_long_line_is_cut_and_the_rest_skipped() {
        let long = vec![b'x'; MAX_LINE * 3];
        let got = lines(&[&long[..MAX_LINE + 5], &long[..100], b"\nnext\n"]);
        assert_eq!(got.len(), 2, "{:?}", got.iter().map(String::len).collect::<Vec<_>>());
        assert_eq!(got[0], format!("{}{CUT}", "x".repeat(MAX_LINE)));
        assert_eq!(got[1], "next");
        let exact = vec![b'y'; MAX_LINE];
        assert_eq!(lines(&[&exact, b"\n"]), [String::from_utf8(exact.clone()).unwrap()]);
    }

    fn record(text: &str) -> Record {
        Record { level: 3, source: Source::Stderr, text: text.into() }
    }

    #[test]
    fn a_full_queue_drops_counts_and_says_so_in_order() {
        let q = Queue::new();
        for i in 0..QUEUE_RECORDS + 10 {
            q.push(record(&i.to_string()));
        }
        let first = q.take(usize::MAX, usize::MAX);
        assert_eq!(first.len(), QUEUE_RECORDS);
        q.push(record("after"));
        let next = q.take(usize::MAX, usize::MAX);
        assert_eq!(next.len(), 2);
        assert_eq!(next[0].text, "10 log records dropped: the queue was full");
        assert_eq!(next[1].text, "after");
        q.push(record("again"));
        assert_eq!(q.take(10, 10).len(), 1, "a batch holds one record at least");
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let q = Queue::new();
        let big = "z".repeat(MAX_TEXT);
        for _ in 0..QUEUE_RECORDS {
            q.push(record(&big));
        }
        let kept = q.take(usize::MAX, usize::MAX);
        assert!(kept.iter().map(cost).sum::<usize>() <= QUEUE_BYTES);
        assert!(kept.len() < QUEUE_RECORDS);
    }

    #[test]
    fn a_turned_off_queue_keeps_nothing() {
        let q = Queue::new();
        q.push(record("a"));
        q.turn_off();
        q.push(record("b"));
        assert!(q.take(usize::MAX, usize::MAX).is_empty());
    }

    #[test]
    fn sanitize_cuts_and_escapes_control_characters() {
        assert_eq!(sanitize("a\nb\u{1b}[31mc\td", 100), "a\\nb\\u{1b}[31mc\td");
        assert_eq!(sanitize("héllo", 2), format!("h{CUT}"));
    }

    #[test]
    fn bounded_cuts_on_a_character_boundary() {
        let mut b = Bounded::new(3);
        b.write("ééé");
        assert_eq!(b.out, format!("é{CUT}"));
    }

    #[test]
    fn level_codes_round_trip() {
        for f in [LevelFilter::OFF, LevelFilter::ERROR, LevelFilter::WARN, LevelFilter::INFO, LevelFilter::DEBUG] {
            assert_eq!(filter_from_code(filter_code(f)), f);
        }
        assert_eq!(filter_from_code(200), LevelFilter::TRACE);
    }
}

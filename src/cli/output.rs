//! How answers are printed: lines prefixed by host as they come (as `clush`), gathered under
//! folded host lists (as `clubak -b`), JSON objects, or a format of tentakel's; optionally also
//! into one file per host (as `pssh -o`). Errors go to the summary on stderr; on a terminal, a
//! progress line on stderr counts the hosts done, failed and in flight.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hypha::nodeset::{fold, natural_cmp};
use hypha::process::{Exit, Line, Stream, MAX_OUTPUT};

use super::crew::{file_name, Trouble};
use super::targets::Usage;

/// One host's answer to a command, with the output kept for it.
#[derive(Debug)]
pub(crate) struct Reply<'a> {
    pub(crate) host: &'a str,
    pub(crate) result: Result<Exit, &'a Trouble>,
    pub(crate) stdout: &'a [String],
    pub(crate) stderr: &'a [String],
    /// From the command's start to its answer.
    pub(crate) took: Duration,
}

/// Standard output and error that go quiet once closed (`| head`): whoever reads has seen enough,
/// and the exit status still tells how the hosts did. On a terminal, it keeps a progress line at
/// the bottom of stderr, cleared before anything else is printed.
#[derive(Debug, Default)]
pub(crate) struct Out {
    closed: bool,
    progress: Option<Progress>,
}

/// The hosts of a round so far, for the progress line.
#[derive(Debug)]
struct Progress {
    total: usize,
    ok: usize,
    failed: usize,
    unreachable: usize,
    /// The line is on the screen.
    shown: bool,
    drawn: Option<Instant>,
}

/// How often the progress line is drawn, at most.
const REDRAW: Duration = Duration::from_millis(100);

impl Out {
    pub(crate) fn line(&mut self, text: &str) {
        self.clear();
        if !self.closed && writeln!(std::io::stdout().lock(), "{text}").is_err() {
            self.closed = true;
        }
    }

    pub(crate) fn err(&mut self, text: &str) {
        self.clear();
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }

    /// Count `total` hosts on a progress line, if stderr is a terminal.
    pub(crate) fn progress(&mut self, total: usize) {
        self.clear();
        self.progress = std::io::stderr().is_terminal().then_some(Progress {
            total,
            ok: 0,
            failed: 0,
            unreachable: 0,
            shown: false,
            drawn: None,
        });
    }

    /// One more host answered: `Ok(true)` well, `Ok(false)` failed, `Err(())` unreachable.
    pub(crate) fn count(&mut self, how: Result<bool, ()>) {
        if let Some(p) = &mut self.progress {
            match how {
                Ok(true) => p.ok += 1,
                Ok(false) => p.failed += 1,
                Err(()) => p.unreachable += 1,
            }
        }
        self.tick();
    }

    /// Draw the progress line, unless it was drawn a moment ago.
    pub(crate) fn tick(&mut self) {
        let Some(p) = &mut self.progress else { return };
        if p.shown && p.drawn.is_some_and(|t| t.elapsed() < REDRAW) {
            return;
        }
        let answered = p.ok + p.failed + p.unreachable;
        let text = format!(
            "\r\x1b[Khypha: {answered}/{} answered: {} ok, {} failed, {} unreachable, {} in flight",
            p.total,
            p.ok,
            p.failed,
            p.unreachable,
            p.total.saturating_sub(answered)
        );
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
        p.shown = true;
        p.drawn = Some(Instant::now());
    }

    /// Take the progress line off the screen (it comes back on the next tick).
    pub(crate) fn clear(&mut self) {
        if let Some(p) = self.progress.as_mut().filter(|p| p.shown) {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(b"\r\x1b[K").and_then(|()| err.flush());
            p.shown = false;
        }
    }

    /// Clear the progress line for good.
    pub(crate) fn done(&mut self) {
        self.clear();
        self.progress = None;
    }
}

/// A piece of a `--format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Text(String),
    Host,
    Output,
    Status,
    Took,
}

/// How answers are printed.
#[derive(Debug)]
pub(crate) enum Style {
    /// `host: line`, stdout to stdout and stderr to stderr, as each host answers.
    Lines,
    /// Hosts of identical output under one header, once all have answered; `stderr` gathers it
    /// too, otherwise it is printed as with [`Style::Lines`].
    Gather { stderr: bool },
    /// One JSON object per host.
    Json,
    /// tentakel's format, once per host.
    Format(Vec<Piece>),
}

impl Style {
    /// The pieces of a tentakel format: `%d`, `%o`, `%s`, `%t`, `%%`, and `\n`, `\t`, `\\`.
    pub(crate) fn format(text: &str) -> Result<Style, Usage> {
        let mut pieces = Vec::new();
        let mut text_so_far = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            let piece = match (c, chars.clone().next()) {
                ('%', Some(n)) => {
                    chars.next();
                    match n {
                        'd' => Piece::Host,
                        'o' => Piece::Output,
                        's' => Piece::Status,
                        't' => Piece::Took,
                        '%' => {
                            text_so_far.push('%');
                            continue;
                        }
                        other => return Err(Usage(format!("--format: %{other} is not %d, %o, %s, %t or %%"))),
                    }
                }
                ('%', None) => return Err(Usage("--format: a lone % at the end (%% is a %)".into())),
                ('\\', Some(n @ ('n' | 't' | '\\'))) => {
                    chars.next();
                    text_so_far.push(match n {
                        'n' => '\n',
                        't' => '\t',
                        _ => '\\',
                    });
                    continue;
                }
                (c, _) => {
                    text_so_far.push(c);
                    continue;
                }
            };
            if !text_so_far.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text_so_far)));
            }
            pieces.push(piece);
        }
        if !text_so_far.is_empty() {
            pieces.push(Piece::Text(text_so_far));
        }
        Ok(Style::Format(pieces))
    }
}

/// Prints commands' lines and answers in a [`Style`].
#[derive(Debug)]
pub(crate) struct Printer {
    style: Style,
    pub(crate) out: Out,
    /// Where each host's stdout and stderr are also written, if anywhere.
    outdir: Option<PathBuf>,
    errdir: Option<PathBuf>,
    /// The output of hosts that have not answered yet, when the style or a directory needs it.
    kept: HashMap<String, Kept>,
    /// For [`Style::Gather`]: hosts by the output they share.
    groups: BTreeMap<Vec<String>, Vec<String>>,
}

/// One host's output so far.
#[derive(Debug, Default)]
struct Kept {
    stdout: Vec<String>,
    stderr: Vec<String>,
    bytes: usize,
    /// Lines past [`MAX_OUTPUT`] were not kept.
    cut: bool,
}

impl Printer {
    pub(crate) fn new(style: Style, outdir: Option<PathBuf>, errdir: Option<PathBuf>) -> Printer {
        Printer { style, out: Out::default(), outdir, errdir, kept: HashMap::new(), groups: BTreeMap::new() }
    }

    /// Whether lines are kept until their host answers (rather than printed as they come).
    fn keeps(&self) -> bool {
        !matches!(self.style, Style::Lines) || self.outdir.is_some() || self.errdir.is_some()
    }

    /// A line `host`'s command printed: printed now (prefixed by its host), or kept.
    pub(crate) fn line(&mut self, host: &str, line: Line) {
        if let Style::Lines = self.style {
            match line.stream {
                Stream::Stdout => self.out.line(&format!("{host}: {}", line.text)),
                Stream::Stderr => self.out.err(&format!("{host}: {}", line.text)),
            }
        } else if let (Style::Gather { stderr: false } | Style::Format(_), Stream::Stderr) = (&self.style, line.stream)
        {
            self.out.err(&format!("{host}: {}", line.text));
        }
        if !self.keeps() {
            return;
        }
        let kept = self.kept.entry(host.to_owned()).or_default();
        if kept.cut || kept.bytes + line.text.len() > MAX_OUTPUT {
            kept.cut = true;
            return;
        }
        kept.bytes += line.text.len() + 1;
        match line.stream {
            Stream::Stdout => kept.stdout.push(line.text),
            Stream::Stderr => kept.stderr.push(line.text),
        }
    }

    /// `host`'s answer: printed (or kept, to gather), and written to its files. Returns why the
    /// host counts as failed here, if it does (its output could not be written or kept whole).
    pub(crate) fn answer(&mut self, host: &str, result: Result<Exit, &Trouble>, took: Duration) -> Option<String> {
        let kept = self.kept.remove(host).unwrap_or_default();
        let reply = Reply { host, result, stdout: &kept.stdout, stderr: &kept.stderr, took };
        let mut trouble = None;
        if result.is_ok() {
            for (dir, lines) in [(&self.outdir, &kept.stdout), (&self.errdir, &kept.stderr)] {
                if let Some(dir) = dir {
                    if let Err(why) = write_lines(dir, host, lines) {
                        trouble = Some(why);
                    }
                }
            }
            if kept.cut {
                trouble = Some(format!("printed more than {} MiB: the rest was not kept", MAX_OUTPUT >> 20));
            }
        }
        self.print(&reply);
        trouble
    }

    fn print(&mut self, reply: &Reply<'_>) {
        let Printer { style, out, groups, .. } = self;
        if let Style::Json = style {
            return out.line(&json(reply).to_string());
        }
        // The other styles print commands' output; why a host has none is the summary's.
        let Ok(exit) = reply.result else { return };
        let host = reply.host;
        match style {
            Style::Lines | Style::Json => {}
            Style::Gather { stderr } => {
                let mut key = reply.stdout.to_vec();
                if *stderr {
                    key.extend(reply.stderr.iter().cloned());
                }
                if !key.is_empty() {
                    groups.entry(key).or_default().push(host.to_owned());
                }
            }
            Style::Format(pieces) => {
                let mut text = String::new();
                for piece in pieces.iter() {
                    match piece {
                        Piece::Text(t) => text.push_str(t),
                        Piece::Host => text.push_str(host),
                        Piece::Output => text.push_str(&reply.stdout.join("\n")),
                        Piece::Status => text.push_str(&status(exit).to_string()),
                        Piece::Took => text.push_str(&format!("{:.2}", reply.took.as_secs_f64())),
                    }
                }
                out.line(text.strip_suffix('\n').unwrap_or(&text));
            }
        }
    }

    /// Print what was kept: for [`Style::Gather`], each group under its folded host list, in the
    /// natural order of the groups' first hosts.
    pub(crate) fn finish(&mut self) {
        let mut groups: Vec<(String, Vec<String>)> =
            std::mem::take(&mut self.groups).into_iter().map(|(lines, hosts)| (fold(&hosts), lines)).collect();
        groups.sort_by(|a, b| natural_cmp(&a.0, &b.0));
        for (hosts, lines) in groups {
            self.out.line(&format!("---------------\n{hosts}\n---------------"));
            for line in lines {
                self.out.line(&line);
            }
        }
    }
}

/// Write `lines` to `dir/host` (made if missing), replacing what was there; a link there is
/// refused, not followed.
fn write_lines(dir: &Path, host: &str, lines: &[String]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(file_name(host)?);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        let mut w = std::io::BufWriter::new(file);
        for line in lines {
            writeln!(w, "{line}")?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_data()
    };
    write().map_err(|e| format!("writing {}: {e}", path.display()))
}

/// An exit as a shell tells it: the code, or 128 and the signal.
pub(crate) fn status(exit: Exit) -> i32 {
    match exit {
        Exit::Code(code) => code,
        Exit::Signal(signal) => 128 + signal,
        _ => 255,
    }
}

fn json(reply: &Reply<'_>) -> serde_json::Value {
    let (error, unreachable) = match reply.result {
        Ok(_) => (None, false),
        Err(Trouble::Failed(why)) => (Some(why), false),
        Err(Trouble::Unreachable(why)) => (Some(why), true),
    };
    let (exit, signal) = match reply.result {
        Ok(Exit::Code(code)) => (Some(code), None),
        Ok(Exit::Signal(signal)) => (None, Some(signal)),
        _ => (None, None),
    };
    serde_json::json!({
        "host": reply.host,
        "exit": exit,
        "signal": signal,
        "stdout": reply.stdout,
        "stderr": reply.stderr,
        "error": error,
        "unreachable": unreachable,
        "seconds": reply.took.as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let Ok(Style::Format(pieces)) = Style::format("%d: %s%%\\t%o\\n") else { panic!("a format") };
        assert_eq!(
            pieces,
            [
                Piece::Host,
                Piece::Text(": ".into()),
                Piece::Status,
                Piece::Text("%\t".into()),
                Piece::Output,
                Piece::Text("\n".into())
            ]
        );
        assert!(Style::format("%x").is_err());
        assert!(Style::format("50%").is_err());
    }
}

//! How answers are printed: lines prefixed by host (as `clush`), gathered under folded host lists
//! (as `clubak -b`), JSON objects, or a format of tentakel's. Errors go to the summary on stderr.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use hypha::nodeset::{fold, natural_cmp};
use hypha::process::Exit;
use hypha::process::Output;

use super::targets::Usage;

/// One host's answer to a command.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) host: String,
    pub(crate) result: Result<Output, Trouble>,
    /// From the command's start to its answer.
    pub(crate) took: Duration,
}

/// Why a host has no output.
#[derive(Debug, Clone)]
pub(crate) enum Trouble {
    /// It was reached, and the call failed there (a command timeout, a program not found, ...).
    Failed(String),
    /// It could not be reached, or was lost.
    Unreachable(String),
}

/// Standard output and error that go quiet once closed (`| head`): whoever reads has seen enough,
/// and the exit status still tells how the hosts did.
#[derive(Debug, Default)]
pub(crate) struct Out {
    closed: bool,
}

impl Out {
    pub(crate) fn line(&mut self, text: &str) {
        if !self.closed && writeln!(std::io::stdout().lock(), "{text}").is_err() {
            self.closed = true;
        }
    }

    pub(crate) fn err(&mut self, text: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
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

/// Prints answers in a [`Style`].
#[derive(Debug)]
pub(crate) struct Printer {
    style: Style,
    out: Out,
    /// For [`Style::Gather`]: hosts by the output they share.
    groups: BTreeMap<Vec<String>, Vec<String>>,
}

impl Printer {
    pub(crate) fn new(style: Style) -> Printer {
        Printer { style, out: Out::default(), groups: BTreeMap::new() }
    }

    /// Print (or keep, to gather) one host's answer.
    pub(crate) fn answer(&mut self, reply: &Reply) {
        let Printer { style, out, groups } = self;
        if let Style::Json = style {
            return out.line(&json(reply).to_string());
        }
        // The other styles print commands' output; why a host has none is the summary's.
        let Ok(output) = &reply.result else { return };
        let host = &reply.host;
        match style {
            Style::Lines => {
                for line in &output.stdout {
                    out.line(&format!("{host}: {line}"));
                }
                stderr_lines(out, host, output);
            }
            Style::Gather { stderr } => {
                let mut key = output.stdout.clone();
                if *stderr {
                    key.extend(output.stderr.iter().cloned());
                } else {
                    stderr_lines(out, host, output);
                }
                if !key.is_empty() {
                    groups.entry(key).or_default().push(host.clone());
                }
            }
            Style::Format(pieces) => {
                let mut text = String::new();
                for piece in pieces.iter() {
                    match piece {
                        Piece::Text(t) => text.push_str(t),
                        Piece::Host => text.push_str(host),
                        Piece::Output => text.push_str(&output.stdout.join("\n")),
                        Piece::Status => text.push_str(&status(output.exit).to_string()),
                        Piece::Took => text.push_str(&format!("{:.2}", reply.took.as_secs_f64())),
                    }
                }
                out.line(text.strip_suffix('\n').unwrap_or(&text));
                stderr_lines(out, host, output);
            }
            Style::Json => {}
        }
    }

    /// Print what was kept: for [`Style::Gather`], each group under its folded host list, in the
    /// natural order of the groups' first hosts.
    pub(crate) fn finish(&mut self) {
        let mut groups: Vec<(String, &Vec<String>)> =
            self.groups.iter().map(|(lines, hosts)| (fold(hosts), lines)).collect();
        groups.sort_by(|a, b| natural_cmp(&a.0, &b.0));
        for (hosts, lines) in groups {
            self.out.line(&format!("---------------\n{hosts}\n---------------"));
            for line in lines {
                self.out.line(line);
            }
        }
    }
}

fn stderr_lines(out: &mut Out, host: &str, output: &Output) {
    for line in &output.stderr {
        out.err(&format!("{host}: {line}"));
    }
}

/// An exit as a shell tells it: the code, or 128 and the signal.
pub(crate) fn status(exit: Exit) -> i32 {
    match exit {
        Exit::Code(code) => code,
        Exit::Signal(signal) => 128 + signal,
        _ => 255,
    }
}

fn json(reply: &Reply) -> serde_json::Value {
    let (output, error, unreachable) = match &reply.result {
        Ok(output) => (Some(output), None, false),
        Err(Trouble::Failed(why)) => (None, Some(why), false),
        Err(Trouble::Unreachable(why)) => (None, Some(why), true),
    };
    let (exit, signal) = match output.map(|o| o.exit) {
        Some(Exit::Code(code)) => (Some(code), None),
        Some(Exit::Signal(signal)) => (None, Some(signal)),
        _ => (None, None),
    };
    let empty = Vec::new();
    serde_json::json!({
        "host": reply.host,
        "exit": exit,
        "signal": signal,
        "stdout": output.map_or(&empty, |o| &o.stdout),
        "stderr": output.map_or(&empty, |o| &o.stderr),
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

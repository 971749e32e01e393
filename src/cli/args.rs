//! The command line, as clap reads it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Run commands on many hosts at once, through agents that are copies of this binary.
///
/// Exit status: 0 when every host did well, 1 when some command exited non-zero (or its call or
/// transfer failed, as on a command timeout), 2 when some host could not be reached, 3 when both,
/// 64 for a usage error, 130 when interrupted.
#[derive(Debug, Parser)]
#[command(name = "hypha", version, about, max_term_width = 100)]
pub(crate) struct Cli {
    /// Read host groups from FILE (default: ~/.config/hypha/hypha.toml, then
    /// /etc/hypha/hypha.toml).
    #[arg(short = 'c', long, value_name = "FILE", global = true)]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
    /// Run a command on every target.
    Exec(Exec),
    /// Start an agent on every target and time a call to it.
    Ping(Ping),
    /// Copy files or trees to every target (as `scp -r`: into DEST if it is a directory there).
    Copy(Copy),
    /// Fetch a file or a tree from every target into DESTDIR/HOST/.
    Fetch(Fetch),
    /// Read commands, one a line, and run each on every target, on contexts that stay up between
    /// lines (as `clush` without a command). Exit status: the last line's.
    Shell(Shell),
    /// Serve the contexts of `--persist` (started by hypha itself).
    #[command(hide = true, name = "__persist")]
    Persist(PersistServe),
}

/// How each host's output is printed: shared by `exec` and `shell`.
#[derive(Debug, Args)]
pub(crate) struct Print {
    /// Gather hosts with identical stdout under one folded host list (as `clubak -b`).
    #[arg(short = 'b', conflicts_with_all = ["json", "format"])]
    pub(crate) gather: bool,
    /// As `-b`, with stderr gathered too.
    #[arg(short = 'B', conflicts_with_all = ["gather", "json", "format"])]
    pub(crate) gather_all: bool,
    /// One JSON object per host and line: host, exit, signal, stdout, stderr, error, unreachable,
    /// seconds.
    #[arg(long, conflicts_with = "format")]
    pub(crate) json: bool,
    /// Print each host's answer as FMT says (tentakel's): %d the host, %o its stdout, %s its exit
    /// status, %t the seconds it took, %% a %; \n and \t as escapes.
    #[arg(long, value_name = "FMT")]
    pub(crate) format: Option<String>,
    /// Also write each host's stdout to DIR/HOST (as `pssh -o`).
    #[arg(short = 'o', long = "outdir", value_name = "DIR")]
    pub(crate) outdir: Option<PathBuf>,
    /// Also write each host's stderr to DIR/HOST (as `pssh -e`).
    #[arg(short = 'e', long = "errdir", value_name = "DIR")]
    pub(crate) errdir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct Exec {
    #[command(flatten)]
    pub(crate) reach: Reach,
    #[command(flatten)]
    pub(crate) print: Print,
    /// Run the command words, joined by spaces, as a script of `sh -c`.
    #[arg(long)]
    pub(crate) shell: bool,
    /// The targets, in nodeset syntax: `web[01-20],db1`, `admin@web[1-3]:2222`, `@group`,
    /// `local[1-4]`.
    pub(crate) targets: String,
    /// The command and its arguments (after `--` if an argument starts with `-`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub(crate) command: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct Ping {
    #[command(flatten)]
    pub(crate) reach: Reach,
    /// One JSON object per host and line: host, pid, user, arch, protocol, agent, uploaded,
    /// start_seconds (null when it was up already), seconds (the call), error.
    #[arg(long)]
    pub(crate) json: bool,
    /// The targets, in nodeset syntax.
    pub(crate) targets: String,
}

#[derive(Debug, Args)]
pub(crate) struct Copy {
    #[command(flatten)]
    pub(crate) reach: Reach,
    /// Keep modification times too (mode is always kept).
    #[arg(short = 'p', long)]
    pub(crate) preserve: bool,
    /// One JSON object per host and line: host, files, dirs, links, bytes, seconds, error.
    #[arg(long)]
    pub(crate) json: bool,
    /// The targets, in nodeset syntax.
    pub(crate) targets: String,
    /// The files or trees here, then where they go on each target.
    #[arg(required = true, num_args = 2.., value_name = "SRC... DEST")]
    pub(crate) paths: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct Fetch {
    #[command(flatten)]
    pub(crate) reach: Reach,
    /// Keep modification times too (mode is always kept).
    #[arg(short = 'p', long)]
    pub(crate) preserve: bool,
    /// One JSON object per host and line: host, files, dirs, links, bytes, seconds, error.
    #[arg(long)]
    pub(crate) json: bool,
    /// The targets, in nodeset syntax.
    pub(crate) targets: String,
    /// The file or tree on each target.
    pub(crate) source: String,
    /// Where each host's copy goes: DESTDIR/HOST/NAME.
    pub(crate) destdir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct Shell {
    #[command(flatten)]
    pub(crate) reach: Reach,
    #[command(flatten)]
    pub(crate) print: Print,
    /// The targets, in nodeset syntax.
    pub(crate) targets: String,
}

#[derive(Debug, Args)]
pub(crate) struct PersistServe {
    /// The socket to serve on.
    pub(crate) socket: PathBuf,
}

/// How to reach the targets: shared by every subcommand.
#[derive(Clone, Debug, Args)]
pub(crate) struct Reach {
    /// Start at most N hosts at once [default: the groups' `fanout`, else 64].
    #[arg(short = 'f', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) fanout: Option<u32>,
    /// Log in as USER where the target names no user.
    #[arg(short = 'l', value_name = "USER")]
    pub(crate) user: Option<String>,
    /// Offer this private key file.
    #[arg(short = 'i', long, value_name = "FILE")]
    pub(crate) identity: Option<PathBuf>,
    /// Offer the password in this environment variable (method ssh only).
    #[arg(long, value_name = "VAR")]
    pub(crate) password_env: Option<String>,
    /// Check host keys against this known_hosts file.
    #[arg(long, value_name = "FILE")]
    pub(crate) known_hosts: Option<PathBuf>,
    /// Record the keys of hosts not yet known (a changed key is still refused).
    #[arg(long, conflicts_with = "ignore_host_key")]
    pub(crate) accept_new: bool,
    /// Accept any host key.
    #[arg(long)]
    pub(crate) ignore_host_key: bool,
    /// Give each host this many seconds to start.
    #[arg(short = 't', long, value_name = "SECS", value_parser = seconds)]
    pub(crate) connect_timeout: Option<Duration>,
    /// Give each command this many seconds to finish.
    #[arg(short = 'u', long, value_name = "SECS", value_parser = seconds)]
    pub(crate) command_timeout: Option<Duration>,
    /// Reach the hosts through these SSH servers, which run no agent (repeatable, or
    /// comma-separated; `[user@]host[:port]`).
    #[arg(short = 'J', long, value_name = "JUMP", value_delimiter = ',')]
    pub(crate) jump: Vec<String>,
    /// Start the hosts' agents from these gateways' agents (ClusterShell's tree mode): each
    /// gateway connects to its share of the hosts and serves them the agent (repeatable, or
    /// comma-separated targets).
    #[arg(long, value_name = "GATEWAY", value_delimiter = ',')]
    pub(crate) via: Vec<String>,
    /// When a gateway is lost, start its hosts again through the gateways left (without: they
    /// fail, naming it).
    #[arg(long)]
    pub(crate) reroute: bool,
    /// On each host, become USER with sudo (root without `=USER`).
    #[arg(long, value_name = "USER", num_args = 0..=1, require_equals = true, default_missing_value = "root")]
    pub(crate) sudo: Option<String>,
    /// How to reach hosts not named local: `ssh` (in process), `openssh` (the system's `ssh`), or
    /// `local` (every target a local context).
    #[arg(long, value_enum)]
    pub(crate) method: Option<MethodKind>,
    /// Serve hosts of architecture ARCH (`uname -m`: aarch64, armv7l, ...) this build of hypha
    /// (repeatable).
    #[arg(long, value_name = "ARCH=PATH", value_parser = agent)]
    pub(crate) agent: Vec<(String, PathBuf)>,
    /// Keep the contexts up for DURATION after this run (`30s`, `10m`, `1h`), in a background
    /// process of this user's, so the next run on the same hosts with the same options skips the
    /// handshakes (as ssh's ControlPersist). `0` stops that process's contexts now.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub(crate) persist: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum MethodKind {
    Ssh,
    Openssh,
    Local,
}

/// A positive number of seconds, fractions allowed.
fn seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err("a timeout is more than 0 seconds".into());
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// A duration: seconds, or a number with `s`, `m`, `h` or `d`; `0` is allowed.
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => return Err(format!("{other:?} is not a unit of time (s, m, h, d)")),
    };
    let n: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration (30s, 10m, 1h)"))?;
    if n.is_nan() || n < 0.0 {
        return Err("a duration is 0 or more".into());
    }
    Duration::try_from_secs_f64(n * scale).map_err(|e| e.to_string())
}

/// `ARCH=PATH`.
fn agent(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((arch, path)) if !arch.is_empty() && !path.is_empty() => Ok((arch.to_owned(), PathBuf::from(path))),
        _ => Err(format!("{text:?} is not ARCH=PATH (aarch64=target/aarch64-unknown-linux-musl/release/hypha)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert!(duration("10x").is_err());
        assert!(duration("-1s").is_err());
        assert!(duration("m").is_err());
    }

    #[test]
    fn agents() {
        assert_eq!(agent("aarch64=/a/b"), Ok(("aarch64".into(), PathBuf::from("/a/b"))));
        assert!(agent("aarch64").is_err());
        assert!(agent("=x").is_err());
    }
}

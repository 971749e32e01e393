//! The command line, as clap reads it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Run commands on many hosts at once, through agents that are copies of this binary.
#[derive(Debug, Parser)]
#[command(name = "hypha", version, about, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
    /// Run a command on every target.
    ///
    /// Exit status: 0 when every command exited 0, 1 when some command did not (or its call
    /// failed, as on a command timeout), 2 when some host could not be reached, 3 when both, 64 for
    /// a usage error, 130 when interrupted.
    Exec(Exec),
    /// Start an agent on every target and time a call to it.
    ///
    /// Exit status: 0 when every host answered, 2 when some host could not be reached, 1 when some
    /// call failed, 3 when both, 64 for a usage error, 130 when interrupted.
    Ping(Ping),
}

#[derive(Debug, Args)]
pub(crate) struct Exec {
    #[command(flatten)]
    pub(crate) reach: Reach,
    /// Run the command words, joined by spaces, as a script of `sh -c`.
    #[arg(long)]
    pub(crate) shell: bool,
    /// Gather hosts with identical stdout under one folded host list (as `clubak -b`).
    #[arg(short = 'b', conflicts_with_all = ["json", "format"])]
    pub(crate) gather: bool,
    /// As `-b`, with stderr gathered too.
    #[arg(short = 'B', conflicts_with_all = ["gather", "json", "format"])]
    pub(crate) gather_all: bool,
    /// One JSON object per host and line: host, exit, signal, stdout, stderr, error, unreachable.
    #[arg(long, conflicts_with = "format")]
    pub(crate) json: bool,
    /// Print each host's answer as FMT says (tentakel's): %d the host, %o its stdout, %s its exit
    /// status, %t the seconds it took, %% a %; \n and \t as escapes.
    #[arg(long, value_name = "FMT")]
    pub(crate) format: Option<String>,
    /// The targets, in nodeset syntax: `web[01-20],db1`, `admin@web[1-3]:2222`, `local[1-4]`.
    pub(crate) targets: String,
    /// The command and its arguments (after `--` if an argument starts with `-`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub(crate) command: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct Ping {
    #[command(flatten)]
    pub(crate) reach: Reach,
    /// One JSON object per host and line: host, pid, user, protocol, agent, uploaded, seconds, error.
    #[arg(long)]
    pub(crate) json: bool,
    /// The targets, in nodeset syntax.
    pub(crate) targets: String,
}

/// How to reach the targets: shared by every subcommand.
#[derive(Debug, Args)]
pub(crate) struct Reach {
    /// Start at most N hosts at once.
    #[arg(short = 'f', long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) fanout: u32,
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
    /// On each host, become USER with sudo (root without `=USER`).
    #[arg(long, value_name = "USER", num_args = 0..=1, require_equals = true, default_missing_value = "root")]
    pub(crate) sudo: Option<String>,
    /// How to reach hosts not named local: `ssh` (in process), `openssh` (the system's `ssh`), or
    /// `local` (every target a local context).
    #[arg(long, value_enum, default_value_t = MethodKind::Ssh)]
    pub(crate) method: MethodKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
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

//! Host groups from a TOML file, as tentakel's groups, named in targets as ClusterShell's `@group`.
//!
//! The file is `-c FILE`, else the first of `$XDG_CONFIG_HOME/hypha/hypha.toml` (by default
//! `~/.config/hypha/hypha.toml`) and `/etc/hypha/hypha.toml` that exists; with none, there are no
//! groups. It names groups of hosts and of other groups, each with parameters for its hosts:
//!
//! ```toml
//! [defaults]            # parameters for every host, in a group or not
//! user = "ops"
//! fanout = 32
//!
//! [groups.web]
//! hosts = "web[01-20],admin@web21:2222"   # nodeset syntax: a string, or a list of strings
//! user = "deploy"
//! sudo = "root"
//!
//! [groups.all]
//! groups = ["web", "db"]                  # the hosts of other groups
//! hosts = ["extra1", "@legacy!old3"]      # `@name` works here too
//! via = "gw1"
//! ```
//!
//! A group's hosts are those of its `hosts` and those of its `groups`. The parameters, each
//! optional: `user`, `port`, `method` (`ssh`, `openssh` or `local`, as `--method`), `identity`
//! (a key file; a leading `~/` is the home directory), `via` and `jump` (as `--via` and `-J`:
//! comma-separated or a list, each one host), `sudo` (the user to become), `fanout` and `format`
//! (as `--format`). [`Config::params`] says which group's value a host gets.
//!
//! # A file is trusted, so it is checked
//!
//! What the file says runs as its reader on every host it names. As ssh does for `~/.ssh/config`,
//! [`Config::load`] refuses a file that another user could have written: one owned by neither
//! this user nor root, or writable by its group or others. Whoever wrote it, the work it can cause
//! is bounded: at most [`MAX_FILE`] bytes and [`MAX_GROUPS`] groups, and all the groups expanded
//! together stay within the nodeset's default [`Limits`] (a million targets, nesting 16 deep).
//! Names, users and gateways are checked as the nodeset checks targets (none starts with `-`, so
//! none passes for an option of `ssh` or `sudo`), and the text of the file reaches error messages
//! only with its control characters escaped.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Read as _;
use std::num::{NonZeroU16, NonZeroU32};
use std::ops::Range;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use hypha::nodeset::{Groups, Limits, Members, NodeSet, NodeSetError, Target};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::args::MethodKind;
use super::targets::Usage;

/// The largest file read, in bytes.
pub(crate) const MAX_FILE: u64 = 1 << 20;
/// The most groups a file may define (the precedence of groups keeps a bit per pair).
pub(crate) const MAX_GROUPS: usize = 4096;
/// The system-wide file, read when the user has none.
const SYSTEM_FILE: &str = "/etc/hypha/hypha.toml";

/// Parameters a group (or the file's `[defaults]`) gives its hosts; every field optional.
///
/// For one host ([`Config::params`]), each field comes from the first of:
///
/// 1. the command line (applied by the caller: these are what the config says, under it);
/// 2. the innermost group holding the host that sets the field: a group that lists the host
///    itself beats the groups that include that group (directly or through others), and a
///    `user@` or `:port` written on the host in a group's `hosts` beats that group's `user` or
///    `port`;
/// 3. of groups that hold the host and neither includes the other, the one defined first in the
///    file;
/// 4. `[defaults]`.
///
/// A target's own user and port (`admin@web1:2222`, on the command line or in a group) beat all
/// of these, as they beat `-l`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Params {
    /// Log in as this user (as `-l`).
    pub(crate) user: Option<String>,
    /// Connect to this port.
    pub(crate) port: Option<u16>,
    /// Reach the host this way (as `--method`).
    pub(crate) method: Option<MethodKind>,
    /// Offer this private key file (as `-i`), `~/` expanded.
    pub(crate) identity: Option<PathBuf>,
    /// Start the host from these gateways' agents (as `--via`); `Some(empty)` says none, over a
    /// wider group's or the defaults'.
    pub(crate) via: Option<Vec<String>>,
    /// Reach the host through these SSH servers (as `-J`); `Some(empty)` says none.
    pub(crate) jump: Option<Vec<String>>,
    /// Become this user with sudo (as `--sudo=USER`).
    pub(crate) sudo: Option<String>,
    /// Start at most this many hosts at once: per run, see [`Config::run_params`].
    pub(crate) fanout: Option<u32>,
    /// Print answers in this format (as `--format`): per run, see [`Config::run_params`].
    pub(crate) format: Option<String>,
}

/// The groups of one file, with their parameters; [`Config::default`] has none.
///
/// As a [`Groups`], it resolves `@name` in a nodeset text to the group's hosts, nested groups
/// expanded (by the nodeset parser, within its limits). A name it does not know is the parser's
/// error: `@name: no such group at column N`.
#[derive(Debug, Default)]
pub(crate) struct Config {
    /// The file read, for messages; `None` for an empty config.
    origin: Option<PathBuf>,
    defaults: Params,
    /// In the order of the file: that order breaks ties.
    groups: Vec<Group>,
    by_name: HashMap<String, usize>,
    /// For each host name, the groups that hold it, in the order of the file, each with the target
    /// it holds (its user and port as written), in the natural order within a group.
    holding: HashMap<String, Vec<(usize, Target)>>,
    /// For each group, a bit per group it includes, directly or through others.
    includes: Vec<Vec<u64>>,
    /// A hash of the file's text: runs that share `--persist` contexts read the same file.
    fingerprint: u64,
}

#[derive(Debug)]
struct Group {
    name: String,
    params: Params,
    /// The nodeset texts of `hosts`.
    hosts: Vec<String>,
    /// Where `hosts` is in the file.
    hosts_at: Option<Range<usize>>,
    /// The groups of `groups`.
    subgroups: Vec<usize>,
    /// Every group this one includes directly: its `groups`, and those its `hosts` name.
    inner: Vec<usize>,
}

/// One group's members, as the nodeset parser resolves them: its texts, and its groups by name.
fn members(config: &Config, group: &Group) -> Members {
    let mut texts = group.hosts.clone();
    texts.extend(group.subgroups.iter().map(|&g| format!("@{}", config.groups[g].name)));
    Members::List(texts)
}

impl Groups for Config {
    fn members(&self, name: &str) -> Option<Members> {
        self.by_name.get(name).map(|&g| members(self, &self.groups[g]))
    }
}

/// One holder of a host: a group, and the target it lists for it.
#[derive(Clone, Copy, Debug)]
struct Holder<'a> {
    group: usize,
    entry: Option<&'a Target>,
}

impl Config {
    /// `-c FILE` when given (an error if it cannot be read), else the first of
    /// `$XDG_CONFIG_HOME/hypha/hypha.toml` (`~/.config/hypha/hypha.toml` by default) and
    /// `/etc/hypha/hypha.toml` that exists, else an empty config.
    ///
    /// A file owned by neither this user nor root, or writable by its group or others, is refused
    /// (another user could have chosen what runs where); so is one that is not a regular file or
    /// is larger than [`MAX_FILE`].
    pub(crate) fn load(explicit: Option<&Path>) -> Result<Config, Usage> {
        let path = match explicit {
            Some(path) => path.to_owned(),
            None => {
                let found = candidates(std::env::var_os("XDG_CONFIG_HOME"), std::env::var_os("HOME"))
                    .into_iter()
                    // A dangling link is found, and then refused: better than a silent skip.
                    .find(|path| std::fs::symlink_metadata(path).is_ok());
                match found {
                    Some(path) => path,
                    None => return Ok(Config::default()),
                }
            }
        };
        let text = read(&path)?;
        Config::parse(&text, &path)
    }

    /// The config that `text` describes; `origin` names it in errors, which give its line where
    /// they can (`FILE:LINE:COLUMN: ...`).
    pub(crate) fn parse(text: &str, origin: &Path) -> Result<Config, Usage> {
        let fail = |at: Option<Range<usize>>, message: &dyn fmt::Display| located(origin, text, at, message);
        if text.len() as u64 > MAX_FILE {
            return Err(fail(None, &format_args!("larger than {MAX_FILE} bytes")));
        }
        let file: FileShape = toml::from_str(text).map_err(|e| fail(e.span(), &e.message()))?;
        if file.groups.0.len() > MAX_GROUPS {
            return Err(fail(None, &format_args!("more than {MAX_GROUPS} groups")));
        }
        let defaults = match file.defaults {
            None => Params::default(),
            Some(section) => {
                if let Some(hosts) = &section.hosts {
                    return Err(fail(Some(hosts.span()), &"[defaults] takes no hosts: they belong in a group"));
                }
                if let Some(groups) = &section.groups {
                    return Err(fail(Some(groups.span()), &"[defaults] takes no groups: they belong in a group"));
                }
                section.params()
            }
        };
        let fingerprint = {
            use std::hash::{Hash as _, Hasher as _};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            text.hash(&mut hasher);
            hasher.finish()
        };
        let mut config = Config { origin: Some(origin.to_owned()), defaults, fingerprint, ..Config::default() };
        for (g, (name, _)) in file.groups.0.iter().enumerate() {
            if let Some(bad) = name.bytes().find(|&c| !is_name_char(c)) {
                let problem =
                    format!("a group name is ASCII letters, digits, '-', '.' and '_', not '{}'", bad.escape_ascii());
                return Err(fail(None, &format_args!("group {}: {problem}", clean(name))));
            }
            if name.is_empty() {
                return Err(fail(None, &"a group has an empty name"));
            }
            config.by_name.insert(name.clone(), g);
        }
        for (name, section) in file.groups.0 {
            let (hosts, hosts_at) = match &section.hosts {
                Some(hosts) => (hosts.get_ref().0.clone(), Some(hosts.span())),
                None => (Vec::new(), None),
            };
            let mut subgroups = Vec::new();
            if let Some(names) = &section.groups {
                for sub in &names.get_ref().0 {
                    match config.by_name.get(sub.as_str()) {
                        Some(&g) => subgroups.push(g),
                        None => {
                            let problem = format_args!("group {name}: groups: no group named {sub}");
                            return Err(fail(Some(names.span()), &problem));
                        }
                    }
                }
            }
            // Those its texts name that exist: a name that does not is the parser's error below.
            let mut inner = subgroups.clone();
            inner.extend(hosts.iter().flat_map(|text| named_groups(text)).filter_map(|n| config.by_name.get(n)));
            let params = section.params();
            config.groups.push(Group { name, params, hosts, hosts_at, subgroups, inner });
        }
        let order = config.order().map_err(|cycle| {
            let chain: Vec<String> = cycle.iter().map(|&g| format!("@{}", config.groups[g].name)).collect();
            fail(None, &format_args!("groups contain themselves: {}", chain.join(" -> ")))
        })?;
        // The parser checks depth too, but not for a group it has met already: here, every path.
        config.check_depth(&order).map_err(|chain| {
            let chain: Vec<String> = chain.iter().map(|&g| format!("@{}", config.groups[g].name)).collect();
            let limit = Limits::default().max_depth;
            fail(None, &format_args!("groups nest deeper than the limit of {limit}: {}", chain.join(" -> ")))
        })?;
        config.check_bounds(text, origin)?;
        config.index(&order, text, origin)?;
        Ok(config)
    }

    /// The file and a hash of its text: equal for runs that read the same groups.
    pub(crate) fn fingerprint(&self) -> (Option<&Path>, u64) {
        (self.origin.as_deref(), self.fingerprint)
    }

    /// The parameters the config gives `host`, merged in the order [`Params`] describes. A host
    /// is matched by its name, whatever user or port the target names: the groups that list
    /// `web1`, `admin@web1` or `web1:2222` all hold `admin@web1`. Of several ways one group lists
    /// a host, the one equal to `host` gives its user and port, else the first.
    ///
    /// `fanout` and `format` here are the host's, by the same rule; a run's come from
    /// [`Config::run_params`].
    pub(crate) fn params(&self, host: &Target) -> Params {
        let mut holders: Vec<Holder<'_>> = Vec::new();
        for (group, entry) in self.holding.get(&host.host).map_or(&[][..], Vec::as_slice) {
            match holders.last_mut() {
                Some(last) if last.group == *group => {
                    if entry == host {
                        last.entry = Some(entry);
                    }
                }
                _ => holders.push(Holder { group: *group, entry: Some(entry) }),
            }
        }
        self.merge(&holders)
    }

    /// The parameters for a run on `targets` (a nodeset text): those of the groups it names with
    /// `@` at its top level (not the groups those include), merged as for a host, except that
    /// `fanout` is the smallest that any of them sets; then `[defaults]`. Meant for `fanout` and
    /// `format`, which are per run.
    pub(crate) fn run_params(&self, targets: &str) -> Params {
        let mut named: Vec<usize> = named_groups(targets).filter_map(|name| self.by_name.get(name).copied()).collect();
        named.sort_unstable();
        named.dedup();
        let holders: Vec<Holder<'_>> = named.iter().map(|&group| Holder { group, entry: None }).collect();
        let mut params = self.merge(&holders);
        let smallest = named.iter().filter_map(|&g| self.groups[g].params.fanout).min();
        params.fanout = smallest.or(self.defaults.fanout);
        params
    }

    /// Each field from the innermost holder that sets it (the first in the file of several), else
    /// from `[defaults]`.
    fn merge(&self, holders: &[Holder<'_>]) -> Params {
        let group = |h: &Holder<'_>| &self.groups[h.group].params;
        macro_rules! field {
            ($name:ident) => {
                self.pick(holders, |h| group(h).$name.clone()).or_else(|| self.defaults.$name.clone())
            };
        }
        Params {
            user: self
                .pick(holders, |h| h.entry.and_then(|t| t.user.clone()).or_else(|| group(h).user.clone()))
                .or_else(|| self.defaults.user.clone()),
            port: self.pick(holders, |h| h.entry.and_then(|t| t.port).or(group(h).port)).or(self.defaults.port),
            method: field!(method),
            identity: field!(identity),
            via: field!(via),
            jump: field!(jump),
            sudo: field!(sudo),
            fanout: field!(fanout),
            format: field!(format),
        }
    }

    /// The value of the first holder (in file order) that sets one and includes no other holder
    /// that does.
    fn pick<T>(&self, holders: &[Holder<'_>], value: impl Fn(&Holder<'_>) -> Option<T>) -> Option<T> {
        let mut setters: Vec<(usize, T)> = holders.iter().filter_map(|h| value(h).map(|v| (h.group, v))).collect();
        let innermost =
            setters.iter().position(|(g, _)| !setters.iter().any(|(o, _)| o != g && self.includes(*g, *o)))?;
        Some(setters.swap_remove(innermost).1)
    }

    /// Whether `outer` includes `inner`, directly or through others.
    fn includes(&self, outer: usize, inner: usize) -> bool {
        self.includes[outer].get(inner / 64).is_some_and(|word| word >> (inner % 64) & 1 == 1)
    }

    /// The groups, each after every group it includes; a cycle's groups if there is one.
    fn order(&self) -> Result<Vec<usize>, Vec<usize>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Open,
            Done,
        }
        let mut mark = vec![Mark::New; self.groups.len()];
        let mut order = Vec::with_capacity(self.groups.len());
        // Depth first, without recursion: a file may nest its groups thousands deep.
        let mut stack: Vec<(usize, usize)> = Vec::new();
        for root in 0..self.groups.len() {
            if mark[root] != Mark::New {
                continue;
            }
            mark[root] = Mark::Open;
            stack.push((root, 0));
            while let Some(&(g, next)) = stack.last() {
                let Some(&inner) = self.groups[g].inner.get(next) else {
                    mark[g] = Mark::Done;
                    order.push(g);
                    stack.pop();
                    continue;
                };
                if let Some(top) = stack.last_mut() {
                    top.1 += 1;
                }
                match mark[inner] {
                    Mark::New => {
                        mark[inner] = Mark::Open;
                        stack.push((inner, 0));
                    }
                    Mark::Open => {
                        let from = stack.iter().position(|&(s, _)| s == inner).unwrap_or(0);
                        let mut cycle: Vec<usize> = stack[from..].iter().map(|&(s, _)| s).collect();
                        cycle.push(inner);
                        return Err(cycle);
                    }
                    Mark::Done => {}
                }
            }
        }
        Ok(order)
    }

    /// Whether every chain of groups is as short as the nodeset parser allows; the longest if not.
    fn check_depth(&self, order: &[usize]) -> Result<(), Vec<usize>> {
        let limit = Limits::default().max_depth;
        // The groups each has inside it, counting itself, and the first of the longest chain.
        let mut height = vec![0usize; self.groups.len()];
        let mut below: Vec<Option<usize>> = vec![None; self.groups.len()];
        for &g in order {
            let deepest = self.groups[g].inner.iter().map(|&i| (height[i], i)).max_by_key(|&(h, _)| h);
            (height[g], below[g]) = deepest.map_or((1, None), |(h, i)| (h + 1, Some(i)));
            if height[g] > limit {
                let mut chain = vec![g];
                while let Some(next) = chain.last().and_then(|&c| below[c]) {
                    chain.push(next);
                }
                return Err(chain);
            }
        }
        Ok(())
    }

    /// Every group expanded at once, as the nodeset parser does for a command line, within its
    /// default limits: a bound on all the work that follows (each group's texts are parsed once,
    /// and each use of a group costs its size, as here), and the errors of the groups' texts.
    fn check_bounds(&self, text: &str, origin: &Path) -> Result<(), Usage> {
        let all: Vec<String> = self.groups.iter().map(|g| format!("@{}", g.name)).collect();
        // The texts all come from the file, which is bounded already.
        let limits = Limits::default().with_max_len(usize::MAX);
        match NodeSet::parse_with(&all.join(","), self, &limits) {
            Ok(_) => Ok(()),
            Err(error) => Err(self.group_error(&error, text, origin)),
        }
    }

    /// An error of the nodeset parser in the groups' texts, said of the innermost group.
    fn group_error(&self, error: &NodeSetError, text: &str, origin: &Path) -> Usage {
        let mut chain = Vec::new();
        let mut inner = error;
        while let NodeSetError::InGroup { name, error } = inner {
            chain.push(format!("@{name}"));
            inner = error;
        }
        match inner {
            NodeSetError::GroupTooDeep { name, limit, .. } => {
                chain.push(format!("@{name}"));
                let problem = format_args!("groups nest deeper than the limit of {limit}: {}", chain.join(" -> "));
                located(origin, text, None, &problem)
            }
            _ => match chain.last().and_then(|name| self.by_name.get(&name[1..])) {
                Some(&g) => {
                    let group = &self.groups[g];
                    let problem = format_args!("group {}: hosts: {inner}", group.name);
                    located(origin, text, group.hosts_at.clone(), &problem)
                }
                None => located(origin, text, None, error),
            },
        }
    }

    /// Expand each group once, innermost first (`order`), into [`Config::holding`] and
    /// [`Config::includes`].
    fn index(&mut self, order: &[usize], text: &str, origin: &Path) -> Result<(), Usage> {
        let n = self.groups.len();
        // The groups that a text names: given to it folded, so each use costs its size.
        let mut named = vec![false; n];
        for group in &self.groups {
            for text in &group.hosts {
                for name in named_groups(text) {
                    if let Some(&g) = self.by_name.get(name) {
                        named[g] = true;
                    }
                }
            }
        }
        let limits = Limits::default().with_max_len(usize::MAX);
        let mut sets: Vec<Option<NodeSet>> = vec![None; n];
        let mut folded: HashMap<&str, String> = HashMap::new();
        let words = n.div_ceil(64);
        let mut includes = vec![Vec::new(); n];
        for &g in order {
            let group = &self.groups[g];
            let resolve = |name: &str| match folded.get(name) {
                Some(text) => Some(Members::Text(text.clone())),
                // Not seen as a name above: the parser's way, within its limits.
                None => self.members(name),
            };
            let mut set = NodeSet::new();
            for text_of in &group.hosts {
                let part = NodeSet::parse_with(text_of, &resolve, &limits).map_err(|error| {
                    let error = NodeSetError::InGroup { name: group.name.clone(), error: Box::new(error) };
                    self.group_error(&error, text, origin)
                })?;
                set.union_with(part);
            }
            for &sub in &group.subgroups {
                if let Some(sub) = &sets[sub] {
                    set.union_with(sub.clone());
                }
            }
            if named[g] {
                folded.insert(&group.name, set.fold());
            }
            sets[g] = Some(set);
            let mut row = vec![0u64; words];
            for &inner in &group.inner {
                row[inner / 64] |= 1 << (inner % 64);
                let below: &Vec<u64> = &includes[inner];
                for (word, b) in row.iter_mut().zip(below) {
                    *word |= b;
                }
            }
            includes[g] = row;
        }
        let mut holding: HashMap<String, Vec<(usize, Target)>> = HashMap::new();
        for (g, set) in sets.into_iter().enumerate() {
            for target in set.into_iter().flatten() {
                holding.entry(target.host.clone()).or_default().push((g, target));
            }
        }
        self.holding = holding;
        self.includes = includes;
        Ok(())
    }
}

/// Where to look for the file, in order: the user's, then the system's.
fn candidates(xdg_config_home: Option<OsString>, home: Option<OsString>) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    // As the XDG spec says: a relative $XDG_CONFIG_HOME is ignored.
    let xdg = xdg_config_home.map(PathBuf::from).filter(|dir| dir.is_absolute());
    let user = xdg.or_else(|| home.filter(|home| !home.is_empty()).map(|home| Path::new(&home).join(".config")));
    if let Some(dir) = user {
        paths.push(dir.join("hypha").join("hypha.toml"));
    }
    paths.push(PathBuf::from(SYSTEM_FILE));
    paths
}

/// The text of the file at `path`, if this user may trust it.
fn read(path: &Path) -> Result<String, Usage> {
    let fail = |problem: &dyn fmt::Display| Usage(format!("{}: {problem}", path.display()));
    // Non-blocking: a FIFO would otherwise wait here for a writer, before being refused.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| fail(&format_args!("cannot open it: {e}")))?;
    // The file opened, not the path again: it cannot be swapped between the check and the read.
    let meta = file.metadata().map_err(|e| fail(&e))?;
    if !meta.is_file() {
        return Err(fail(&"not a regular file"));
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(fail(&format_args!(
            "owned by uid {}, neither you nor root: refusing its groups (its owner chooses what runs where)",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(fail(&format_args!(
            "writable by others (mode {:04o}): refusing its groups; `chmod go-w` it",
            meta.mode() & 0o7777
        )));
    }
    if meta.len() > MAX_FILE {
        return Err(fail(&format_args!("larger than {MAX_FILE} bytes")));
    }
    let mut bytes = Vec::new();
    // Bounded again: the file may grow after the check.
    file.take(MAX_FILE + 1).read_to_end(&mut bytes).map_err(|e| fail(&e))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(fail(&format_args!("larger than {MAX_FILE} bytes")));
    }
    String::from_utf8(bytes).map_err(|_| fail(&"not UTF-8 text"))
}

/// `FILE:LINE:COLUMN: problem` (or `FILE: problem` without a place), on one line, with the
/// file's control characters escaped.
fn located(origin: &Path, text: &str, at: Option<Range<usize>>, problem: &dyn fmt::Display) -> Usage {
    let problem = problem.to_string();
    let problem: Vec<&str> = problem.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    let problem = clean(&problem.join(": "));
    match at {
        Some(at) => {
            let before = text.get(..at.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            Usage(format!("{}:{line}:{column}: {problem}", origin.display()))
        }
        None => Usage(format!("{}: {problem}", origin.display())),
    }
}

/// `text` with anything but printable ASCII escaped, so that a file cannot reach a terminal
/// through an error message.
fn clean(text: &str) -> String {
    let mut clean = String::with_capacity(text.len());
    for c in text.chars() {
        if c == ' ' || c.is_ascii_graphic() {
            clean.push(c);
        } else {
            clean.extend(c.escape_default());
        }
    }
    clean
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_')
}

/// The group names a nodeset text uses with `@` (`@web!web3,@db` names `web` and `db`), split
/// as the nodeset parser splits items: at `,`, `!`, `&` and `^` outside brackets.
fn named_groups(text: &str) -> impl Iterator<Item = &str> {
    let mut inside = false;
    text.split(move |c: char| {
        match c {
            '[' => inside = true,
            ']' => inside = false,
            ',' | '!' | '&' | '^' if !inside => return true,
            _ => {}
        }
        false
    })
    .filter_map(|item| item.trim_matches([' ', '\t', '\n', '\r']).strip_prefix('@'))
}

// ---------------------------------------------------------------------------------------------
// The file's shape, as serde reads it.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    defaults: Option<Section>,
    #[serde(default)]
    groups: InOrder,
}

/// `[defaults]` or a group: the parameters, and a group's members.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    hosts: Option<Spanned<Texts>>,
    groups: Option<Spanned<Names>>,
    user: Option<UserName>,
    port: Option<NonZeroU16>,
    method: Option<MethodKind>,
    identity: Option<PathBuf>,
    via: Option<Hops>,
    jump: Option<Hops>,
    sudo: Option<UserName>,
    fanout: Option<NonZeroU32>,
    format: Option<String>,
}

impl Section {
    fn params(&self) -> Params {
        Params {
            user: self.user.as_ref().map(|u| u.0.clone()),
            port: self.port.map(NonZeroU16::get),
            method: self.method,
            identity: self.identity.as_deref().map(expand_home),
            via: self.via.as_ref().map(|h| h.0.clone()),
            jump: self.jump.as_ref().map(|h| h.0.clone()),
            sudo: self.sudo.as_ref().map(|u| u.0.clone()),
            fanout: self.fanout.map(NonZeroU32::get),
            format: self.format.clone(),
        }
    }
}

/// A leading `~/` as the home directory, as a shell would have expanded it on the command line.
fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) if !home.is_empty() => Path::new(&home).join(rest),
        _ => path.to_owned(),
    }
}

/// The groups table, in the order of the file (a map would sort it).
#[derive(Debug, Default)]
struct InOrder(Vec<(String, Section)>);

impl<'de> Deserialize<'de> for InOrder {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = InOrder;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of groups")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<InOrder, A::Error> {
                let mut groups = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    if groups.len() == MAX_GROUPS {
                        return Err(de::Error::custom(format_args!("more than {MAX_GROUPS} groups")));
                    }
                    groups.push(entry);
                }
                Ok(InOrder(groups))
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

/// A string, or a list of strings.
fn strings<'de, D: Deserializer<'de>>(deserializer: D, what: &'static str) -> Result<Vec<String>, D::Error> {
    struct Strings(&'static str);
    impl<'de> Visitor<'de> for Strings {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}, or a list of them", self.0)
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<String>, E> {
            Ok(vec![text.to_owned()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut all = Vec::new();
            while let Some(text) = seq.next_element::<String>()? {
                all.push(text);
            }
            Ok(all)
        }
    }
    deserializer.deserialize_any(Strings(what))
}

/// Each element of a string-or-list split at commas, as the command line splits `--via`.
fn comma_separated<'de, D: Deserializer<'de>>(deserializer: D, what: &'static str) -> Result<Vec<String>, D::Error> {
    let all = strings(deserializer, what)?;
    Ok(all.iter().flat_map(|text| text.split(',')).map(|item| item.trim().to_owned()).collect())
}

/// `hosts`: nodeset texts.
#[derive(Debug)]
struct Texts(Vec<String>);

impl<'de> Deserialize<'de> for Texts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        strings(deserializer, "a nodeset").map(Texts)
    }
}

/// `groups`: names of groups, with or without `@`.
#[derive(Debug)]
struct Names(Vec<String>);

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let names = comma_separated(deserializer, "a group name")?;
        let names: Vec<String> =
            names.into_iter().map(|name| name.strip_prefix('@').unwrap_or(&name).to_owned()).collect();
        if let Some(bad) = names.iter().find(|name| name.is_empty() || !name.bytes().all(is_name_char)) {
            return Err(de::Error::custom(format_args!("{:?} is not a group name", bad)));
        }
        Ok(Names(names))
    }
}

/// `via` and `jump`: hosts, one each (`[user@]host[:port]`).
#[derive(Debug)]
struct Hops(Vec<String>);

impl<'de> Deserialize<'de> for Hops {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let hops = comma_separated(deserializer, "a host")?;
        for hop in &hops {
            if let Err(e) = hop.parse::<Target>() {
                return Err(de::Error::custom(format_args!("{hop:?} is not one host ([user@]host[:port]): {e}")));
            }
        }
        Ok(Hops(hops))
    }
}

/// A user name, as a target's may be: ASCII letters, digits, `-`, `.` and `_`, not first `-`.
#[derive(Debug)]
struct UserName(String);

impl<'de> Deserialize<'de> for UserName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        let valid = !name.is_empty() && name.len() <= 64 && name.bytes().all(is_name_char) && !name.starts_with('-');
        if !valid {
            return Err(de::Error::custom(format_args!(
                "{name:?} is not a user name (at most 64 ASCII letters, digits, '-', '.' and '_', not first '-')"
            )));
        }
        Ok(UserName(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[defaults]            # optional: parameters for every host
user = "ops"
fanout = 32

[groups.web]
hosts = "web[01-20],admin@web21:2222"   # nodeset syntax (a string, or a list of strings)
user = "deploy"
sudo = "root"

[groups.db]
hosts = ["db1", "db2"]
method = "openssh"

[groups.all]
groups = ["web", "db"]    # groups of other groups
hosts = "extra1"
via = "gw1"
"#;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("test.toml")).map_err(|e| e.0)
    }

    fn hosts(config: &Config, text: &str) -> String {
        NodeSet::parse(text, config).map(|set| set.to_string()).unwrap_or_else(|e| format!("error: {e}"))
    }

    fn target(text: &str) -> Target {
        text.parse().unwrap()
    }

    #[test]
    fn example() {
        let config = parse(EXAMPLE).unwrap();
        assert_eq!(hosts(&config, "@web"), "web[01-20],admin@web21:2222");
        assert_eq!(hosts(&config, "@all"), "db[1-2],extra1,web[01-20],admin@web21:2222");
        assert_eq!(hosts(&config, "@all!@web"), "db[1-2],extra1");

        let web = config.params(&target("web05"));
        assert_eq!(web.user.as_deref(), Some("deploy"));
        assert_eq!(web.sudo.as_deref(), Some("root"));
        assert_eq!(web.via, Some(vec!["gw1".to_owned()]));
        assert_eq!(web.method, None);
        let db = config.params(&target("db2"));
        assert_eq!((db.user.as_deref(), db.method), (Some("ops"), Some(MethodKind::Openssh)));
        let extra = config.params(&target("extra1"));
        assert_eq!((extra.user.as_deref(), extra.sudo.as_deref()), (Some("ops"), None));
        // In no group: the defaults.
        let other = config.params(&target("elsewhere"));
        assert_eq!(other, Params { user: Some("ops".into()), fanout: Some(32), ..Params::default() });
        assert_eq!(config.fingerprint().0, Some(Path::new("test.toml")));
    }

    #[test]
    fn user_and_port_in_hosts() {
        let config = parse(EXAMPLE).unwrap();
        // As the group expands it, and as a bare name on the command line.
        for host in ["admin@web21:2222", "web21"] {
            let params = config.params(&target(host));
            assert_eq!((params.user.as_deref(), params.port), (Some("admin"), Some(2222)), "{host}");
            assert_eq!(params.sudo.as_deref(), Some("root"), "{host}");
        }
        let set = NodeSet::parse("@web", &config).unwrap();
        let last = set.iter().find(|t| t.host == "web21").unwrap();
        assert_eq!((last.user.as_deref(), last.port), (Some("admin"), Some(2222)));
    }

    #[test]
    fn nested() {
        let config = parse(
            r#"
[groups.rack1]
hosts = "n[1-4]"
[groups.rack2]
hosts = "n[5-8]"
[groups.row]
groups = "rack1,@rack2"
[groups.floor]
groups = ["row"]
hosts = ["@rack1!n2", "spare"]
"#,
        )
        .unwrap();
        assert_eq!(hosts(&config, "@floor"), "n[1-8],spare");
        assert_eq!(hosts(&config, "@row&@rack2"), "n[5-8]");
        assert_eq!(hosts(&config, "@nope"), "error: @nope: no such group at column 1");
    }

    #[test]
    fn cycle() {
        let error = parse("[groups.a]\ngroups = [\"b\"]\n[groups.b]\nhosts = \"x,@c\"\n[groups.c]\ngroups = [\"a\"]\n")
            .unwrap_err();
        assert_eq!(error, "test.toml: groups contain themselves: @a -> @b -> @c -> @a");
        let error = parse("[groups.a]\nhosts = \"@a\"\n").unwrap_err();
        assert_eq!(error, "test.toml: groups contain themselves: @a -> @a");
    }

    #[test]
    fn too_deep() {
        let mut text = String::from("[groups.g0]\nhosts = \"h\"\n");
        for i in 1..=16 {
            text.push_str(&format!("[groups.g{i}]\ngroups = [\"g{}\"]\n", i - 1));
        }
        let error = parse(&text).unwrap_err();
        assert!(error.starts_with("test.toml: groups nest deeper than the limit of 16: @g16 -> @g15"), "{error}");
        // One less is fine.
        text.truncate(text.rfind("[groups.g16]").unwrap());
        assert_eq!(hosts(&parse(&text).unwrap(), "@g15"), "h");
    }

    #[test]
    fn unknown_group() {
        let error = parse("[groups.all]\nhosts = \"a\"\ngroups = [\"web\", \"nope\"]\n[groups.web]\nhosts = \"w\"\n")
            .unwrap_err();
        assert_eq!(error, "test.toml:3:10: group all: groups: no group named nope");
        let error = parse("[groups.all]\nhosts = \"a,@nope\"\n").unwrap_err();
        assert_eq!(error, "test.toml:2:9: group all: hosts: @nope: no such group at column 3");
    }

    #[test]
    fn unknown_key() {
        let error = parse("[groups.web]\nhosts = \"a\"\nhots = \"b\"\n").unwrap_err();
        assert!(error.starts_with("test.toml:3:1: unknown field `hots`, expected one of"), "{error}");
        let error = parse("[grups.web]\nhosts = \"a\"\n").unwrap_err();
        assert!(error.starts_with("test.toml:1:2: unknown field `grups`"), "{error}");
        let error = parse("[defaults]\nhosts = \"a\"\n").unwrap_err();
        assert_eq!(error, "test.toml:2:9: [defaults] takes no hosts: they belong in a group");
    }

    #[test]
    fn bad_values() {
        let error = parse("[groups.web]\nhosts = \"a\"\nmethod = \"telnet\"\n").unwrap_err();
        assert!(error.starts_with("test.toml:3:10: unknown variant `telnet`, expected one of `ssh`"), "{error}");
        let error = parse("[groups.web]\nhosts = \"web[1-\"\n").unwrap_err();
        assert!(error.starts_with("test.toml:2:9: group web: hosts: web[1-: "), "{error}");
        let error = parse("[groups.web]\nport = 0\n").unwrap_err();
        assert!(error.starts_with("test.toml:2:8: "), "{error}");
        for bad in ["user = \"-oProxyCommand=x\"", "jump = \"-oProxyCommand=x\"", "via = \"gw[1-2]\"", "sudo = \"a b\""]
        {
            let error = parse(&format!("[groups.web]\n{bad}\n")).unwrap_err();
            assert!(error.starts_with("test.toml:2:"), "{bad}: {error}");
        }
        let error = parse("[groups.\"a b\"]\nhosts = \"x\"\n").unwrap_err();
        assert!(error.starts_with("test.toml: group a b: a group name is"), "{error}");
        // Syntax: the file and the line.
        let error = parse("[groups.web]\nhosts = \"a\n").unwrap_err();
        assert!(error.starts_with("test.toml:2:"), "{error}");
        // Control characters in what is quoted are escaped.
        let error = parse("[groups.web]\n\"x\\u001b[2J\" = 1\n").unwrap_err();
        assert!(!error.contains('\u{1b}') && error.contains("\\u{1b}"), "{error}");
    }

    #[test]
    fn precedence() {
        let config = parse(
            r#"
[defaults]
user = "ops"
port = 2200
sudo = "admin"
format = "%d %o"

[groups.outer]          # defined before the group it includes
groups = ["web"]
user = "outer"
port = 2300
jump = "hop1, hop2"

[groups.web]
hosts = "web[1-3],bob@web3"
user = "deploy"

[groups.front]          # includes web, and lists web1 itself too
groups = ["web"]
hosts = "web1,lb1"
user = "front"
via = ["gw1", "gw2"]
port = 2222

[groups.zeta]           # unrelated to web, defined after it
hosts = "web2,x1"
user = "zeta"
identity = "/keys/zeta"

[groups.alpha]          # unrelated to zeta, defined after it
hosts = "x1"
user = "alpha"
identity = "/keys/alpha"
via = []
"#,
        )
        .unwrap();
        let web1 = config.params(&target("web1"));
        // web, innermost, beats front and outer, which include it, though outer comes first.
        assert_eq!(web1.user.as_deref(), Some("deploy"));
        // front and outer, which both include web, are unrelated: the first defined.
        assert_eq!(web1.port, Some(2300));
        assert_eq!(config.params(&target("lb1")).port, Some(2222));
        assert_eq!(web1.jump, Some(vec!["hop1".to_owned(), "hop2".to_owned()]));
        assert_eq!(web1.via, Some(vec!["gw1".to_owned(), "gw2".to_owned()]));
        assert_eq!(web1.sudo.as_deref(), Some("admin"));
        assert_eq!(web1.format.as_deref(), Some("%d %o"));
        // web and zeta are unrelated: web is defined first.
        let web2 = config.params(&target("web2"));
        assert_eq!((web2.user.as_deref(), web2.identity.as_deref()), (Some("deploy"), Some(Path::new("/keys/zeta"))));
        // The file's order, not the names': zeta before alpha; alpha's empty via still counts.
        let x1 = config.params(&target("x1"));
        assert_eq!((x1.user.as_deref(), x1.identity.as_deref()), (Some("zeta"), Some(Path::new("/keys/zeta"))));
        assert_eq!(x1.via, Some(Vec::new()));
        // Of two ways web lists web3, the one the target names.
        assert_eq!(config.params(&target("bob@web3")).user.as_deref(), Some("bob"));
        assert_eq!(config.params(&target("web3")).user.as_deref(), Some("deploy"));
        assert_eq!(config.params(&target("lb1")).user.as_deref(), Some("front"));
    }

    #[test]
    fn run_params() {
        let config = parse(
            "[defaults]\nfanout = 64\n[groups.a]\nhosts = \"a1\"\nfanout = 16\nformat = \"A\"\n\
             [groups.b]\nhosts = \"b1\"\nfanout = 4\nformat = \"B\"\n[groups.c]\ngroups = [\"b\"]\n",
        )
        .unwrap();
        let run = config.run_params("@b, x[1-2],@a");
        assert_eq!((run.fanout, run.format.as_deref()), (Some(4), Some("A")));
        // c includes b, whose fanout is not c's.
        assert_eq!(config.run_params("@c").fanout, Some(64));
        assert_eq!(config.run_params("a1,b1").format, None);
        assert_eq!(Config::default().run_params("@a"), Params::default());
    }

    #[test]
    fn bounded() {
        let error = parse("[groups.big]\nhosts = \"n[1-999999999]\"\n").unwrap_err();
        assert!(error.contains("expands past the limit"), "{error}");
        // A group expensive to expand and empty, used by many: refused once, not paid for each.
        let mut text = String::from("[groups.x]\nhosts = \"n[1-400000]!n[1-400000]\"\n");
        for i in 0..1000 {
            text.push_str(&format!("[groups.y{i}]\nhosts = \"@x\"\ngroups = [\"x\"]\n"));
        }
        let started = std::time::Instant::now();
        assert!(parse(&text).is_ok());
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        let error = parse(&" ".repeat(MAX_FILE as usize + 1)).unwrap_err();
        assert!(error.contains("larger than"), "{error}");
    }

    #[test]
    fn search_path() {
        let system = PathBuf::from(SYSTEM_FILE);
        assert_eq!(
            candidates(Some("/x/conf".into()), Some("/home/u".into())),
            [PathBuf::from("/x/conf/hypha/hypha.toml"), system.clone()]
        );
        assert_eq!(
            candidates(Some("relative".into()), Some("/home/u".into())),
            [PathBuf::from("/home/u/.config/hypha/hypha.toml"), system.clone()]
        );
        assert_eq!(candidates(None, None), [system]);
    }

    /// A file of its own in the temporary directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str, mode: u32) -> TempFile {
            use std::os::unix::fs::PermissionsExt as _;
            let path = std::env::temp_dir().join(format!(
                "hypha-config-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn permissions() {
        let file = TempFile::new("mode", EXAMPLE, 0o666);
        let error = Config::load(Some(&file.0)).unwrap_err().0;
        assert!(error.contains("writable by others (mode 0666)"), "{error}");
        let file = TempFile::new("group", EXAMPLE, 0o620);
        assert!(Config::load(Some(&file.0)).is_err());
        let file = TempFile::new("ok", EXAMPLE, 0o644);
        let config = Config::load(Some(&file.0)).unwrap();
        assert_eq!(hosts(&config, "@db"), "db[1-2]");
        assert_eq!(config.fingerprint().0, Some(file.0.as_path()));
        // SAFETY: getuid cannot fail.
        if unsafe { libc::getuid() } == 0 {
            // As root, a file of another user's.
            let path = std::ffi::CString::new(file.0.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a valid path, NUL-terminated.
            assert_eq!(unsafe { libc::chown(path.as_ptr(), 65534, 65534) }, 0);
            let error = Config::load(Some(&file.0)).unwrap_err().0;
            assert!(error.contains("owned by uid 65534"), "{error}");
        }
        let missing = std::env::temp_dir().join(format!("hypha-config-missing-{}", std::process::id()));
        let error = Config::load(Some(&missing)).unwrap_err().0;
        assert!(error.starts_with(&format!("{}: cannot open it", missing.display())), "{error}");
        let error = Config::load(Some(Path::new("/dev/null"))).unwrap_err().0;
        assert!(error.contains("not a regular file"), "{error}");
    }
}

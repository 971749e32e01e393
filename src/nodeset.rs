//! Node sets: the way a command line names many machines at once, in the syntax of ClusterShell's
//! `nodeset` and `clush`, and the way back from a list of hosts to that short notation.
//!
//! A [`NodeSet`] is an ordered, de-duplicated set of [`Target`]s (`[user@]host[:port]`). It comes
//! from a text such as `web[01-20],db[1-2]!db2` ([`NodeSet::parse`]), and goes back to one
//! ([`NodeSet::fold`], [`fold`]), as `clubak -b` prints `web[01-03,05]` over output that several
//! hosts share.
//!
//! # Syntax
//!
//! - A name with numbers in brackets stands for one name per number: ranges `web[1-10]`, lists
//!   `web[1,3,5-7]`, steps `web[1-10/2]` (1, 3, 5, 7, 9). A start written with leading zeros sets
//!   the width of every number of its range: `web[01-10]` is `web01` … `web10`, `web[01-100]`
//!   ends with `web100`. Each element of a list keeps its own width, so `web[1,01]` is two hosts.
//!   An end written with leading zeros must have the width of its start (`[01-010]` is an error).
//! - Several brackets in one name make every combination: `dc[1-2]n[1-4]` is 8 hosts.
//! - `,` is union, `!` difference, `&` intersection and `^` symmetric difference, evaluated left
//!   to right without precedence, as ClusterShell does: `a,b&c` is `(a,b)&c`. Whitespace around
//!   operators and inside brackets is ignored; inside a name it is an error.
//! - `@name` is a group, resolved by a [`Groups`]: its members are nodeset texts themselves, which
//!   may name other groups (a cycle is an error, and so is nesting deeper than
//!   [`Limits::max_depth`]). The name is passed whole, so `@source:name` works as ClusterShell's
//!   group sources do if the [`Groups`] understands it.
//! - `user@host:port`: a user and a port belong to their item and to every host it expands to:
//!   `admin@web[1-3]:2222` is three targets, each with user `admin` and port 2222.
//! - IPv6 addresses: a bracket holding `:` is an address, not a range, and is the whole host:
//!   `[::1]`, `root@[fe80::1]:2222`. A bare address (`fe80::1`, two colons or more) has no port.
//! - `local` and `localhost` are ordinary names here; the command line gives them a meaning.
//!
//! With `!` and `&`, an item on the right without a user (or port) matches every user (or port):
//! `admin@web[1-3]!web2` is `admin@web1` and `admin@web3`. Elsewhere targets are equal only
//! when host, user and port are.
//!
//! # Hostile input
//!
//! The text may come from anywhere: [`Limits`] bound how long it is (group texts included), how
//! many targets every item expands to together — counted before anything is allocated, so
//! `n[1-999999999]` fails at once — and how deep groups nest. Host names are at most 255
//! characters of ASCII letters, digits, `-`, `.` and `_`, and never start with `-` (so a host
//! cannot pass for an option of `ssh`). Every error says which part of the text and which
//! column it is about.
//!
//! # Order
//!
//! Iteration is in natural order, as ClusterShell lists nodes: the numbers in names compare as
//! numbers (`web2` before `web10`), a padded number after the same unpadded one (`web1`, `web01`).
//!
//! # Example
//!
//! ```
//! use std::collections::BTreeMap;
//! use hypha::nodeset::{fold, NodeSet, NoGroups};
//!
//! let set = NodeSet::parse("web[01-03,05],dc[1-2]n[1-2]!dc2n1", &NoGroups)?;
//! let names: Vec<String> = set.iter().map(|t| t.to_string()).collect();
//! assert_eq!(names, ["dc1n1", "dc1n2", "dc2n2", "web01", "web02", "web03", "web05"]);
//! assert_eq!(set.fold(), "dc1n[1-2],dc2n2,web[01-03,05]");
//!
//! // Users and ports stay with their hosts.
//! let set = NodeSet::parse("admin@web[1-3]:2222", &NoGroups)?;
//! let first = set.iter().next().unwrap();
//! assert_eq!((first.user.as_deref(), first.host.as_str(), first.port), (Some("admin"), "web1", Some(2222)));
//!
//! // Groups, here from a map of name to nodeset text.
//! let groups = BTreeMap::from([
//!     ("web".to_string(), "web[1-4]".to_string()),
//!     ("down".to_string(), "web3".to_string()),
//! ]);
//! let set = NodeSet::parse("@web!@down", &groups)?;
//! assert_eq!(set.to_string(), "web[1-2,4]");
//!
//! // Folding a plain list of host names, as `clubak -b` does.
//! assert_eq!(fold(["web01", "web02", "web03", "web05"]), "web[01-03,05]");
//!
//! // Errors say where.
//! let error = NodeSet::parse("web[1-]", &NoGroups).unwrap_err();
//! assert_eq!(error.to_string(), "web[1-]: a range needs an end at column 6");
//! # Ok::<(), hypha::nodeset::NodeSetError>(())
//! ```
//!
//! [`NodeSet`]: crate::nodeset::NodeSet
//! [`NodeSet::parse`]: crate::nodeset::NodeSet::parse
//! [`NodeSet::fold`]: crate::nodeset::NodeSet::fold
//! [`fold`]: crate::nodeset::fold
//! [`Target`]: crate::nodeset::Target
//! [`Groups`]: crate::nodeset::Groups
//! [`Limits`]: crate::nodeset::Limits
//! [`Limits::max_depth`]: crate::nodeset::Limits::max_depth

use std::cmp::Ordering;
use std::collections::{btree_set, BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasher;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// Longest host name a pattern may expand to (the longest DNS name is 253).
const MAX_HOST: usize = 255;
/// Longest user name (Linux allows 32).
const MAX_USER: usize = 64;
/// Numbers in brackets have at most this many significant digits, so every count fits a `u64`.
const MAX_DIGITS: usize = 18;
/// Longest excerpt of the text an error quotes.
const MAX_EXCERPT: usize = 60;

/// One machine to reach: `[user@]host[:port]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The user to log in as, when the text says (`admin@web1`).
    pub user: Option<String>,
    /// The host name or address; an IPv6 address is kept without brackets, in its canonical form.
    pub host: String,
    /// The port, when the text says (`web1:2222`).
    pub port: Option<u16>,
}

impl Target {
    /// A target with no user or port.
    pub fn new(host: impl Into<String>) -> Self {
        Target { user: None, host: host.into(), port: None }
    }

    /// Set [`Target::user`].
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Set [`Target::port`].
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Whether `self`, the right side of `!` or `&`, matches `target`: same host, and same user
    /// and port where `self` names them.
    fn matches(&self, target: &Target) -> bool {
        self.host == target.host
            && (self.user.is_none() || self.user == target.user)
            && (self.port.is_none() || self.port == target.port)
    }
}

impl fmt::Display for Target {
    /// `user@host:port`, with brackets around an IPv6 address that has a port (`[::1]:2222`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        match self.port {
            Some(port) if self.host.contains(':') => write!(f, "[{}]:{port}", self.host),
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

impl Ord for Target {
    /// Natural order of hosts ([`natural_cmp`]), then user, then port.
    fn cmp(&self, other: &Self) -> Ordering {
        natural_cmp(&self.host, &other.host)
            .then_with(|| self.user.cmp(&other.user))
            .then_with(|| self.port.cmp(&other.port))
    }
}

impl PartialOrd for Target {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl FromStr for Target {
    type Err = NodeSetError;

    /// One target, in the syntax of a nodeset item without groups: `admin@web1:2222`, `[::1]:22`.
    /// A text that names no target or several (`web[1-2]`) is an error.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let set = NodeSet::parse(text, &NoGroups)?;
        let mut targets = set.into_iter();
        match (targets.next(), targets.next()) {
            (Some(target), None) => Ok(target),
            _ => Err(syntax(text, 1, "this names no single target")),
        }
    }
}

/// Compare host names in natural order: runs of digits compare as numbers (`web2 < web10`), and
/// of two equal numbers the one written shorter comes first (`web1 < web01`); everything else
/// compares by byte. Equal only for equal strings.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    loop {
        match (a.get(i), b.get(j)) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let end_a = i + a[i..].iter().take_while(|c| c.is_ascii_digit()).count();
                let end_b = j + b[j..].iter().take_while(|c| c.is_ascii_digit()).count();
                let (run_a, run_b) = (&a[i..end_a], &b[j..end_b]);
                let (num_a, num_b) = (strip_zeros(run_a), strip_zeros(run_b));
                let order = num_a
                    .len()
                    .cmp(&num_b.len())
                    .then_with(|| num_a.cmp(num_b))
                    .then_with(|| run_a.len().cmp(&run_b.len()));
                if order != Ordering::Equal {
                    return order;
                }
                (i, j) = (end_a, end_b);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (i, j) = (i + 1, j + 1);
            }
        }
    }
}

fn strip_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|&&c| c == b'0').count();
    &digits[zeros..]
}

/// What a group stands for: nodeset texts, which may name other groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Members {
    /// One nodeset text, such as `web[1-4],@db`.
    Text(String),
    /// Several nodeset texts, united (as a group file's lines, or a group source's answer).
    List(Vec<String>),
}

/// Resolves `@name` in a nodeset text. Implemented for maps of names to nodeset texts and for
/// closures; [`NoGroups`] knows none.
pub trait Groups {
    /// The members of the group `name` (what follows `@`, such as `web` or `source:web`), or
    /// `None` if there is no such group.
    fn members(&self, name: &str) -> Option<Members>;
}

/// Knows no groups: every `@name` is an error.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoGroups;

impl Groups for NoGroups {
    fn members(&self, _name: &str) -> Option<Members> {
        None
    }
}

impl Groups for BTreeMap<String, String> {
    fn members(&self, name: &str) -> Option<Members> {
        self.get(name).map(|text| Members::Text(text.clone()))
    }
}

impl<S: BuildHasher> Groups for HashMap<String, String, S> {
    fn members(&self, name: &str) -> Option<Members> {
        self.get(name).map(|text| Members::Text(text.clone()))
    }
}

impl<F: Fn(&str) -> Option<Members>> Groups for F {
    fn members(&self, name: &str) -> Option<Members> {
        self(name)
    }
}

/// Bounds on what parsing a text may cost, whoever wrote it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Limits {
    /// Most targets that all items of the text together may expand to, groups included, each
    /// time a group is used (default 1,000,000). Counted before expanding, so a text over the
    /// limit allocates nothing for it.
    pub max_targets: usize,
    /// Longest text in bytes, with the texts of all the groups it uses (default 1 MiB).
    pub max_len: usize,
    /// Deepest nesting of groups: a group used in the text is at depth 1 (default 16).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_targets: 1_000_000, max_len: 1 << 20, max_depth: 16 }
    }
}

impl Limits {
    /// Set [`Limits::max_targets`].
    pub fn with_max_targets(mut self, targets: usize) -> Self {
        self.max_targets = targets;
        self
    }

    /// Set [`Limits::max_len`].
    pub fn with_max_len(mut self, bytes: usize) -> Self {
        self.max_len = bytes;
        self
    }

    /// Set [`Limits::max_depth`].
    pub fn with_max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth;
        self
    }
}

/// Why a nodeset text was refused. Columns count characters from 1, in the text the error is
/// about (for [`NodeSetError::InGroup`], the group's text).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeSetError {
    /// The text breaks the syntax.
    #[error("{part}: {problem} at column {column}")]
    Syntax {
        /// The item (or text) the problem is in, shortened if long.
        part: String,
        /// Where the problem is.
        column: usize,
        /// What is wrong.
        problem: String,
    },
    /// The items, expanded, would make more targets than [`Limits::max_targets`].
    #[error("{part}: expands past the limit of {limit} targets at column {column}")]
    TooManyTargets {
        /// The item that would pass the limit.
        part: String,
        /// Where it starts.
        column: usize,
        /// The limit.
        limit: usize,
    },
    /// The text, with the texts of the groups it uses, is longer than [`Limits::max_len`].
    #[error("the text is longer than the limit of {limit} bytes")]
    TooLong {
        /// The limit.
        limit: usize,
    },
    /// The [`Groups`] know no group of this name.
    #[error("@{name}: no such group at column {column}")]
    UnknownGroup {
        /// The group's name, without `@`.
        name: String,
        /// Where it is used.
        column: usize,
    },
    /// A group contains itself, through the groups of `chain`.
    #[error("@{name}: the group contains itself ({chain}) at column {column}")]
    GroupCycle {
        /// The group's name, without `@`.
        name: String,
        /// The groups from the first use of `name` to the second, as `@a → @b → @a`.
        chain: String,
        /// Where it is used the second time.
        column: usize,
    },
    /// Groups nest deeper than [`Limits::max_depth`].
    #[error("@{name}: groups nest deeper than the limit of {limit} at column {column}")]
    GroupTooDeep {
        /// The group one level too deep.
        name: String,
        /// The limit.
        limit: usize,
        /// Where it is used.
        column: usize,
    },
    /// An error in the text of a group.
    #[error("in group @{name}: {error}")]
    InGroup {
        /// The group's name, without `@`.
        name: String,
        /// The error, with columns in the group's text.
        error: Box<NodeSetError>,
    },
}

/// `text` to quote in an error: shortened if long, and with anything but printable ASCII escaped,
/// so that hostile input cannot reach a terminal through an error message.
fn excerpt(text: &str) -> String {
    let long = text.chars().count() > MAX_EXCERPT;
    let mut short = String::new();
    for c in text.chars().take(if long { MAX_EXCERPT - 3 } else { MAX_EXCERPT }) {
        if c == ' ' || c.is_ascii_graphic() {
            short.push(c);
        } else {
            short.extend(c.escape_default());
        }
    }
    if long {
        short.push_str("...");
    }
    short
}

fn syntax(part: &str, column: usize, problem: impl Into<String>) -> NodeSetError {
    NodeSetError::Syntax { part: excerpt(part), column, problem: problem.into() }
}

/// An ordered, de-duplicated set of [`Target`]s, in natural order (see the [module](self) docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSet {
    targets: BTreeSet<Target>,
}

impl NodeSet {
    /// An empty set.
    pub fn new() -> Self {
        NodeSet::default()
    }

    /// Parse a nodeset text, with groups from `groups`, within the default [`Limits`]. An empty
    /// (or blank) text is the empty set.
    pub fn parse(text: &str, groups: &dyn Groups) -> Result<Self, NodeSetError> {
        Self::parse_with(text, groups, &Limits::default())
    }

    /// Parse a nodeset text, with groups from `groups`, within `limits`.
    pub fn parse_with(text: &str, groups: &dyn Groups, limits: &Limits) -> Result<Self, NodeSetError> {
        let mut parser = Parser {
            groups: GroupsRef(groups),
            limits,
            targets_left: limits.max_targets,
            text_left: limits.max_len,
            stack: Vec::new(),
            cache: HashMap::new(),
        };
        parser.text(text, 0)
    }

    /// How many targets the set holds.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The targets, in natural order.
    pub fn iter(&self) -> btree_set::Iter<'_, Target> {
        self.targets.iter()
    }

    /// Whether the set holds `target` (host, user and port equal).
    pub fn contains(&self, target: &Target) -> bool {
        self.targets.contains(target)
    }

    /// Add a target; false if it was there already.
    pub fn insert(&mut self, target: Target) -> bool {
        self.targets.insert(target)
    }

    /// Add the targets of `other` (`,`).
    pub fn union_with(&mut self, other: NodeSet) {
        if self.targets.len() < other.targets.len() {
            let mut other = other;
            std::mem::swap(self, &mut other);
            self.targets.extend(other.targets);
        } else {
            self.targets.extend(other.targets);
        }
    }

    /// Remove the targets that a target of `other` matches (`!`): same host, and same user and
    /// port where the target of `other` has them.
    pub fn difference_with(&mut self, other: &NodeSet) {
        let by_host = other.by_host();
        self.targets.retain(|t| !by_host.get(t.host.as_str()).is_some_and(|ps| ps.iter().any(|p| p.matches(t))));
    }

    /// Keep only the targets that a target of `other` matches (`&`), as for
    /// [`NodeSet::difference_with`].
    pub fn intersect_with(&mut self, other: &NodeSet) {
        let by_host = other.by_host();
        self.targets.retain(|t| by_host.get(t.host.as_str()).is_some_and(|ps| ps.iter().any(|p| p.matches(t))));
    }

    /// Keep the targets that are in one set but not both (`^`), comparing whole targets.
    pub fn symmetric_difference_with(&mut self, other: NodeSet) {
        for target in other.targets {
            if !self.targets.remove(&target) {
                self.targets.insert(target);
            }
        }
    }

    fn by_host(&self) -> HashMap<&str, Vec<&Target>> {
        let mut by_host: HashMap<&str, Vec<&Target>> = HashMap::new();
        for target in &self.targets {
            by_host.entry(target.host.as_str()).or_default().push(target);
        }
        by_host
    }

    /// The set in the shortest notation this module finds, which [`NodeSet::parse`] reads back
    /// to the same set: `web[01-03,05]`, `dc[1-2]n[1-4]`, `admin@web[1-3]:2222`. Targets with
    /// different users or ports are folded apart; IPv6 addresses are listed one by one.
    pub fn fold(&self) -> String {
        fold_targets(&self.targets)
    }
}

impl fmt::Display for NodeSet {
    /// [`NodeSet::fold`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fold())
    }
}

impl FromStr for NodeSet {
    type Err = NodeSetError;

    /// [`NodeSet::parse`] without groups.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        NodeSet::parse(text, &NoGroups)
    }
}

impl FromIterator<Target> for NodeSet {
    fn from_iter<I: IntoIterator<Item = Target>>(targets: I) -> Self {
        NodeSet { targets: targets.into_iter().collect() }
    }
}

impl Extend<Target> for NodeSet {
    fn extend<I: IntoIterator<Item = Target>>(&mut self, targets: I) {
        self.targets.extend(targets);
    }
}

impl IntoIterator for NodeSet {
    type Item = Target;
    type IntoIter = btree_set::IntoIter<Target>;

    fn into_iter(self) -> Self::IntoIter {
        self.targets.into_iter()
    }
}

impl<'a> IntoIterator for &'a NodeSet {
    type Item = &'a Target;
    type IntoIter = btree_set::Iter<'a, Target>;

    fn into_iter(self) -> Self::IntoIter {
        self.targets.iter()
    }
}

/// Fold host names (or single targets, `admin@web1:22`) into the shortest notation this module
/// finds: `["web01", "web02", "web03", "web05"]` becomes `web[01-03,05]`, and [`NodeSet::parse`]
/// reads it back to the same set. Duplicates count once. A string that is not one target
/// (`web[1-2]`, `a b`) is kept as it is, after the folded ones.
pub fn fold<I>(hosts: I) -> String
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let mut set = BTreeSet::new();
    let mut verbatim = Vec::new();
    for host in hosts {
        let host = host.as_ref();
        match host.parse::<Target>() {
            Ok(target) => {
                set.insert(target);
            }
            Err(_) => verbatim.push(host.to_owned()),
        }
    }
    let mut folded = fold_targets(&set);
    for host in verbatim {
        if !folded.is_empty() {
            folded.push(',');
        }
        folded.push_str(&host);
    }
    folded
}

// ---------------------------------------------------------------------------------------------
// Parsing.

/// The set operators, which all bind alike, left to right.
#[derive(Clone, Copy, Debug)]
enum Op {
    Union,
    Difference,
    Intersection,
    SymmetricDifference,
}

/// A bracket element: `start-end/step` with the numbers' width (0 for unpadded).
#[derive(Clone, Copy, Debug)]
struct Run {
    start: u64,
    end: u64,
    step: u64,
    pad: usize,
}

impl Run {
    fn count(&self) -> u64 {
        (self.end - self.start) / self.step + 1
    }

    fn width(&self) -> usize {
        self.pad.max(self.end.to_string().len())
    }
}

/// A piece of a host pattern.
#[derive(Debug)]
enum Segment<'t> {
    Text(&'t str),
    Numbers(Vec<Run>),
}

/// The host part of an item.
#[derive(Debug)]
enum Host<'t> {
    Pattern(Vec<Segment<'t>>),
    Address(String),
}

/// One item, `[user@]host[:port]`, before expansion.
#[derive(Debug)]
struct Item<'t> {
    user: Option<&'t str>,
    host: Host<'t>,
    port: Option<u16>,
}

#[derive(Debug)]
struct Parser<'a> {
    groups: GroupsRef<'a>,
    limits: &'a Limits,
    /// What [`Limits::max_targets`] leaves.
    targets_left: usize,
    /// What [`Limits::max_len`] leaves.
    text_left: usize,
    /// The groups being resolved, outermost first, to find cycles.
    stack: Vec<String>,
    /// Groups resolved already: a group used twice is parsed once.
    cache: HashMap<String, NodeSet>,
}

/// A `&dyn Groups` that the parser's `Debug` can show.
#[derive(Clone, Copy)]
struct GroupsRef<'a>(&'a dyn Groups);

impl fmt::Debug for GroupsRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Groups")
    }
}

impl<'a> std::ops::Deref for GroupsRef<'a> {
    type Target = dyn Groups + 'a;

    fn deref(&self) -> &Self::Target {
        self.0
    }
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_')
}

impl Parser<'_> {
    /// Parse a whole text (the command line's, or a group's) at group depth `depth`.
    fn text(&mut self, text: &str, depth: usize) -> Result<NodeSet, NodeSetError> {
        if text.len() > self.text_left {
            return Err(NodeSetError::TooLong { limit: self.limits.max_len });
        }
        self.text_left -= text.len();
        // Only ASCII from here on, so byte offsets are columns.
        if let Some((at, c)) =
            text.chars().enumerate().find(|&(_, c)| !c.is_ascii() || (c.is_ascii_control() && !is_space(c as u8)))
        {
            return Err(syntax(text, at + 1, format!("unexpected character '{}'", c.escape_default())));
        }
        let bytes = text.as_bytes();
        if bytes.iter().all(|&c| is_space(c)) {
            return Ok(NodeSet::new());
        }
        let mut result: Option<NodeSet> = None;
        let mut op: Option<(Op, usize)> = None;
        let (mut start, mut open) = (0, None);
        for i in 0..=bytes.len() {
            let next = match bytes.get(i) {
                None => None,
                Some(b'[') => {
                    if open.is_some() {
                        return Err(syntax(text, i + 1, "brackets do not nest"));
                    }
                    open = Some(i);
                    continue;
                }
                Some(b']') => {
                    if open.take().is_none() {
                        return Err(syntax(text, i + 1, "']' closes no '['"));
                    }
                    continue;
                }
                Some(_) if open.is_some() => continue,
                Some(b',') => Some(Op::Union),
                Some(b'!') => Some(Op::Difference),
                Some(b'&') => Some(Op::Intersection),
                Some(b'^') => Some(Op::SymmetricDifference),
                Some(_) => continue,
            };
            if next.is_none() {
                if let Some(open) = open {
                    return Err(syntax(text, open + 1, "this '[' is never closed"));
                }
            }
            let raw = &text[start..i];
            let lead = raw.bytes().take_while(|&c| is_space(c)).count();
            let item = raw.trim_matches(|c: char| is_space(c as u8));
            if item.is_empty() {
                let operator = |at: usize| bytes.get(at).map_or(' ', |&c| c as char);
                return Err(match op {
                    None => syntax(text, i + 1, format!("'{}' needs something before it", operator(i))),
                    Some((_, at)) => syntax(text, at + 1, format!("'{}' needs something after it", operator(at))),
                });
            }
            let set = self.item(item, start + lead + 1, depth)?;
            result = Some(match (result, op) {
                (Some(mut left), Some((op, _))) => {
                    match op {
                        Op::Union => left.union_with(set),
                        Op::Difference => left.difference_with(&set),
                        Op::Intersection => left.intersect_with(&set),
                        Op::SymmetricDifference => left.symmetric_difference_with(set),
                    }
                    left
                }
                _ => set,
            });
            op = next.map(|next| (next, i));
            start = i + 1;
        }
        Ok(result.unwrap_or_default())
    }

    /// Charge `count` targets to the budget, or fail naming `part`.
    fn charge(&mut self, count: u64, part: &str, column: usize) -> Result<(), NodeSetError> {
        match usize::try_from(count) {
            Ok(count) if count <= self.targets_left => {
                self.targets_left -= count;
                Ok(())
            }
            _ => Err(NodeSetError::TooManyTargets { part: excerpt(part), column, limit: self.limits.max_targets }),
        }
    }

    /// One item (no operators, trimmed), starting at `column` of its text.
    fn item(&mut self, item: &str, column: usize, depth: usize) -> Result<NodeSet, NodeSetError> {
        if let Some(name) = item.strip_prefix('@') {
            return self.group(name, column, depth);
        }
        let parsed = parse_item(item, column)?;
        let count = match &parsed.host {
            Host::Address(_) => 1,
            Host::Pattern(segments) => segments.iter().fold(1u64, |product, segment| match segment {
                Segment::Text(_) => product,
                Segment::Numbers(runs) => {
                    product.saturating_mul(runs.iter().fold(0u64, |sum, run| sum.saturating_add(run.count())))
                }
            }),
        };
        self.charge(count, item, column)?;
        let user = parsed.user.map(str::to_owned);
        let make = |host: String| Target { user: user.clone(), host, port: parsed.port };
        Ok(match parsed.host {
            Host::Address(address) => std::iter::once(make(address)).collect(),
            Host::Pattern(segments) => expand(&segments).into_iter().map(make).collect(),
        })
    }

    /// `@name`, used at `column`, in a text at depth `depth`.
    fn group(&mut self, name: &str, column: usize, depth: usize) -> Result<NodeSet, NodeSetError> {
        let part = || format!("@{name}");
        if name.is_empty() {
            return Err(syntax("@", column, "a group name is missing after '@'"));
        }
        if let Some(at) = name.bytes().position(|c| !(is_name_char(c) || matches!(c, b':' | b'/' | b'*' | b'+'))) {
            let problem = match name.as_bytes()[at] {
                b'[' | b']' => "a group name takes no brackets".to_owned(),
                c if is_space(c) => "whitespace inside a name".to_owned(),
                c => format!("a group name takes no '{}'", c as char),
            };
            return Err(syntax(&part(), column + 1 + at, problem));
        }
        if let Some(set) = self.cache.get(name) {
            let set = set.clone();
            self.charge(set.len() as u64, &part(), column)?;
            return Ok(set);
        }
        if let Some(first) = self.stack.iter().position(|g| g == name) {
            // Names are plain ASCII (checked above) and at most `max_depth` deep: shortened, not escaped.
            let mut chain: Vec<String> = self.stack[first..].iter().map(|g| format!("@{}", excerpt(g))).collect();
            chain.push(format!("@{}", excerpt(name)));
            return Err(NodeSetError::GroupCycle { name: excerpt(name), chain: chain.join(" → "), column });
        }
        if depth >= self.limits.max_depth {
            return Err(NodeSetError::GroupTooDeep { name: excerpt(name), limit: self.limits.max_depth, column });
        }
        let members =
            self.groups.members(name).ok_or_else(|| NodeSetError::UnknownGroup { name: excerpt(name), column })?;
        self.stack.push(name.to_owned());
        let in_group = |error| NodeSetError::InGroup { name: excerpt(name), error: Box::new(error) };
        let set = match members {
            Members::Text(text) => self.text(&text, depth + 1).map_err(in_group)?,
            Members::List(texts) => {
                let mut set = NodeSet::new();
                for text in texts {
                    set.union_with(self.text(&text, depth + 1).map_err(in_group)?);
                }
                set
            }
        };
        self.stack.pop();
        self.cache.insert(name.to_owned(), set.clone());
        Ok(set)
    }
}

/// Split an item into user, host and port, and the host into its pattern.
fn parse_item(item: &str, column: usize) -> Result<Item<'_>, NodeSetError> {
    let bytes = item.as_bytes();
    let mut inside = false;
    let mut at_sign = None;
    for (i, &c) in bytes.iter().enumerate() {
        match c {
            b'[' => inside = true,
            b']' => inside = false,
            b'@' if inside => return Err(syntax(item, column + i, "'@' inside brackets")),
            b'@' if at_sign.is_some() => return Err(syntax(item, column + i, "a second '@' (one user per target)")),
            b'@' => at_sign = Some(i),
            c if is_space(c) && !inside => return Err(syntax(item, column + i, "whitespace inside a name")),
            _ => {}
        }
    }
    let (user, rest, rest_at) = match at_sign {
        Some(at) => (Some(&item[..at]), &item[at + 1..], at + 1),
        None => (None, item, 0),
    };
    if let Some(user) = user {
        check_user(item, user, column)?;
    }
    let rest_column = column + rest_at;
    if rest.is_empty() {
        return Err(syntax(item, rest_column, "a host is missing"));
    }
    let rest_bytes = rest.as_bytes();

    // `[address]` or `[address]:port`.
    if rest_bytes[0] == b'[' {
        let close = rest.find(']').unwrap_or(rest.len());
        let content = &rest[1..close];
        if content.contains(':') {
            let address = parse_address(item, content, rest_column + 1)?;
            let after = rest.get(close + 1..).unwrap_or("");
            let port = match after.strip_prefix(':') {
                _ if after.is_empty() => None,
                Some(port) => Some(parse_port(item, port, rest_column + close + 2)?),
                None => {
                    return Err(syntax(
                        item,
                        rest_column + close + 1,
                        "an IPv6 address in brackets is the whole host: only ':port' may follow it",
                    ))
                }
            };
            return Ok(Item { user, host: Host::Address(address), port });
        }
    }

    let mut inside = false;
    let colons: Vec<usize> = rest_bytes
        .iter()
        .enumerate()
        .filter_map(|(i, &c)| {
            match c {
                b'[' => inside = true,
                b']' => inside = false,
                b':' if !inside => return Some(i),
                _ => {}
            }
            None
        })
        .collect();
    match colons[..] {
        [] => Ok(Item { user, host: Host::Pattern(parse_pattern(item, rest, rest_column)?), port: None }),
        [colon] => {
            let host = &rest[..colon];
            if host.is_empty() {
                return Err(syntax(item, rest_column, "a host is missing before ':'"));
            }
            let port = parse_port(item, &rest[colon + 1..], rest_column + colon + 1)?;
            Ok(Item { user, host: Host::Pattern(parse_pattern(item, host, rest_column)?), port: Some(port) })
        }
        // Two colons or more: a bare IPv6 address, which has no port.
        _ => Ok(Item { user, host: Host::Address(parse_address(item, rest, rest_column)?), port: None }),
    }
}

fn check_user(item: &str, user: &str, column: usize) -> Result<(), NodeSetError> {
    if let Some(at) = user.bytes().position(|c| !is_name_char(c)) {
        let problem = match user.as_bytes()[at] {
            b'[' | b']' => "a user name takes no brackets".to_owned(),
            c => format!("a user name takes no '{}'", c as char),
        };
        return Err(syntax(item, column + at, problem));
    }
    if user.starts_with('-') {
        return Err(syntax(item, column, "a user name must not start with '-'"));
    }
    if user.len() > MAX_USER {
        return Err(syntax(item, column, format!("a user name is longer than {MAX_USER} characters")));
    }
    Ok(())
}

/// `text`, an IPv6 address with an optional `%zone`, at `column`; canonical form.
fn parse_address(item: &str, text: &str, column: usize) -> Result<String, NodeSetError> {
    let (address, zone) = match text.split_once('%') {
        Some((address, zone)) => (address, Some(zone)),
        None => (text, None),
    };
    let address: Ipv6Addr =
        address.parse().map_err(|_| syntax(item, column, format!("'{}' is not an IPv6 address", excerpt(text))))?;
    match zone {
        None => Ok(address.to_string()),
        Some(zone) if !zone.is_empty() && zone.len() <= 64 && zone.bytes().all(is_name_char) => {
            Ok(format!("{address}%{zone}"))
        }
        Some(_) => Err(syntax(item, column, format!("'{}' has no valid IPv6 zone after '%'", excerpt(text)))),
    }
}

fn parse_port(item: &str, port: &str, column: usize) -> Result<u16, NodeSetError> {
    if port.is_empty() {
        return Err(syntax(item, column, "a port is missing after ':'"));
    }
    if !port.bytes().all(|c| c.is_ascii_digit()) {
        return Err(syntax(item, column, format!("a port is a number, not '{}'", excerpt(port))));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(syntax(item, column, format!("port {} is not in 1-65535", excerpt(port)))),
    }
}

/// A host pattern: names and `[numbers]`.
fn parse_pattern<'t>(item: &str, host: &'t str, column: usize) -> Result<Vec<Segment<'t>>, NodeSetError> {
    let bytes = host.as_bytes();
    let mut segments = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'[' {
            // Brackets are balanced and flat: the text was checked before it was split.
            let close = i + host[i..].find(']').unwrap_or(host.len() - i);
            let content = &host[i + 1..close.min(host.len())];
            if content.contains(':') {
                return Err(syntax(
                    item,
                    column + i,
                    "a bracket holding ':' is an IPv6 address, which must be the whole host ([::1]:22)",
                ));
            }
            segments.push(Segment::Numbers(parse_runs(item, content, column + i + 1)?));
            i = close + 1;
        } else {
            let end = host[i..].find('[').map_or(host.len(), |n| i + n);
            let text = &host[i..end];
            if let Some(at) = text.bytes().position(|c| !is_name_char(c)) {
                let c = text.as_bytes()[at] as char;
                let problem = match c {
                    ']' => "']' closes no '['".to_owned(),
                    '@' => "a second '@' (one user per target)".to_owned(),
                    _ => format!("a host name takes no '{c}'"),
                };
                return Err(syntax(item, column + i + at, problem));
            }
            segments.push(Segment::Text(text));
            i = end;
        }
    }
    if let Some(Segment::Text(text)) = segments.first() {
        if text.starts_with('-') {
            return Err(syntax(item, column, "a host name must not start with '-'"));
        }
    }
    let width: usize = segments
        .iter()
        .map(|segment| match segment {
            Segment::Text(text) => text.len(),
            Segment::Numbers(runs) => runs.iter().map(Run::width).max().unwrap_or(0),
        })
        .sum();
    if width > MAX_HOST {
        return Err(syntax(item, column, format!("a host name would be longer than {MAX_HOST} characters")));
    }
    Ok(segments)
}

/// The inside of a bracket: `1-10/2,13,015-020`, at `column`.
fn parse_runs(item: &str, content: &str, column: usize) -> Result<Vec<Run>, NodeSetError> {
    if content.bytes().all(is_space) {
        return Err(syntax(item, column - 1, "empty brackets"));
    }
    let mut runs = Vec::new();
    let mut offset = 0;
    for element in content.split(',') {
        let lead = element.bytes().take_while(|&c| is_space(c)).count();
        let at = column + offset + lead;
        offset += element.len() + 1;
        let element = element.trim_matches(|c: char| is_space(c as u8));
        if element.is_empty() {
            return Err(syntax(item, at, "an empty element in brackets"));
        }
        // Each piece with the column it starts at, spaces around it ignored.
        let piece = |from: usize, to: usize| {
            let raw = &element[from..to];
            let lead = raw.bytes().take_while(|&c| is_space(c)).count();
            (raw.trim_matches(|c: char| is_space(c as u8)), at + from + lead)
        };
        let slash = element.find('/');
        let range_end = slash.unwrap_or(element.len());
        let dash = element[..range_end].find('-');
        let start = piece(0, dash.unwrap_or(range_end));
        let end = dash.map(|d| piece(d + 1, range_end));
        let step = slash.map(|s| piece(s + 1, element.len()));
        let number = |digits: &str, at: usize, what: &str| -> Result<u64, NodeSetError> {
            if digits.is_empty() {
                return Err(syntax(item, at, format!("a range needs {what}")));
            }
            if !digits.bytes().all(|c| c.is_ascii_digit()) {
                return Err(syntax(item, at, format!("'{}' is not a number", excerpt(digits))));
            }
            let significant = digits.trim_start_matches('0');
            if significant.len() > MAX_DIGITS {
                return Err(syntax(item, at, format!("'{}' is too large", excerpt(digits))));
            }
            Ok(significant.parse().unwrap_or(0))
        };
        let first = number(start.0, start.1, "a start")?;
        let last = match end {
            // A missing end is pointed at by its '-'.
            Some((end, end_at)) => number(end, if end.is_empty() { at + dash.unwrap_or(0) } else { end_at }, "an end")?,
            None => first,
        };
        let step = match step {
            None => 1,
            Some(_) if end.is_none() => {
                return Err(syntax(item, at + range_end, "a step needs a range (start-end/step)"))
            }
            Some((step, step_at)) => match number(step, step_at, "a step after '/'")? {
                0 => return Err(syntax(item, step_at, "a step must be at least 1")),
                step => step,
            },
        };
        if first > last {
            return Err(syntax(item, at, format!("the range '{}' runs backwards", excerpt(&element[..range_end]))));
        }
        let padded = |digits: &str| digits.len() > 1 && digits.starts_with('0');
        let pad = if padded(start.0) { start.0.len() } else { 0 };
        if let Some((end, end_at)) = end {
            if padded(end) && end.len() != start.0.len() {
                return Err(syntax(
                    item,
                    end_at,
                    format!("'{end}' is padded to another width than '{}' (write both as wide)", start.0),
                ));
            }
        }
        runs.push(Run { start: first, end: last, step, pad });
    }
    Ok(runs)
}

/// Every host a pattern stands for; the caller has checked the count against its budget.
fn expand(segments: &[Segment<'_>]) -> Vec<String> {
    let mut hosts = vec![String::new()];
    for segment in segments {
        match segment {
            Segment::Text(text) => hosts.iter_mut().for_each(|host| host.push_str(text)),
            Segment::Numbers(runs) => {
                let mut next = Vec::new();
                for host in &hosts {
                    for run in runs {
                        let mut n = run.start;
                        loop {
                            next.push(format!("{host}{n:0width$}", width = run.pad));
                            match n.checked_add(run.step) {
                                Some(m) if m <= run.end => n = m,
                                _ => break,
                            }
                        }
                    }
                }
                hosts = next;
            }
        }
    }
    hosts
}

// ---------------------------------------------------------------------------------------------
// Folding.

/// A piece of a host being folded.
#[derive(Clone, Debug)]
enum Part {
    /// Anything but a short run of digits.
    Text(String),
    /// A run of at most [`MAX_DIGITS`] digits, not folded yet.
    Number(String),
    /// Folded numbers: `[1-3,5]`, or one number.
    Folded(String),
}

impl Part {
    fn as_str(&self) -> &str {
        match self {
            Part::Text(s) | Part::Number(s) | Part::Folded(s) => s,
        }
    }

    fn numeric(&self) -> bool {
        !matches!(self, Part::Text(_))
    }
}

/// A folded pattern, with the smallest host it stands for (to order the output).
#[derive(Clone, Debug)]
struct Pattern {
    parts: Vec<Part>,
    first: String,
}

fn render(parts: &[Part]) -> String {
    parts.iter().map(Part::as_str).collect()
}

fn tokenize(host: &str) -> Vec<Part> {
    let mut parts: Vec<Part> = Vec::new();
    let bytes = host.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes[i].is_ascii_digit();
        let len = bytes[i..].iter().take_while(|c| c.is_ascii_digit() == digits).count();
        let run = &host[i..i + len];
        i += len;
        if digits && len <= MAX_DIGITS {
            parts.push(Part::Number(run.to_owned()));
        } else if let Some(Part::Text(text)) = parts.last_mut() {
            text.push_str(run);
        } else {
            parts.push(Part::Text(run.to_owned()));
        }
    }
    parts
}

fn fold_targets(targets: &BTreeSet<Target>) -> String {
    // Targets of one user and port fold together; they come in order, so the groups do too.
    let mut groups: Vec<(Option<&str>, Option<u16>, Vec<&str>)> = Vec::new();
    let mut index: HashMap<(Option<&str>, Option<u16>), usize> = HashMap::new();
    let mut pieces: Vec<(Target, String)> = Vec::new();
    for target in targets {
        if target.host.contains(':') {
            pieces.push((target.clone(), target.to_string()));
            continue;
        }
        let key = (target.user.as_deref(), target.port);
        let at = *index.entry(key).or_insert_with(|| {
            groups.push((key.0, key.1, Vec::new()));
            groups.len() - 1
        });
        groups[at].2.push(&target.host);
    }
    for (user, port, hosts) in groups {
        for pattern in fold_hosts(&hosts) {
            let mut text = String::new();
            if let Some(user) = user {
                text.push_str(user);
                text.push('@');
            }
            text.push_str(&render(&pattern.parts));
            if let Some(port) = port {
                text.push_str(&format!(":{port}"));
            }
            let first = Target { user: user.map(str::to_owned), host: pattern.first, port };
            pieces.push((first, text));
        }
    }
    pieces.sort_by(|a, b| a.0.cmp(&b.0));
    pieces.into_iter().map(|(_, text)| text).collect::<Vec<_>>().join(",")
}

/// A pattern of a pass of [`fold_hosts`], and where it folds: the index of its part that varies
/// and the numbers found there (none if the pattern has too few numbers for this pass).
type Gathered = (Pattern, Option<(usize, Vec<String>)>);

/// Fold distinct host names: on the last number first, then on each number before it among the
/// patterns that agree on everything else.
fn fold_hosts(hosts: &[&str]) -> Vec<Pattern> {
    let mut patterns: Vec<Pattern> =
        hosts.iter().map(|host| Pattern { parts: tokenize(host), first: (*host).to_owned() }).collect();
    let dimensions = patterns.iter().map(|p| p.parts.iter().filter(|part| part.numeric()).count()).max().unwrap_or(0);
    for dimension in 0..dimensions {
        let mut merged: Vec<Gathered> = Vec::new();
        let mut index: HashMap<(String, String), usize> = HashMap::new();
        for pattern in patterns {
            let numeric: Vec<usize> = (0..pattern.parts.len()).filter(|&i| pattern.parts[i].numeric()).collect();
            let Some(&k) = numeric.len().checked_sub(dimension + 1).and_then(|n| numeric.get(n)) else {
                merged.push((pattern, None));
                continue;
            };
            let key = (render(&pattern.parts[..k]), render(&pattern.parts[k + 1..]));
            let number = pattern.parts[k].as_str().to_owned();
            match index.get(&key) {
                Some(&at) => {
                    let (into, numbers) = &mut merged[at];
                    if natural_cmp(&pattern.first, &into.first) == Ordering::Less {
                        into.first = pattern.first;
                    }
                    if let Some((_, numbers)) = numbers {
                        numbers.push(number);
                    }
                }
                None => {
                    index.insert(key, merged.len());
                    merged.push((pattern, Some((k, vec![number]))));
                }
            }
        }
        patterns = merged
            .into_iter()
            .map(|(mut pattern, numbers)| {
                if let Some((k, numbers)) = numbers {
                    pattern.parts[k] = Part::Folded(fold_numbers(&numbers));
                }
                pattern
            })
            .collect();
    }
    patterns
}

/// Fold distinct runs of digits (each at most [`MAX_DIGITS`] long) into `[...]`, or leave one
/// alone. Numbers written with leading zeros keep their width; others join whichever width
/// renders them as written (`100` fits `[098-100]`), preferring one where they continue a range.
fn fold_numbers(numbers: &[String]) -> String {
    if let [one] = numbers {
        return one.clone();
    }
    // (value, written width, forced width): forced when written with leading zeros.
    let mut parsed: Vec<(u64, usize, Option<usize>)> = numbers
        .iter()
        .map(|s| {
            let forced = (s.len() > 1 && s.starts_with('0')).then_some(s.len());
            (s.parse().unwrap_or(0), s.len(), forced)
        })
        .collect();
    parsed.sort_unstable();
    let forced: HashSet<(usize, u64)> = parsed.iter().filter_map(|&(v, _, f)| f.map(|f| (f, v))).collect();
    let widths: BTreeSet<usize> = forced.iter().map(|&(f, _)| f).collect();
    let mut classes: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for &(value, written, force) in &parsed {
        let class = force.unwrap_or_else(|| {
            let candidates = || std::iter::once(0).chain(widths.range(..=written).copied()).rev();
            let continues = |c: &usize| {
                value.checked_sub(1).is_some_and(|before| classes.get(c).and_then(|v| v.last()) == Some(&before))
            };
            let precedes = |c: &usize| value.checked_add(1).is_some_and(|after| forced.contains(&(*c, after)));
            candidates().find(continues).or_else(|| candidates().find(precedes)).unwrap_or(0)
        });
        classes.entry(class).or_default().push(value);
    }
    let mut ranges: Vec<(u64, usize, String)> = Vec::new();
    for (width, values) in classes {
        let mut i = 0;
        while i < values.len() {
            let mut j = i;
            while j + 1 < values.len() && values[j + 1] == values[j] + 1 {
                j += 1;
            }
            let (a, b) = (values[i], values[j]);
            let text = if a == b { format!("{a:0width$}") } else { format!("{a:0width$}-{b:0width$}") };
            ranges.push((a, width, text));
            i = j + 1;
        }
    }
    ranges.sort_unstable();
    let inner: Vec<String> = ranges.into_iter().map(|(_, _, text)| text).collect();
    format!("[{}]", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> NodeSet {
        NodeSet::parse(text, &NoGroups).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn hosts(text: &str) -> Vec<String> {
        parse(text).iter().map(Target::to_string).collect()
    }

    fn error(text: &str) -> String {
        match NodeSet::parse(text, &NoGroups) {
            Ok(set) => panic!("{text} parsed to {set}"),
            Err(e) => e.to_string(),
        }
    }

    fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn plain_names_and_ranges() {
        assert_eq!(hosts("web1"), ["web1"]);
        assert_eq!(hosts("local,localhost"), ["local", "localhost"]);
        assert_eq!(hosts("web[1-3]"), ["web1", "web2", "web3"]);
        assert_eq!(hosts("web[1,3,5-7]"), ["web1", "web3", "web5", "web6", "web7"]);
        assert_eq!(hosts("web[1-10/3]"), ["web1", "web4", "web7", "web10"]);
        assert_eq!(hosts("web[1-10/2]"), ["web1", "web3", "web5", "web7", "web9"]);
        assert_eq!(hosts("[1-2]web"), ["1web", "2web"]);
        assert_eq!(hosts("web[ 1 - 2 , 4 ]"), ["web1", "web2", "web4"], "spaces in brackets are ignored");
        assert_eq!(hosts("web[1-5 / 2]"), ["web1", "web3", "web5"]);
        assert_eq!(hosts("10.0.0.[1-2]"), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(parse("").len(), 0);
        assert_eq!(parse("  ").len(), 0);
        assert_eq!(parse("web[1-3],web[2-4]").len(), 4, "duplicates count once");
    }

    #[test]
    fn padding() {
        assert_eq!(hosts("web[01-03]"), ["web01", "web02", "web03"]);
        assert_eq!(hosts("web[001-002]"), ["web001", "web002"]);
        let set = hosts("web[098-100]");
        assert_eq!(set, ["web098", "web099", "web100"]);
        assert_eq!(hosts("web[08-10]"), ["web08", "web09", "web10"]);
        assert_eq!(hosts("web[00-01]"), ["web00", "web01"]);
        assert_eq!(hosts("web[0-1]"), ["web0", "web1"]);
        // The width comes from the start; an unpadded end says nothing.
        assert_eq!(hosts("web[01-3]"), ["web01", "web02", "web03"]);
        // Each element keeps its own width, so these are different hosts.
        assert_eq!(hosts("web[1,01,001]"), ["web1", "web01", "web001"]);
        assert_eq!(hosts("web[9-10,09]"), ["web9", "web09", "web10"]);
        assert!(error("web[01-010]").contains("padded to another width"), "{}", error("web[01-010]"));
        assert!(error("web[1-010]").contains("padded to another width"));
    }

    #[test]
    fn cartesian() {
        let set = hosts("dc[1-2]n[1-4]");
        assert_eq!(set.len(), 8);
        assert_eq!(set[..5], ["dc1n1", "dc1n2", "dc1n3", "dc1n4", "dc2n1"]);
        assert_eq!(parse("r[1-3]c[01-02]n[1-5]").len(), 30);
        assert_eq!(hosts("a[1-2]-[3-4]"), ["a1-3", "a1-4", "a2-3", "a2-4"]);
    }

    #[test]
    fn natural_order() {
        assert_eq!(hosts("web10,web2,web1,db3"), ["db3", "web1", "web2", "web10"]);
        assert_eq!(hosts("n1x,n2,n10,n1"), ["n1", "n1x", "n2", "n10"]);
        assert_eq!(natural_cmp("web01", "web1"), Ordering::Greater);
        assert_eq!(natural_cmp("web01", "web01"), Ordering::Equal);
        assert_eq!(natural_cmp("a99999999999999999999999", "a100000000000000000000000"), Ordering::Less);
        assert_eq!(hosts("b@web1,web1,a@web1,web1:22"), ["web1", "web1:22", "a@web1", "b@web1"]);
    }

    #[test]
    fn operators_left_to_right() {
        assert_eq!(hosts("web[1-5]!web[2-3]"), ["web1", "web4", "web5"]);
        assert_eq!(hosts("web[1-5]&web[4-9]"), ["web4", "web5"]);
        assert_eq!(hosts("web[1-3]^web[3-4]"), ["web1", "web2", "web4"]);
        // No precedence: (a,b)&b, not a,(b&b); (a!a),a, not a!(a,a).
        assert_eq!(hosts("a,b&b"), ["b"]);
        assert_eq!(hosts("a!a,a"), ["a"]);
        assert_eq!(hosts("a,b!b,c"), ["a", "c"]);
        assert_eq!(hosts("a^b^a"), ["b"]);
        assert_eq!(hosts("n[1-9] ! n[2-8] , m1"), ["m1", "n1", "n9"]);
        assert_eq!(hosts(" a ,\tb\n"), ["a", "b"]);
        assert!(error("a b").contains("whitespace inside a name"));
        assert_eq!(error("!a"), "!a: '!' needs something before it at column 1");
        assert_eq!(error("a,"), "a,: ',' needs something after it at column 2");
        assert_eq!(error("a,,b"), "a,,b: ',' needs something after it at column 2");
        assert_eq!(error("a&!b"), "a&!b: '&' needs something after it at column 2");
    }

    #[test]
    fn users_and_ports() {
        let set = parse("admin@web[1-3]:2222");
        assert_eq!(set.len(), 3);
        for (i, target) in set.iter().enumerate() {
            assert_eq!(target, &Target::new(format!("web{}", i + 1)).with_user("admin").with_port(2222));
        }
        assert_eq!(hosts("root@db1,db2:22,web1"), ["root@db1", "db2:22", "web1"]);
        // On the right of ! and &, what an item leaves out matches anything.
        assert_eq!(hosts("admin@web[1-3]!web2"), ["admin@web1", "admin@web3"]);
        assert_eq!(hosts("admin@web[1-3]:22!web2:23"), ["admin@web1:22", "admin@web2:22", "admin@web3:22"]);
        assert_eq!(hosts("admin@web[1-3]&web2"), ["admin@web2"]);
        assert_eq!(hosts("web[1-3]!admin@web2"), ["web1", "web2", "web3"]);
        assert_eq!(hosts("a@x^x"), ["x", "a@x"]);
        assert_eq!(error("a@b@c"), "a@b@c: a second '@' (one user per target) at column 4");
        assert_eq!(error("web1:"), "web1:: a port is missing after ':' at column 6");
        assert_eq!(error("web1:0"), "web1:0: port 0 is not in 1-65535 at column 6");
        assert_eq!(error("web1:70000"), "web1:70000: port 70000 is not in 1-65535 at column 6");
        assert_eq!(error("web1:ssh"), "web1:ssh: a port is a number, not 'ssh' at column 6");
        assert_eq!(error("admin@"), "admin@: a host is missing at column 7");
        assert_eq!(error("a[1]@b"), "a[1]@b: a user name takes no brackets at column 2");
        assert_eq!(error("-oProxy@b"), "-oProxy@b: a user name must not start with '-' at column 1");
        assert_eq!(error("-oProxyCommand=x"), "-oProxyCommand=x: a host name takes no '=' at column 15");
        assert_eq!(error("-web1"), "-web1: a host name must not start with '-' at column 1");
        assert_eq!(error(":22"), ":22: a host is missing before ':' at column 1");
        assert_eq!("admin@web1:2222".parse::<Target>(), Ok(Target::new("web1").with_user("admin").with_port(2222)));
        assert!("web[1-2]".parse::<Target>().is_err());
    }

    #[test]
    fn ipv6() {
        assert_eq!(hosts("[::1]"), ["::1"]);
        let set = parse("root@[fe80::0001]:2222");
        let target = set.iter().next().unwrap();
        assert_eq!(target, &Target::new("fe80::1").with_user("root").with_port(2222));
        assert_eq!(target.to_string(), "root@[fe80::1]:2222");
        assert_eq!(hosts("fe80::1,::1"), ["::1", "fe80::1"]);
        assert_eq!(hosts("[fe80::1%eth0]:22"), ["[fe80::1%eth0]:22"]);
        assert_eq!(hosts("[::1],[::1]:22"), ["::1", "[::1]:22"]);
        assert_eq!(error("[::g]"), "[::g]: '::g' is not an IPv6 address at column 2");
        assert_eq!(
            error("[::1]x"),
            "[::1]x: an IPv6 address in brackets is the whole host: only ':port' may follow it at column 6"
        );
        assert!(error("web[1:2]").contains("must be the whole host"));
        assert!(error("[::1]:99999").contains("not in 1-65535"));
    }

    #[test]
    fn syntax_errors_name_the_place() {
        assert_eq!(error("web[1-]"), "web[1-]: a range needs an end at column 6");
        assert_eq!(error("web[-3]"), "web[-3]: a range needs a start at column 5");
        assert_eq!(error("web[]"), "web[]: empty brackets at column 4");
        assert_eq!(error("web[1,,2]"), "web[1,,2]: an empty element in brackets at column 7");
        assert_eq!(error("web[3-1]"), "web[3-1]: the range '3-1' runs backwards at column 5");
        assert_eq!(error("web[1-4/0]"), "web[1-4/0]: a step must be at least 1 at column 9");
        assert_eq!(error("web[1-4/]"), "web[1-4/]: a range needs a step after '/' at column 9");
        assert_eq!(error("web[3/2]"), "web[3/2]: a step needs a range (start-end/step) at column 6");
        assert_eq!(error("web[a-b]"), "web[a-b]: 'a' is not a number at column 5");
        assert_eq!(error("web[1-3"), "web[1-3: this '[' is never closed at column 4");
        assert_eq!(error("web1-3]"), "web1-3]: ']' closes no '[' at column 7");
        assert_eq!(error("web[[1]]"), "web[[1]]: brackets do not nest at column 5");
        assert_eq!(
            error("x,web[1-9999999999999999999]"),
            "web[1-9999999999999999999]: '9999999999999999999' is too large at column 9"
        );
        assert_eq!(error("wéb"), "w\\u{e9}b: unexpected character '\\u{e9}' at column 2");
        assert_eq!(error("a\0b"), "a\\u{0}b: unexpected character '\\u{0}' at column 2");
        assert_eq!(error("a\u{1b}[31m"), "a\\u{1b}[31m: unexpected character '\\u{1b}' at column 2");
        assert_eq!(error("w(x)"), "w(x): a host name takes no '(' at column 2");
        assert_eq!(error("a,b(1)"), "b(1): a host name takes no '(' at column 4");
        let long = format!("{}(", "a".repeat(100));
        assert!(error(&long).starts_with(&format!("{}...: ", "a".repeat(57))), "errors quote a long part shortened");
    }

    #[test]
    fn limits() {
        assert_eq!(error("n[1-999999999]"), "n[1-999999999]: expands past the limit of 1000000 targets at column 1");
        assert!(error("a[1-999999999]b[1-999999999]c[1-999999999]").contains("limit of 1000000"));
        let limits = Limits::default().with_max_targets(10);
        assert_eq!(NodeSet::parse_with("n[1-10]", &NoGroups, &limits).map(|s| s.len()), Ok(10));
        // Every item counts, even one that the result then drops.
        let refused = NodeSet::parse_with("n[1-6]!n[1-6]", &NoGroups, &limits).unwrap_err();
        assert_eq!(refused.to_string(), "n[1-6]: expands past the limit of 10 targets at column 8");
        let limits = Limits::default().with_max_len(8);
        assert_eq!(NodeSet::parse_with("n[1-123]", &NoGroups, &limits).map(|s| s.len()), Ok(123));
        assert_eq!(NodeSet::parse_with("n[1-1234]", &NoGroups, &limits), Err(NodeSetError::TooLong { limit: 8 }));
        let long = format!("a{}", "b".repeat(255));
        assert!(error(&long).contains("longer than 255"));
        assert!(error(&format!("a[{}1-2]", "0".repeat(300))).contains("longer than 255"));
        assert!(error(&format!("{}@h", "u".repeat(65))).contains("longer than 64"));
    }

    #[test]
    fn groups() {
        let groups = map(&[
            ("web", "web[1-4]"),
            ("db", "db[1-2]"),
            ("all", "@web,@db"),
            ("down", "web2,db1"),
            ("up", "@all!@down"),
            ("rack:a", "r1n[1-2]"),
            ("cycle", "x,@cycle2"),
            ("cycle2", "@cycle"),
            ("self", "@self"),
            ("broken", "a,web[1-]"),
            ("missing", "@nowhere"),
            ("empty", ""),
        ]);
        let parse = |text: &str| NodeSet::parse(text, &groups);
        let hosts = |text: &str| parse(text).unwrap().iter().map(Target::to_string).collect::<Vec<_>>();
        assert_eq!(hosts("@web"), ["web1", "web2", "web3", "web4"]);
        assert_eq!(hosts("@up"), ["db2", "web1", "web3", "web4"]);
        assert_eq!(hosts("@all!@down&db[1-9]"), ["db2"]);
        assert_eq!(hosts("@rack:a"), ["r1n1", "r1n2"]);
        assert_eq!(hosts("@empty,a"), ["a"]);
        assert_eq!(hosts("@web,@web,@web!web1"), ["web2", "web3", "web4"], "a group used again");
        assert_eq!(parse("a,@nope").unwrap_err(), NodeSetError::UnknownGroup { name: "nope".into(), column: 3 });
        assert_eq!(
            parse("@missing").unwrap_err().to_string(),
            "in group @missing: @nowhere: no such group at column 1"
        );
        assert_eq!(
            parse("@cycle").unwrap_err().to_string(),
            "in group @cycle: in group @cycle2: @cycle: the group contains itself (@cycle → @cycle2 → @cycle) at column 1"
        );
        assert!(matches!(parse("@self"), Err(NodeSetError::InGroup { .. })));
        assert_eq!(
            parse("@broken").unwrap_err().to_string(),
            "in group @broken: web[1-]: a range needs an end at column 8"
        );
        assert_eq!(parse("@").unwrap_err().to_string(), "@: a group name is missing after '@' at column 1");
        assert_eq!(parse("@a[1]").unwrap_err().to_string(), "@a[1]: a group name takes no brackets at column 3");

        // Lists, closures, and depth.
        let lists = |name: &str| match name {
            "pair" => Some(Members::List(vec!["a".into(), "b[1-2]".into(), "@one".into()])),
            "one" => Some(Members::Text("c".into())),
            _ => name
                .strip_prefix("deep")
                .and_then(|n| n.parse::<u32>().ok())
                .map(|n| Members::Text(if n == 0 { "leaf".into() } else { format!("@deep{}", n - 1) })),
        };
        let set = NodeSet::parse("@pair", &lists).unwrap();
        assert_eq!(set.fold(), "a,b[1-2],c");
        assert_eq!(NodeSet::parse("@deep15", &lists).unwrap().fold(), "leaf", "16 groups deep");
        let mut error = NodeSet::parse("@deep16", &lists).unwrap_err();
        while let NodeSetError::InGroup { error: inner, .. } = error {
            error = *inner;
        }
        assert_eq!(error, NodeSetError::GroupTooDeep { name: "deep0".into(), limit: 16, column: 1 });

        // A group's text counts towards the length limit and its targets towards the target limit.
        let groups = map(&[("big", "n[1-8]")]);
        let limits = Limits::default().with_max_targets(20);
        assert_eq!(NodeSet::parse_with("@big,@big", &groups, &limits).map(|s| s.len()), Ok(8));
        assert!(matches!(
            NodeSet::parse_with("@big,@big,@big", &groups, &limits),
            Err(NodeSetError::TooManyTargets { limit: 20, column: 11, .. })
        ));
        let limits = Limits::default().with_max_len(8);
        assert!(matches!(
            NodeSet::parse_with("@big", &groups, &limits),
            Err(NodeSetError::InGroup { error, .. }) if *error == NodeSetError::TooLong { limit: 8 }
        ));
    }

    #[test]
    fn folding() {
        assert_eq!(fold(["web01", "web02", "web03", "web05"]), "web[01-03,05]");
        assert_eq!(fold(["web3", "web1", "web2", "web2"]), "web[1-3]");
        assert_eq!(fold(["web1"]), "web1");
        assert_eq!(fold(Vec::<String>::new()), "");
        assert_eq!(parse("web[098-100]").fold(), "web[098-100]");
        assert_eq!(parse("web[1-100]").fold(), "web[1-100]");
        assert_eq!(parse("web[1-10],web[01-10]").fold(), "web[1-9,01-10]");
        assert_eq!(parse("web[1,01,001]").fold(), "web[1,01,001]");
        assert_eq!(parse("dc[1-2]n[1-4]").fold(), "dc[1-2]n[1-4]");
        assert_eq!(parse("dc[1-2]n[1-4]!dc2n4").fold(), "dc1n[1-4],dc2n[1-3]");
        assert_eq!(parse("r[1-3]c[01-02]n[1-5]").fold(), "r[1-3]c[01-02]n[1-5]");
        assert_eq!(parse("10.0.[0-1].[1-5]").fold(), "10.0.[0-1].[1-5]");
        assert_eq!(parse("web[1-3],db1,web5").fold(), "db1,web[1-3,5]");
        assert_eq!(parse("admin@web[1-3]:2222,web[1-2]").fold(), "web[1-2],admin@web[1-3]:2222");
        assert_eq!(parse("a@n1,b@n2,n3:22").fold(), "a@n1,b@n2,n3:22");
        assert_eq!(parse("[::1]:22,[::2],n1").fold(), "[::1]:22,::2,n1");
        assert_eq!(fold(["admin@web1:22", "admin@web2:22", "not one", "x[1-2]"]), "admin@web[1-2]:22,not one,x[1-2]");
        let long = format!("n{}", "1".repeat(30));
        assert_eq!(fold([long.as_str(), "n1"]), format!("n1,{long}"));
        for text in [
            "web[01-03,05]",
            "web[1-10],web[01-10],web[001-100]",
            "web[8-12],web[08-12],web[008-012]",
            "a[0-3],a[00-03]",
            "dc[1-3]n[1-4]!dc2n[2-3]",
            "x[1-3]y[1-3]z[1-3]!x2y2z2",
            "admin@web[1-3]:22,root@web[2-4],web[1-9]:23,[::1],[fe80::1]:22",
            "n1x,n2,n10,n1,n1y2",
        ] {
            let set = parse(text);
            let folded = set.fold();
            assert_eq!(parse(&folded), set, "{text} folded to {folded}");
        }
    }

    /// A small deterministic generator (xorshift), so the tests need no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn garbled_input_never_panics_and_stays_bounded() {
        const FRAGMENTS: &[&str] = &[
            "web",
            "n",
            "db",
            "0",
            "1",
            "9",
            "01",
            "007",
            "10",
            "999999999",
            "[",
            "]",
            "-",
            "/",
            "/2",
            ",",
            "!",
            "&",
            "^",
            "@",
            "@g",
            "@cyc",
            "@deep",
            "@nope",
            ":",
            ":22",
            "::",
            "::1",
            "[::1]",
            "fe80",
            "%",
            "user@",
            " ",
            "\t",
            "é",
            "\0",
            ".",
            "_",
            "[1-3]",
            "[01-10]",
            "[1-9999]",
            "x[1-50]",
            "(",
            "*",
            "@g:x",
        ];
        let groups = map(&[
            ("g", "web[1-5],@deep"),
            ("g:x", "q[1-3]"),
            ("cyc", "a,@cyc"),
            ("deep", "@deeper!web3"),
            ("deeper", "web[1-10]"),
        ]);
        let limits = Limits::default().with_max_targets(5_000).with_max_len(300);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut ok, mut failed) = (0, 0);
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..rng.below(12) {
                if rng.below(5) == 0 {
                    // A raw byte now and then, valid UTF-8 or not (lossily).
                    let byte = [rng.below(256) as u8];
                    text.push_str(&String::from_utf8_lossy(&byte));
                } else {
                    text.push_str(FRAGMENTS[rng.below(FRAGMENTS.len())]);
                }
            }
            match NodeSet::parse_with(&text, &groups, &limits) {
                Ok(set) => {
                    ok += 1;
                    assert!(set.len() <= 5_000, "{text:?} gave {} targets", set.len());
                    let folded = set.fold();
                    let again = NodeSet::parse(&folded, &NoGroups);
                    assert_eq!(again.as_ref(), Ok(&set), "{text:?} folded to {folded:?}");
                }
                Err(error) => {
                    failed += 1;
                    let message = error.to_string();
                    assert!(!message.is_empty() && message.len() < 1000, "{text:?}: {message}");
                }
            }
            // The same text without the groups, and as one target.
            let _ = NodeSet::parse_with(&text, &NoGroups, &limits);
            let _ = text.parse::<Target>();
        }
        assert!(ok > 1_000 && failed > 1_000, "the generator should make both: {ok} parsed, {failed} refused");
    }

    #[test]
    fn random_sets_fold_and_parse_back() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..500 {
            let mut set = NodeSet::new();
            for _ in 0..rng.below(40) + 1 {
                let prefix = ["web", "db", "n", "r1n", "x-"][rng.below(5)];
                let width = [0, 0, 2, 3][rng.below(4)];
                let mut host = format!("{prefix}{:0width$}", rng.below(30));
                if rng.below(3) == 0 {
                    host.push_str(&format!("c{}", rng.below(4)));
                }
                let mut target = Target::new(host);
                if rng.below(6) == 0 {
                    target = target.with_user(["admin", "root"][rng.below(2)]);
                }
                if rng.below(6) == 0 {
                    target = target.with_port([22, 2222][rng.below(2)]);
                }
                set.insert(target);
            }
            let folded = set.fold();
            assert_eq!(NodeSet::parse(&folded, &NoGroups).as_ref(), Ok(&set), "folded to {folded}");
            assert!(folded.len() <= set.iter().map(|t| t.to_string().len() + 1).sum::<usize>());
        }
    }
}

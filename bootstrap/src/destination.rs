//! `[user@]host[:port]`: where the SSH methods connect, in the one syntax both take.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::BootError;

/// Where an SSH method connects: `[user@]host[:port]`, as `ssh` and `ssh -J` write it.
///
/// - `web1`, `alice@web1`, `alice@web1:2222`, `10.0.0.5:22`;
/// - IPv6 in brackets, with or without a port (`[::1]:2222`, `alice@[fe80::1%eth0]`), or bare
///   without one (`::1`, `alice@::1`).
///
/// The user is everything before the last `@` (`alice@corp@web1` logs in as `alice@corp`). What
/// is left out is the method's to choose (see [`Ssh::new`](crate::Ssh::new) and
/// [`OpenSsh::new`](crate::OpenSsh::new)).
///
/// A destination ends up in `ssh`'s arguments and in known_hosts lines, so parsing refuses what
/// could be read as something else there: an empty user, host or port; a port that is not a
/// number from 1 to 65535; whitespace or control characters anywhere; a user or host that starts
/// with `-` (an option, to `ssh`); a `,` (which separates `-J` hosts); the characters OpenSSH
/// refuses in host names (`` '"`$\;&<>|(){} ``); `@`, `[` or `]` in a host, and `:` in a host that
/// is not an IPv6 address.
///
/// ```
/// use hypha_bootstrap::Destination;
///
/// let d: Destination = "alice@[::1]:2222".parse().unwrap();
/// assert_eq!((d.user(), d.host(), d.port()), (Some("alice"), "::1", Some(2222)));
/// assert_eq!(d.to_string(), "alice@[::1]:2222");
/// assert!("web1:99999".parse::<Destination>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    user: Option<String>,
    host: String,
    port: Option<u16>,
}

/// A string that is not a [`Destination`], and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a destination ([user@]host[:port]): {why}")]
pub struct DestinationError {
    input: String,
    why: String,
}

impl DestinationError {
    /// The text that was refused.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl Destination {
    /// A destination of its parts, checked as parsing checks them.
    pub fn new(user: Option<&str>, host: &str, port: Option<u16>) -> Result<Destination, DestinationError> {
        let input = format(user, host, port);
        let refuse = |why| DestinationError { input: input.clone(), why };
        if let Some(user) = user {
            check_user(user).map_err(refuse)?;
        }
        check_host(host).map_err(refuse)?;
        if port == Some(0) {
            return Err(refuse("the port 0 is not from 1 to 65535".into()));
        }
        Ok(Destination { user: user.map(str::to_owned), host: host.to_owned(), port })
    }

    /// The user to log in as, if one was given.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The host name or address (an IPv6 address without its brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, if one was given.
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

impl FromStr for Destination {
    type Err = DestinationError;

    fn from_str(s: &str) -> Result<Destination, DestinationError> {
        let refuse = |why| DestinationError { input: s.to_owned(), why };
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(refuse("it holds whitespace or a control character".into()));
        }
        let (user, rest) = match s.rsplit_once('@') {
            Some((user, rest)) => (Some(user), rest),
            None => (None, s),
        };
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(|| refuse("a '[' without its ']'".into()))?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(refuse("something other than :PORT after ']'".into())),
                },
            }
        } else {
            match rest.split_once(':') {
                // Two colons or more: a bare IPv6 address, which has no room for a port.
                Some((_, tail)) if tail.contains(':') => (rest, None),
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        let port = match port {
            None => None,
            Some(digits) => Some(parse_port(digits).map_err(refuse)?),
        };
        let user = user.map(|u| check_user(u).map(|()| u)).transpose().map_err(refuse)?;
        check_host(host).map_err(refuse)?;
        Ok(Destination { user: user.map(str::to_owned), host: host.to_owned(), port })
    }
}

impl fmt::Display for Destination {
    /// `[user@]host[:port]`, with an IPv6 address in brackets: text that parses back to the same.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.user(), &self.host, self.port))
    }
}

/// The start of `target` fails: its destination (or a jump host's, `what` says which) is not one.
pub(crate) fn invalid(target: String, what: &str, e: DestinationError) -> BootError {
    BootError::start(target, format!("{what}{e}"), Some(Box::new(e)))
}

/// `[user@]host[:port]`, bracketing a host that holds a `:` (an IPv6 address).
pub(crate) fn format(user: Option<&str>, host: &str, port: Option<u16>) -> String {
    let mut out = String::with_capacity(host.len() + 16);
    if let Some(user) = user {
        out.push_str(user);
        out.push('@');
    }
    if host.contains(':') {
        out.push('[');
        out.push_str(host);
        out.push(']');
    } else {
        out.push_str(host);
    }
    if let Some(port) = port {
        out.push(':');
        out.push_str(&port.to_string());
    }
    out
}

/// Characters OpenSSH refuses in host names (`valid_hostname`), and `,`, which separates jump hosts.
const REFUSED: &[char] = &['\'', '`', '"', '$', '\\', ';', '&', '<', '>', '|', '(', ')', '{', '}', ','];

/// What a user and a host must both be: not empty, no option, nothing ssh or a shell reads
/// specially.
fn check_part(part: &str, what: &str) -> Result<(), String> {
    if part.is_empty() {
        Err(format!("the {what} is empty"))
    } else if part.starts_with('-') {
        Err(format!("the {what} starts with '-'"))
    } else if let Some(c) = part.chars().find(|c| c.is_whitespace() || c.is_control() || REFUSED.contains(c)) {
        Err(format!("the {what} holds {c:?}, which ssh refuses"))
    } else {
        Ok(())
    }
}

fn check_user(user: &str) -> Result<(), String> {
    check_part(user, "user before '@'")
}

fn check_host(host: &str) -> Result<(), String> {
    check_part(host, "host")?;
    if let Some(c) = host.chars().find(|c| "@[]".contains(*c)) {
        return Err(format!("the host holds {c:?}"));
    }
    if host.contains(':') {
        // An IPv6 address, with a zone (`%eth0`) perhaps.
        let (address, zone) = host.split_once('%').unwrap_or((host, "x"));
        let zone_ok = !zone.is_empty() && zone.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if address.parse::<Ipv6Addr>().is_err() || !zone_ok {
            return Err("a host with ':' must be an IPv6 address (with a port: [ADDRESS]:PORT)".into());
        }
    }
    Ok(())
}

fn parse_port(digits: &str) -> Result<u16, String> {
    if digits.is_empty() {
        return Err("the port after ':' is empty".into());
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("the port {digits:?} is not a number"));
    }
    match digits.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("the port {digits} is not from 1 to 65535")),
        Ok(port) => Ok(port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> (Option<String>, String, Option<u16>) {
        let d: Destination = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
        (d.user.clone(), d.host.clone(), d.port)
    }

    #[test]
    fn destinations_parse_into_user_host_and_port() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(parts("web1"), (None, "web1".into(), None));
        assert_eq!(parts("alice@web1"), (some("alice"), "web1".into(), None));
        assert_eq!(parts("alice@web1:2222"), (some("alice"), "web1".into(), Some(2222)));
        assert_eq!(parts("127.0.0.1:22"), (None, "127.0.0.1".into(), Some(22)));
        assert_eq!(parts("alice@corp@web1"), (some("alice@corp"), "web1".into(), None));
        assert_eq!(parts("[::1]:2222"), (None, "::1".into(), Some(2222)));
        assert_eq!(parts("bob@[::1]"), (some("bob"), "::1".into(), None));
        assert_eq!(parts("::1"), (None, "::1".into(), None));
        assert_eq!(parts("bob@::1"), (some("bob"), "::1".into(), None));
        assert_eq!(parts("[fe80::1%lo]:22"), (None, "fe80::1%lo".into(), Some(22)));
        assert_eq!(parts("[localhost]:65535"), (None, "localhost".into(), Some(65535)));
    }

    #[test]
    fn display_parses_back_to_the_same() {
        for s in ["web1", "alice@web1:2222", "[::1]:2222", "::1", "bob@::1", "[localhost]:22"] {
            let d: Destination = s.parse().unwrap();
            let again: Destination = d.to_string().parse().unwrap();
            assert_eq!(d, again, "{s} → {d}");
        }
        assert_eq!("::1".parse::<Destination>().unwrap().to_string(), "[::1]");
        assert_eq!("[localhost]:22".parse::<Destination>().unwrap().to_string(), "localhost:22");
    }

    #[test]
    fn hostile_or_broken_destinations_are_refused_saying_why() {
        for (input, why) in [
            ("", "host is empty"),
            ("a@", "host is empty"),
            ("@web1", "user before '@' is empty"),
            ("web1:", "port after ':' is empty"),
            ("web1:99999", "not from 1 to 65535"),
            ("web1:0", "not from 1 to 65535"),
            ("web1:x", "not a number"),
            ("web1:+22", "not a number"),
            ("web1:-1", "not a number"),
            ("[::1", "without its ']'"),
            ("[::1]2222", "after ']'"),
            ("[::1]:", "port after ':' is empty"),
            ("[]:22", "host is empty"),
            ("::zz", "IPv6 address"),
            ("[web1:22]:22", "IPv6 address"),
            ("web 1", "whitespace"),
            (" web1", "whitespace"),
            ("web1\n", "whitespace"),
            ("web1\0", "control character"),
            ("-oProxyCommand=sh", "host starts with '-'"),
            ("-oProxyCommand=sh@web1", "user before '@' starts with '-'"),
            ("alice@-web1", "host starts with '-'"),
            ("[-web1]:22", "host starts with '-'"),
            ("web1;reboot", "host holds ';', which ssh refuses"),
            ("web1,web2", "host holds ',', which ssh refuses"),
            ("$(id)@web1", "user before '@' holds '$'"),
            ("a@[b@c]:22", "host holds ']'"),
        ] {
            let err = input.parse::<Destination>().expect_err(input);
            assert!(err.to_string().contains(why), "{input:?}: {err}");
            assert_eq!(err.input(), input);
            assert!(err.to_string().contains(&format!("{input:?}")), "names the input: {err}");
        }
    }

    #[test]
    fn parts_are_checked_as_parsing_checks_them() {
        assert!(Destination::new(Some("alice"), "::1", Some(22)).is_ok());
        assert!(Destination::new(Some("-l"), "web1", None).is_err());
        assert!(Destination::new(None, "-oX", None).is_err());
        assert!(Destination::new(None, "web1", Some(0)).is_err());
        assert!(Destination::new(None, "", None).is_err());
        assert!(Destination::new(None, "web1:22", None).is_err());
    }
}

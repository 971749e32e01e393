//! From the targets' text to the method that reaches each.
//!
//! `local`, `localhost` and `local` followed by digits (`local[1-10]` is ten) are local contexts,
//! children of this process, unless they name a user or a port (`alice@localhost` goes through
//! sshd). Every other target goes over SSH, with the method `--method` names.

use hypha::nodeset::{NodeSet, Target};
use hypha::{HostKeyPolicy, Local, Method, OpenSsh, Ssh};

use super::args::{MethodKind, Reach};
use super::config::{Config, Params};

/// What is wrong with the command line, beyond what clap sees: exit status 64.
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// How one host is reached: the method that starts its context, the gateways whose agents start
/// it (none: this process does), and the user it becomes there with sudo.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Plan {
    /// The host, as the targets name it (and as the output prints it).
    pub(crate) name: String,
    pub(crate) way: Way,
    pub(crate) via: Vec<String>,
    pub(crate) sudo: Option<String>,
}

/// A method, as a value: boxed for a start from here, or as itself for a start through a gateway
/// (which needs the method's type).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) enum Way {
    Local(Local),
    Ssh(Ssh),
    OpenSsh(OpenSsh),
}

impl Way {
    pub(crate) fn boxed(self) -> Box<dyn Method> {
        match self {
            Way::Local(m) => Box::new(m),
            Way::Ssh(m) => Box::new(m),
            Way::OpenSsh(m) => Box::new(m),
        }
    }
}

/// Each target of `text` (its `@group`s those of `config`), with how to reach it: what the
/// command line says, else what `config` says of the host.
pub(crate) fn plans(text: &str, reach: &Reach, config: &Config) -> Result<Vec<Plan>, Usage> {
    plan_all(text, reach, config, false)
}

/// How to reach one gateway of `--via` (or of a group's `via`): as a host, without gateways or
/// sudo of its own.
pub(crate) fn gateway(text: &str, reach: &Reach, config: &Config) -> Result<Plan, Usage> {
    let mut plans = plan_all(text, reach, config, true).map_err(|e| Usage(format!("via {text}: {e}")))?;
    match (plans.pop(), plans.is_empty()) {
        (Some(plan), true) => Ok(plan),
        _ => Err(Usage(format!("via {text}: a gateway is one host"))),
    }
}

fn plan_all(text: &str, reach: &Reach, config: &Config, gateway: bool) -> Result<Vec<Plan>, Usage> {
    let set = NodeSet::parse(text, config).map_err(|e| Usage(format!("targets: {e}")))?;
    if set.is_empty() {
        return Err(Usage("no targets".into()));
    }
    let password = match &reach.password_env {
        Some(var) => Some(std::env::var(var).map_err(|_| Usage(format!("--password-env: ${var} is not set")))?),
        None => None,
    };
    let mut plans = Vec::with_capacity(set.len());
    for target in set.iter() {
        let name = target.to_string();
        let params = config.params(target);
        let mut reach = under(reach, &params);
        if gateway {
            (reach.via, reach.sudo) = (Vec::new(), None);
        }
        let method = reach.method.unwrap_or(MethodKind::Ssh);
        if method == MethodKind::Openssh && password.is_some() {
            return Err(Usage(format!(
                "{name}: --password-env needs the ssh method: the openssh method runs ssh in BatchMode"
            )));
        }
        let way = way(target, params.port, method, &reach, password.as_deref());
        plans.push(Plan { name, way, via: reach.via, sudo: reach.sudo });
    }
    Ok(plans)
}

/// `reach`, with what `params` (the config's, for one host) says where the command line is
/// silent.
fn under(reach: &Reach, params: &Params) -> Reach {
    let mut reach = reach.clone();
    reach.user = reach.user.or_else(|| params.user.clone());
    reach.identity = reach.identity.or_else(|| params.identity.clone());
    reach.method = reach.method.or(params.method);
    reach.sudo = reach.sudo.or_else(|| params.sudo.clone());
    if let (true, Some(via)) = (reach.via.is_empty(), &params.via) {
        reach.via = via.clone();
    }
    if let (true, Some(jump)) = (reach.jump.is_empty(), &params.jump) {
        reach.jump = jump.clone();
    }
    reach
}

/// How to reach `target`: its own user and port, else `-l` (or the config's user) and `port`.
fn way(target: &Target, port: Option<u16>, method: MethodKind, reach: &Reach, password: Option<&str>) -> Way {
    if method == MethodKind::Local || is_local(target) {
        return Way::Local(Local::default());
    }
    let mut target = target.clone();
    if let (None, Some(user)) = (&target.user, &reach.user) {
        target = target.with_user(user);
    }
    if let (None, Some(port)) = (target.port, port) {
        target = target.with_port(port);
    }
    let destination = target.to_string();
    match method {
        MethodKind::Openssh => Way::OpenSsh(openssh(&destination, reach)),
        _ => {
            let mut m = ssh(&destination, reach, password);
            for jump in &reach.jump {
                m = m.with_jump(ssh(jump, reach, password));
            }
            Way::Ssh(m)
        }
    }
}

/// Whether `target` names a local context.
pub(crate) fn is_local(target: &Target) -> bool {
    let host = target.host.as_str();
    let named = host == "localhost"
        || host.strip_prefix("local").is_some_and(|n| n.is_empty() || n.bytes().all(|b| b.is_ascii_digit()));
    named && target.user.is_none() && target.port.is_none()
}

fn policy(reach: &Reach) -> Option<HostKeyPolicy> {
    if reach.ignore_host_key {
        Some(HostKeyPolicy::Ignore)
    } else if reach.accept_new {
        Some(HostKeyPolicy::AcceptNew)
    } else {
        None
    }
}

fn ssh(destination: &str, reach: &Reach, password: Option<&str>) -> Ssh {
    // As `ssh` would: what ~/.ssh/config says of the host, then the command line.
    let mut m = Ssh::configured(destination);
    if let Some(path) = &reach.identity {
        m = m.with_key(path);
    }
    if let Some(password) = password {
        // After the key, or after the default credentials.
        let before = m.auth.clone();
        m = m.with_auth(before).with_password(password);
    }
    if let Some(path) = &reach.known_hosts {
        m = m.with_known_hosts(path);
    }
    if let Some(policy) = policy(reach) {
        m = m.with_host_key(policy);
    }
    m
}

fn openssh(destination: &str, reach: &Reach) -> OpenSsh {
    let mut m = OpenSsh::new(destination);
    if let Some(path) = &reach.identity {
        m = m.with_identity(path);
    }
    if let Some(path) = &reach.known_hosts {
        m = m.with_known_hosts(path);
    }
    if let Some(policy) = policy(reach) {
        m = m.with_host_key(policy);
    }
    for jump in &reach.jump {
        m = m.with_jump(jump);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names() {
        for host in ["local", "localhost", "local1", "local010"] {
            assert!(is_local(&Target::new(host)), "{host}");
        }
        for host in ["locals", "localhost1", "web1", "local1a"] {
            assert!(!is_local(&Target::new(host)), "{host}");
        }
        assert!(!is_local(&Target::new("localhost").with_user("alice")));
        assert!(!is_local(&Target::new("localhost").with_port(2222)));
    }
}

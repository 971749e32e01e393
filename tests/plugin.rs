//! A method of one's own (the plugin example's `Exec`), registered by name: started from the
//! controller through `nsenter` into a lab host's namespaces, and via an SSH context.

#![allow(clippy::unwrap_used)]

mod util;

use hypha::{BootError, ErrorKind, Portable, Whoami};
use util::exec::Exec;
use util::*;

/// The pid of the sshd of lab host `name`, whose namespaces (network, host name, mounts) are the
/// host's.
fn sshd_of(name: &str) -> String {
    let out = std::process::Command::new("ip").args(["netns", "pids", &format!("hypha-{name}")]).output().unwrap();
    let pids = String::from_utf8(out.stdout).unwrap();
    let sshd = pids
        .split_whitespace()
        .find(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "sshd"));
    sshd.unwrap_or_else(|| panic!("no sshd runs in lab host {name}")).to_owned()
}

#[tokio::test]
async fn a_method_of_ones_own_enters_a_lab_hosts_namespaces_from_the_controller() {
    let Some(_lab) = lab() else { return };
    let rt = runtime();
    let pid = sshd_of("plain");
    let ctx = rt.start(Exec::new(["nsenter", "-t", &pid, "-n", "-u", "-m", "--"])).name("ns").await.unwrap();
    let who = ctx.call(Whoami).await.unwrap();
    // The lab's hosts have host names of their own: the agent runs inside plain's namespaces.
    assert_eq!(who.host, "lab-plain");
    assert_eq!(ctx.name(), "ns");
    exercise(&ctx).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_of_ones_own_runs_via_an_ssh_context() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let hop = rt.start(lab.ssh("plain")).await.unwrap();
    let ctx = rt.start(Exec::new(["env", "HYPHA_PLUGIN_TEST=1"])).via(&hop).await.unwrap();
    let who = ctx.call(Whoami).await.unwrap();
    assert_eq!((who.host.as_str(), who.user.as_str()), ("lab-plain", lab.user.as_str()));
    // A child of the hop's agent (env and the stub exec it), on the hop's host.
    let hop_pid = hop.call(Whoami).await.unwrap().pid;
    let parent = lab.sh("plain", &format!("ps -o ppid= -p {}", who.pid));
    assert_eq!(parent.trim(), hop_pid.to_string());
    exercise(&ctx).await;
    rt.shutdown().await;
}

#[tokio::test]
async fn a_method_that_cannot_run_its_command_says_which() {
    let rt = runtime();
    let err = rt.start(Exec::new(["/nonexistent/exec-wrapper"])).await.unwrap_err();
    assert!(matches!(err, BootError::Start { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/exec-wrapper"), "{err}");
    let err = rt.start(Exec::new(Vec::<String>::new())).await.unwrap_err();
    assert!(err.to_string().contains("an empty command"), "{err}");
    rt.shutdown().await;
}

/// A method this program never registers: no context knows it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Unregistered(Exec);

impl hypha::Method for Unregistered {
    fn target(&self) -> String {
        self.0.target()
    }
    fn start<'a>(
        &'a self,
        nonce: &'a str,
    ) -> hypha::bootstrap::BoxFuture<'a, Result<hypha::bootstrap::Transport, BootError>> {
        self.0.start(nonce)
    }
}

impl Portable for Unregistered {
    const NAME: &'static str = "test.unregistered";
}

#[tokio::test]
async fn a_method_no_context_registered_is_refused_by_name_and_kind() {
    let rt = runtime();
    let parent = rt.local().await.unwrap();
    let method = Unregistered(Exec::new(["env"]));
    // Directly, it needs no registration: this process runs it.
    rt.start(method.clone()).await.unwrap();
    let err = rt.start(method).via(&parent).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownHandler, "{err}");
    assert!(err.to_string().contains("test.unregistered"), "{err}");
    assert!(matches!(err, BootError::Via { .. }), "{err:?}");
    // The parent is unharmed.
    exercise(&parent).await;
    rt.shutdown().await;
}

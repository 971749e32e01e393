//! SSH contexts against the lab's real sshd hosts.

#![allow(clippy::unwrap_used)]

mod util;

use std::time::{Duration, Instant};

use hypha::{BootError, ErrorKind, HostKeyPolicy, Method, OpenSsh, Ssh, State};
use util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_contexts_serve_calls_like_local_ones() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let ctx = rt.start(lab.openssh("plain")).await.unwrap();
    assert_eq!(ctx.hello().user, lab.user);
    exercise(&ctx).await;
    let pid = ctx.hello().pid;
    match ctx.shutdown().await {
        State::ShutDown { graceful: true, .. } => {}
        other => panic!("{other:?}"),
    }
    let left = lab.sh("plain", &format!("kill -0 {pid} 2>/dev/null && echo alive || echo gone"));
    assert_eq!(left.trim(), "gone");
    rt.shutdown().await;
}

#[tokio::test]
async fn the_second_start_uploads_nothing_and_login_noise_is_ignored() {
    let Some(lab) = lab() else { return };
    // `noisy` prints from .bashrc and .profile; only this test uses it, so its cache is ours.
    lab.sh("noisy", "rm -rf ~/.cache/hypha");
    let rt = runtime();
    let first = rt.start(lab.openssh("noisy")).await.unwrap();
    let size = hypha::bootstrap::stub::Payload::current().await.unwrap().gzip.len() as u64;
    assert_eq!(first.uploaded(), Some(size));
    let second = rt.start(lab.openssh("noisy")).await.unwrap();
    assert_eq!(second.uploaded(), None);
    let listing = lab.sh("noisy", "ls ~/.cache/hypha");
    let cached = listing.lines().last().unwrap_or_default(); // after the .bashrc greeting
    assert_eq!(cached, format!("hypha-{}", hypha::bootstrap::exe_hash().unwrap()), "only the agent: {listing}");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_refused_key_is_an_auth_error() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let m = lab.openssh("plain").with_identity(lab.stranger_key());
    let err = rt.start(m).await.unwrap_err();
    assert!(matches!(err, BootError::Auth { .. }), "{err}");
    assert!(err.to_string().contains(lab.host("plain")), "names the host: {err}");
    assert!(err.to_string().contains("Permission denied"), "{err}");

    let m = lab.ssh("plain").with_auth(vec![]).with_key(lab.stranger_key()).with_password("wrong");
    let err = rt.start(m).await.unwrap_err();
    assert!(matches!(err, BootError::Auth { .. }), "{err}");
    let text = err.to_string();
    assert!(text.starts_with(&format!("ssh hypha@{}:22: authentication refused", lab.host("plain"))), "{text}");
    assert!(text.contains("the server accepts: publickey,password") && !text.contains("wrong"), "{text}");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_wrong_or_unknown_host_key_is_refused_before_anything_is_sent() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let m = lab.openssh("plain").with_known_hosts(lab.wrong_known_hosts());
    let err = rt.start(m).await.unwrap_err();
    assert!(matches!(err, BootError::HostKey { .. }), "{err}");

    let m = lab.ssh("plain").with_known_hosts(lab.wrong_known_hosts());
    let err = rt.start(m).await.unwrap_err();
    assert!(matches!(err, BootError::HostKey { .. }), "{err}");
    assert!(err.to_string().contains("possible man in the middle"), "{err}");
    // Refused before authentication: the server logged no login attempt for it.
    let m = lab.ssh("plain").with_known_hosts("/nonexistent/known_hosts");
    let err = rt.start(m).await.unwrap_err();
    assert!(err.to_string().contains("no key for"), "{err}");
    rt.shutdown().await;
}

#[tokio::test]
async fn by_default_both_methods_refuse_a_host_whose_key_is_not_on_record() {
    let Some(lab) = lab() else { return };
    let empty = std::env::temp_dir().join(format!("hypha-empty-known-{}", std::process::id()));
    std::fs::write(&empty, "").unwrap();
    let rt = runtime();
    // No policy named: enforce, for the system client too, whatever an ssh configuration says.
    let openssh = lab.openssh("plain").with_known_hosts(&empty);
    let ssh = lab.ssh("plain").with_known_hosts(&empty);
    assert_eq!((openssh.host_key, ssh.host_key), (HostKeyPolicy::Enforce, HostKeyPolicy::Enforce));
    for method in [Box::new(openssh) as Box<dyn Method>, Box::new(ssh)] {
        let err = rt.start(method).await.unwrap_err();
        assert!(matches!(err, BootError::HostKey { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::HostKey);
        assert!(err.to_string().contains(lab.host("plain")), "names the host: {err}");
        assert_eq!(std::fs::read_to_string(&empty).unwrap(), "", "nothing was recorded");
    }
    std::fs::remove_file(&empty).unwrap();
    rt.shutdown().await;
}

#[tokio::test]
async fn destinations_with_a_port_or_an_ipv6_address_reach_the_host() {
    let Some(lab) = lab() else { return };
    let (user, plain) = (&lab.user, lab.host("plain"));
    // The lab's hosts have IPv4 addresses; `::ffff:A.B.C.D` is the same host over an IPv6 socket,
    // and known_hosts knows it by that name.
    let mapped = format!("::ffff:{plain}");
    let recorded = std::fs::read_to_string(lab.known_hosts()).unwrap();
    let line = recorded.lines().find(|l| l.starts_with(&format!("{plain} "))).unwrap();
    let known = std::env::temp_dir().join(format!("hypha-known-v6-{}", std::process::id()));
    std::fs::write(&known, format!("{}\n{}\n", line, line.replacen(plain, &mapped, 1))).unwrap();
    let rt = runtime();
    for destination in [format!("{user}@{plain}:22"), format!("{user}@[{mapped}]:22"), format!("{user}@{mapped}")] {
        let ssh = Ssh::new(&destination).with_key(lab.key()).with_known_hosts(&known);
        let openssh =
            OpenSsh::new(&destination).with_identity(lab.key()).with_known_hosts(&known).with_args(["-F", "/dev/null"]);
        assert_eq!((ssh.user.as_str(), ssh.port), (user.as_str(), 22), "{destination}");
        for method in [Box::new(ssh) as Box<dyn Method>, Box::new(openssh)] {
            let target = method.target();
            let ctx = rt.start(method).await.unwrap_or_else(|e| panic!("{destination}: {e}"));
            assert_eq!(ctx.hello().user, *user, "{target}");
            assert_eq!(ctx.call(Echo(destination.clone())).await.unwrap(), destination);
        }
    }
    std::fs::remove_file(&known).unwrap();
    rt.shutdown().await;
}

#[tokio::test]
async fn an_invalid_destination_is_a_start_error_naming_it_and_nothing_runs() {
    // No host is reached, so no lab is needed: the start fails before anything connects.
    let rt = runtime();
    let cases: Vec<(Box<dyn Method>, &str)> = vec![
        (Box::new(Ssh::new("hypha@plain:99999")), "hypha@plain:99999"),
        (Box::new(Ssh::new("127.0.0.1").with_jump(Ssh::new("gw@"))), "gw@"),
        (Box::new(OpenSsh::new("-oProxyCommand=false")), "-oProxyCommand=false"),
        (Box::new(OpenSsh::new("127.0.0.1").with_jump("[::1")), "[::1"),
    ];
    for (method, bad) in cases {
        let err = rt.start(method).await.unwrap_err();
        assert!(matches!(err, BootError::Start { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::Start);
        assert!(err.to_string().contains(&format!("{bad:?} is not a destination")), "{err}");
        let source = std::error::Error::source(&err).expect("a source");
        let refused = source.downcast_ref::<hypha::bootstrap::DestinationError>().expect("a DestinationError");
        assert_eq!(refused.input(), bad);
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn ssh_asks_for_and_checks_the_key_type_known_hosts_holds() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    // known_hosts holds only the host's ECDSA key (as an older client recorded it), with plain or
    // hashed names; the server prefers to show its ed25519 key, which is no mismatch.
    for file in ["known_hosts_ecdsa", "known_hosts_ecdsa_hashed"] {
        let m = lab.ssh("plain").with_known_hosts(lab.dir.join(file));
        let ctx = rt.start(m).await.unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(ctx.call(Echo("typed".into())).await.unwrap(), "typed");
    }
    // Another host's ECDSA key on record for this one: a real mismatch, of the same type.
    let ecdsa = std::fs::read_to_string(lab.dir.join("known_hosts_ecdsa")).unwrap();
    let noisy = ecdsa.lines().find(|l| l.starts_with(&format!("{} ", lab.host("noisy")))).unwrap();
    let forged = noisy.replacen(lab.host("noisy"), lab.host("plain"), 1);
    let m = lab.ssh("plain").with_known_hosts_data(forged);
    let err = rt.start(m).await.unwrap_err();
    assert!(matches!(err, BootError::HostKey { .. }), "{err}");
    assert!(err.to_string().contains("ecdsa-sha2-nistp256 key presented differs"), "{err}");
    // Only a type the server does not have on record: refused as a changed key, even with
    // accept-new, which takes keys of hosts it knows nothing of.
    let rsa = std::fs::read_to_string(lab.dir.join("keys/id_rsa.pub")).unwrap();
    let m = lab
        .ssh("plain")
        .with_known_hosts_data(format!("{} {}", lab.host("plain"), rsa.trim()))
        .with_host_key(HostKeyPolicy::AcceptNew);
    let err = rt.start(m).await.unwrap_err();
    assert!(matches!(err, BootError::HostKey { .. }), "{err}");
    assert!(err.to_string().contains("holds only ssh-rsa"), "{err}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_contexts_serve_calls_like_local_ones() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let ctx = rt.start(lab.ssh("plain")).await.unwrap();
    assert_eq!(ctx.hello().user, lab.user);
    exercise(&ctx).await;
    let pid = ctx.hello().pid;
    assert!(matches!(ctx.shutdown().await, State::ShutDown { graceful: true, .. }));
    let left = lab.sh("plain", &format!("kill -0 {pid} 2>/dev/null && echo alive || echo gone"));
    assert_eq!(left.trim(), "gone");
    rt.shutdown().await;
}

#[tokio::test]
async fn ssh_authenticates_with_a_passphrase_key_and_with_a_password() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let m = lab.ssh("plain").with_auth(vec![]).with_key_passphrase(lab.rsa_key(), lab.secret("rsa_passphrase"));
    rt.start(m).await.unwrap().call(Echo("rsa".into())).await.unwrap();
    let m = lab.ssh("plain").with_auth(vec![]).with_password(lab.secret("password"));
    rt.start(m).await.unwrap().call(Echo("password".into())).await.unwrap();
    rt.shutdown().await;
}

#[tokio::test]
async fn ssh_authenticates_through_an_agent() {
    let Some(lab) = lab() else { return };
    let agent = SshAgent::start(&[lab.key()]);
    // This test binary runs alone in its process under nextest; the variable is ours.
    std::env::set_var("SSH_AUTH_SOCK", &agent.socket);
    let rt = runtime();
    let agent_only = |agent| lab.ssh("plain").with_auth(vec![]).with_agent(agent);
    rt.start(agent_only(hypha::Agent::Env)).await.unwrap().call(Echo("agent".into())).await.unwrap();
    // An agent named by its socket; one holding no key is a clear error.
    let m = agent_only(hypha::Agent::Socket(agent.socket.clone()));
    rt.start(m).await.unwrap().call(Echo("agent".into())).await.unwrap();
    let empty = SshAgent::start(&[]);
    let m = agent_only(hypha::Agent::Socket(empty.socket.clone()));
    let err = rt.start(m).await.unwrap_err();
    assert!(matches!(err, BootError::Auth { .. }) && err.to_string().contains("holds no identities"), "{err}");
    rt.shutdown().await;
}

#[tokio::test]
async fn unreachable_hosts_fail_fast() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let refused = lab.openssh("plain").with_port(1);
    let err = rt.start(refused).await.unwrap_err();
    assert!(matches!(err, BootError::Unreachable { .. }), "{err}");

    // An address in the lab's network where no host answers: the connect deadline ends it.
    let started = Instant::now();
    let nobody = hypha::OpenSsh::new(format!("{}@10.213.0.99", lab.user))
        .with_connect_timeout(Duration::from_secs(1))
        .with_args(["-F", "/dev/null"]);
    let err = rt.start(nobody).await.unwrap_err();
    assert!(matches!(err, BootError::Unreachable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());

    let refused = lab.ssh("plain").with_port(1);
    let err = rt.start(refused).await.unwrap_err();
    assert!(matches!(err, BootError::Unreachable { .. }) && err.to_string().contains("refused"), "{err}");
    assert_eq!(err.kind(), ErrorKind::Unreachable);
    // The socket's own error is the source, not just its text.
    let source = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<std::io::Error>());
    assert_eq!(source.map(std::io::Error::kind), Some(std::io::ErrorKind::ConnectionRefused), "{err:?}");
    let started = Instant::now();
    let nobody = hypha::Ssh::new(format!("{}@10.213.0.99", lab.user)).with_connect_timeout(Duration::from_secs(1));
    let err = rt.start(nobody).await.unwrap_err();
    assert!(matches!(err, BootError::Unreachable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    rt.shutdown().await;
}

#[tokio::test]
async fn no_writable_executable_directory_is_named() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    for method in lab.both("locked") {
        let err = rt.start(method).await.unwrap_err();
        let BootError::NoCacheDir { tried, .. } = &err else { panic!("{err}") };
        assert!(tried.contains("/home/hypha/.cache/hypha") && tried.contains("/tmp/hypha-"), "{err}");
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn another_architecture_is_refused_naming_both() {
    let Some(lab) = lab() else { return };
    // `arm` is a real aarch64 userland (qemu-user): its `uname -m` is the emulated machine's.
    assert_eq!(lab.sh("arm", "uname -m").trim(), "aarch64");
    let rt = runtime();
    for method in lab.both("arm") {
        let err = rt.start(method).await.unwrap_err();
        let BootError::Arch { remote, local, .. } = &err else { panic!("{err}") };
        assert_eq!(remote, "aarch64");
        assert_eq!(local, std::env::consts::ARCH);
        let text = err.to_string();
        assert!(text.contains("the host is aarch64, and this program has builds for x86_64 only"), "{text}");
        assert!(text.contains("Options::agent_for(\"aarch64\", PATH), or --agent aarch64=PATH"), "{text}");
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn an_agent_that_fails_to_start_shows_the_remotes_message() {
    let Some(lab) = lab() else { return };
    // The real agent on a host where it cannot read its own executable to hash it: cached in
    // `broken` as a file that may be run but not read (mode 100), on a host without cksum (hidden
    // in broken's mount namespace), so the stub, which checks what its tools can, runs it. The
    // other ways at hand fail earlier or elsewhere: without /proc a static test binary, which
    // starts as an agent from a constructor, cannot read its arguments, so it would not know it is
    // one; an unreadable /dev/null stops the stub too.
    lab.root_sh("broken", "[ -c /usr/bin/cksum ] || mount --bind /dev/null /usr/bin/cksum");
    let cache = "/home/hypha/.cache/hypha";
    let exe = std::env::current_exe().unwrap();
    let hash = hypha::bootstrap::exe_hash().unwrap();
    lab.root_sh(
        "broken",
        &format!(
            "rm -rf {cache} && install -d -o hypha -g hypha -m 700 /home/hypha/.cache {cache} \
             && install -o hypha -g hypha -m 100 {exe} {cache}/hypha-{hash}",
            exe = exe.display()
        ),
    );
    let rt = runtime();
    for (i, method) in lab.both("broken").into_iter().enumerate() {
        let err = rt.start(method).await.unwrap_err();
        assert!(matches!(err, BootError::Exited { .. }), "start {i}: {err}");
        // The agent's own words: `hypha agent (pid N): agent start-up: ...`.
        let text = err.to_string();
        assert!(text.contains("hypha agent (pid ") && text.contains("agent start-up"), "start {i}: {err}");
        assert!(text.contains("Permission denied"), "start {i}: {err}");
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn accept_new_records_the_key() {
    let Some(lab) = lab() else { return };
    let file = std::env::temp_dir().join(format!("hypha-known-{}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let rt = runtime();
    let m = lab.openssh("plain").with_known_hosts(&file).with_host_key(HostKeyPolicy::AcceptNew);
    let ctx = rt.start(m).await.unwrap();
    ctx.call(Echo("ok".into())).await.unwrap();
    let recorded = std::fs::read_to_string(&file).unwrap();
    assert!(recorded.contains(lab.host("plain")) && recorded.contains("ssh-ed25519"), "{recorded}");
    std::fs::remove_file(&file).unwrap();
    rt.shutdown().await;
}

#[tokio::test]
async fn ssh_agents_exit_when_their_controller_is_killed() {
    let Some(lab) = lab() else { return };
    let pids = orphaned_contexts(2, Some("plain"));
    let check = pids.iter().map(|p| format!("kill -0 {p} 2>/dev/null && echo {p}")).collect::<Vec<_>>().join("; ");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive = lab.sh("plain", &format!("{check}; true"));
        if alive.trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "agents still running on the host: {alive}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_hop_ssh_chain_where_each_host_is_reachable_only_from_the_previous_one() {
    let Some(lab) = lab() else { return };
    // From here, only hop1 answers; the others are behind it, one namespace after another.
    for far in ["hop2", "hop3", "hop4"] {
        let direct = lab.ssh(far).with_connect_timeout(Duration::from_millis(500));
        let rt = runtime();
        let err = rt.start(direct).await.unwrap_err();
        assert!(matches!(err, BootError::Unreachable { .. }), "{far} must not be reachable directly: {err}");
        rt.shutdown().await;
    }
    let rt = runtime();
    let mut hops = vec![rt.start(lab.ssh("hop1")).await.unwrap()];
    for far in ["hop2", "hop3", "hop4"] {
        let parent = hops.last().unwrap().clone();
        let ctx = rt.start(lab.ssh(far)).via(&parent).await.unwrap();
        // The parent served its own copy: the agent arrived from hop to hop, not from here.
        assert_eq!(ctx.hello().binary_hash, hypha::bootstrap::exe_hash().unwrap());
        hops.push(ctx);
    }
    let last = hops.last().unwrap();
    exercise(last).await;
    // No key was written on the hops: their caches hold only the agent.
    for host in ["hop1", "hop2", "hop3"] {
        let listing =
            lab.sh_via_chain(host, "find ~ -type f | grep -v '/.cache/hypha/hypha-' | grep -v authorized_keys; true");
        assert!(listing.trim().is_empty(), "{host} has unexpected files: {listing}");
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn a_via_hop_signs_with_the_controllers_agent_and_keeps_nothing_of_it() {
    let Some(lab) = lab() else { return };
    let agent = SshAgent::start(&[lab.key()]);
    let with_agent = |name: &str, socket: &std::path::Path| {
        lab.ssh(name).with_auth(vec![]).with_agent(hypha::Agent::Socket(socket.to_owned()))
    };
    let rt = runtime();
    let hop1 = rt.start(lab.ssh("hop1")).await.unwrap();
    // hop2, reachable only from hop1, started by hop1 and signed for by the agent here.
    let hop2 = rt.start(with_agent("hop2", &agent.socket)).via(&hop1).await.unwrap();
    assert_eq!(hop2.call(hypha::Whoami).await.unwrap().host, "lab-hop2");
    // One level further: hop2's relay reaches the controller through hop1.
    let deeper = rt.start(with_agent("hop3", &agent.socket)).via(&hop2).await.unwrap();
    assert_eq!(deeper.call(hypha::Whoami).await.unwrap().host, "lab-hop3");
    // The jump hosts of a via hop sign with it too: hop3 from hop1, through hop2.
    let to_hop3 = with_agent("hop3", &agent.socket).with_jump(with_agent("hop2", &agent.socket));
    let hop3 = rt.start(to_hop3).via(&hop1).await.unwrap();
    exercise(&hop3).await;
    // The system ssh client on hop1 signs with it as well (hop1 has no key the lab user may read).
    let openssh = |socket: &std::path::Path| {
        hypha::OpenSsh::new(format!("{}@{}", lab.user, lab.host("hop2")))
            .with_known_hosts(lab.known_hosts())
            .with_args(["-F", "/dev/null"])
            .with_agent(hypha::Agent::Socket(socket.to_owned()))
    };
    let ctx = rt.start(openssh(&agent.socket)).via(&hop1).await.unwrap();
    assert_eq!(ctx.call(hypha::Whoami).await.unwrap().host, "lab-hop2");
    // The hops keep nothing: no key, no relay socket, no relay directory.
    for hop in ["hop1", "hop2"] {
        let left = lab.sh_via_chain(
            hop,
            "ls -d /tmp/hypha-agent.* 2>/dev/null; find ~ -type f | grep -v '/.cache/hypha/hypha-' | grep -v authorized_keys; true",
        );
        assert!(left.trim().is_empty(), "{hop} has unexpected files: {left}");
    }
    // An agent holding no key, or none at all: a clear error naming the hop, and the tree goes on.
    let empty = SshAgent::start(&[]);
    let err = rt.start(with_agent("hop2", &empty.socket)).via(&hop1).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("holds no identities") && text.contains(lab.host("hop2")), "{text}");
    // The kind of the hop's failure crosses the link: no need to read the text.
    assert_eq!(err.kind(), hypha::ErrorKind::Authentication, "{text}");
    let err = rt.start(openssh(&empty.socket)).via(&hop1).await.unwrap_err();
    assert!(err.to_string().contains("Permission denied"), "{err}");
    let missing = agent.socket.with_file_name("no-such-agent");
    let err = rt.start(with_agent("hop2", &missing)).via(&hop1).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("the lent ssh-agent") && text.contains("no-such-agent"), "{text}");
    assert_eq!(hop2.call(Echo("still here".into())).await.unwrap(), "still here");
    rt.shutdown().await;
}

#[tokio::test]
async fn jump_hosts_that_run_no_agent_lead_to_hosts_out_of_reach() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    // hop2 through hop1; hop3 through hop1 and hop2. Neither jump host runs an agent.
    let to_hop2 = lab.ssh("hop2").with_jump(lab.ssh("hop1"));
    let ctx = rt.start(to_hop2).await.unwrap();
    assert_eq!(ctx.call(hypha::Whoami).await.unwrap().host, "lab-hop2");
    let to_hop3 = lab.ssh("hop3").with_jump(lab.ssh("hop1")).with_jump(lab.ssh("hop2"));
    let ctx = rt.start(to_hop3).await.unwrap();
    exercise(&ctx).await;
    assert!(agent_pids_in_namespace("hop1").is_empty(), "a jump host runs no agent");

    // The host-key policy applies to every hop: a jump host with the wrong key is refused.
    let bad = lab.ssh("hop2").with_jump(lab.ssh("hop1").with_known_hosts(lab.wrong_known_hosts()));
    let err = rt.start(bad).await.unwrap_err();
    assert!(matches!(err, BootError::HostKey { .. }), "{err}");
    assert!(err.to_string().contains(lab.host("hop1")), "names the jump host: {err}");
    rt.shutdown().await;
}

/// Pids of the agent processes running in lab host `name`'s network namespace.
fn agent_pids_in_namespace(name: &str) -> Vec<u32> {
    let out = std::process::Command::new("ip").args(["netns", "pids", &format!("hypha-{name}")]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|pid| Some((pid.parse().ok()?, std::fs::read(format!("/proc/{pid}/cmdline")).ok()?)))
        .filter(|(_, cmd): &(u32, Vec<u8>)| {
            let cmd = String::from_utf8_lossy(cmd);
            cmd.contains("hypha/hypha-") || cmd.contains("/tmp/hypha-")
        })
        .map(|(pid, _)| pid)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_ssh_hop_leaves_no_agent_behind_it_and_the_rest_keeps_working() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let hop1 = rt.start(lab.ssh("hop1")).await.unwrap();
    let hop2 = rt.start(lab.ssh("hop2")).via(&hop1).await.unwrap();
    let hop3 = rt.start(lab.ssh("hop3")).via(&hop2).await.unwrap();
    let on_hop3 = hop3.hello().pid;
    assert!(agent_pids_in_namespace("hop3").contains(&on_hop3), "the agent runs in hop3's namespace");
    let waiting = {
        let hop3 = hop3.clone();
        tokio::spawn(async move { hop3.call(Sleep(60_000)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The lab's hosts share this machine's pid space: the agent on hop2 can be killed from here.
    kill9(hop2.hello().pid);
    let err = tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("within 1 s").unwrap().unwrap_err();
    assert!(err.to_string().contains(hop2.name()), "names the lost hop {}: {err}", hop2.name());
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent_pids_in_namespace("hop3").contains(&on_hop3) {
        assert!(Instant::now() < deadline, "agent {on_hop3} is still running on hop3");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(hop1.call(Echo("alive".into())).await.unwrap(), "alive");
    rt.shutdown().await;
}

#[tokio::test]
async fn the_ssh_method_reads_an_ssh_config_file_and_its_proxy_jump_hosts() {
    let Some(lab) = lab() else { return };
    let s = Scratch::new("ssh-config");
    let host = |alias: &str, name: &str, extra: &str| {
        format!(
            "Host {alias}\n  HostName {}\n  User {}\n  IdentityFile {}\n  UserKnownHostsFile {}\n  \
             StrictHostKeyChecking yes\n  ConnectTimeout 5\n{extra}",
            lab.host(name),
            lab.user,
            lab.key().display(),
            lab.known_hosts().display()
        )
    };
    let text = [
        host("plain-alias", "plain", ""),
        host("far-alias", "hop2", "  ProxyJump gw-alias\n"),
        host("gw-alias", "hop1", ""),
    ]
    .concat();
    std::fs::write(s.path("config"), text).unwrap();
    let config = hypha::SshConfigFile::read(s.path("config")).unwrap();
    let rt = runtime();
    // An alias: address, user, key and known hosts all come from the file.
    let plain = rt.start(hypha::Ssh::with_config("plain-alias", &config)).await.unwrap();
    assert_eq!(plain.call(hypha::Whoami).await.unwrap().host, "lab-plain");
    // hop2 answers only from hop1: the file's ProxyJump passes through it (no agent there).
    let far = rt.start(hypha::Ssh::with_config("far-alias", &config)).await.unwrap();
    assert_eq!(far.call(hypha::Whoami).await.unwrap().host, "lab-hop2");
    rt.shutdown().await;
}

/// A front for lab host `name` on 127.0.0.1: it closes the first `drop` connections at once (as
/// sshd does past its MaxStartups) and relays the others to the host's sshd. Its port, and the
/// number of connections it has taken.
async fn dropping_front(lab: &Lab, name: &str, drop: usize) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let taken = std::sync::Arc::new(AtomicUsize::new(0));
    let (count, host) = (taken.clone(), lab.host(name).to_owned());
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            if count.fetch_add(1, Ordering::SeqCst) < drop {
                continue; // dropped: closed before a byte
            }
            let host = host.clone();
            tokio::spawn(async move {
                let mut sshd = tokio::net::TcpStream::connect((host.as_str(), 22)).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut sshd).await;
            });
        }
    });
    (port, taken)
}

/// The lab's known_hosts, with `name`'s key also under `[127.0.0.1]:port`.
fn known_at(lab: &Lab, scratch: &Scratch, name: &str, port: u16) -> std::path::PathBuf {
    let known = std::fs::read_to_string(lab.known_hosts()).unwrap();
    let line = known.lines().find(|l| l.starts_with(&format!("{} ", lab.host(name)))).unwrap();
    let path = scratch.path("known_hosts");
    std::fs::write(&path, format!("{known}[127.0.0.1]:{port} {}\n", line.split_once(' ').unwrap().1)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_drops_before_its_banner_is_tried_again() {
    use std::sync::atomic::Ordering;
    let Some(lab) = lab() else { return };
    let scratch = Scratch::new("ssh-dropped");
    let rt = runtime();
    // Two drops, then through: the third attempt starts the context.
    let (port, taken) = dropping_front(&lab, "plain", 2).await;
    let ssh = Ssh::new(format!("{}@127.0.0.1:{port}", lab.user))
        .with_key(lab.key())
        .with_known_hosts(known_at(&lab, &scratch, "plain", port));
    let ctx = rt.start(ssh).await.unwrap();
    assert_eq!(ctx.hello().host, "lab-plain");
    assert_eq!(taken.load(Ordering::SeqCst), 3);
    ctx.shutdown().await;

    // Dropped every time: a clear error once the attempts are spent, well within the deadline.
    let (port, taken) = dropping_front(&lab, "plain", usize::MAX).await;
    let ssh = Ssh::new(format!("{}@127.0.0.1:{port}", lab.user))
        .with_key(lab.key())
        .with_known_hosts(known_at(&lab, &scratch, "plain", port))
        .with_connect_timeout(Duration::from_secs(30));
    let err = rt.start(ssh).await.unwrap_err().to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("5 attempts: the server closed each connection before its banner"), "{err}");
    assert_eq!(taken.load(Ordering::SeqCst), 5);
    // A refused connection is not a dropped one: not tried again.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let t = Instant::now();
    let err = rt.start(Ssh::new(format!("{}@127.0.0.1:{port}", lab.user))).await.unwrap_err().to_string();
    assert!(!err.contains("attempts"), "{err}");
    assert!(t.elapsed() < DROPPED_TOTAL_PAUSES, "{:?}", t.elapsed());
    rt.shutdown().await;
}

/// What the pauses between five attempts add up to at least (250 ms doubling).
const DROPPED_TOTAL_PAUSES: Duration = Duration::from_millis(250 + 500 + 1000 + 2000);

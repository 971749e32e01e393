//! The fleet: many contexts started with a bounded fan-out, answers as they come, a summary that
//! names the hosts that failed and why, and warm calls on the contexts it keeps.

#![allow(clippy::unwrap_used)]

mod util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hypha::bootstrap::{BoxFuture, Transport};
use hypha::fleet::{Fleet, Outcome, Summary};
use hypha::process::Command;
use hypha::{BootError, Local, Method, Whoami};
use util::*;

/// A local start that counts how many starts of its kind are in progress at once.
#[derive(Debug)]
struct Counted {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl Method for Counted {
    fn target(&self) -> String {
        Local::default().target()
    }

    fn start<'a>(&'a self, nonce: &'a str) -> BoxFuture<'a, Result<Transport, BootError>> {
        Box::pin(async move {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            let started = Local::default().start(nonce).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            started
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_starts_with_a_bounded_fanout_and_keeps_its_contexts_warm() {
    let rt = runtime();
    let fleet = Fleet::new(&rt).with_fanout(4);
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let hosts = (0..24).map(|i| {
        let m: Box<dyn Method> = Box::new(Counted { now: now.clone(), most: most.clone() });
        (format!("node{i:02}"), m)
    });
    let mut answers = fleet.start(hosts);
    let mut started = Vec::new();
    while let Some(a) = answers.next().await {
        assert!(matches!(a.outcome, Outcome::Done(())), "{a:?}");
        started.push(a.host);
    }
    assert_eq!(started.len(), 24);
    let most = most.load(Ordering::SeqCst);
    assert!((1..=4).contains(&most), "{most} starts at once with a fan-out of 4");

    // Warm: the same contexts answer again, one call each.
    let pids = |answers: Vec<hypha::fleet::Answer<hypha::Identity>>| {
        let mut pids: Vec<u32> = answers
            .into_iter()
            .map(|a| match a.outcome {
                Outcome::Done(who) => who.pid,
                other => panic!("{}: {other:?}", a.host),
            })
            .collect();
        pids.sort_unstable();
        pids
    };
    let first = pids(fleet.call(&Whoami).collect().await);
    assert_eq!(first.len(), 24);
    assert_eq!(pids(fleet.call(&Whoami).collect().await), first);
    // Starting hosts that are up starts nothing.
    let again = fleet.start([("node00", Box::new(Local::default()) as Box<dyn Method>)]).collect().await;
    assert!(matches!(again[0].outcome, Outcome::Done(())));
    assert_eq!(fleet.up().len(), 24);

    // A command on every host, sorted by its exit.
    let ok = fleet.check(Command::new(["true"])).collect().await;
    assert!(Summary::of_checks(&ok).all_ok());
    let failed = fleet.check(Command::shell("echo oops >&2; exit 3")).collect().await;
    let summary = Summary::of_checks(&failed);
    assert_eq!(summary.failed.len(), 24);
    assert_eq!(summary.failed[0].1, "exit status 3: oops", "{summary:?}");
    fleet.shutdown().await;
    rt.shutdown().await;
}

#[tokio::test]
async fn unreachable_and_silent_hosts_are_named_with_why_and_the_others_answer() {
    let s = Scratch::new("fleet-silent");
    let silent = s.path("silent-agent");
    std::fs::write(&silent, "#!/bin/sh\nexec sleep 300\n").unwrap();
    std::fs::set_permissions(&silent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let rt = runtime();
    let fleet = Fleet::new(&rt).with_connect_timeout(Duration::from_secs(2));
    let mut hosts: Vec<(String, Box<dyn Method>)> =
        (0..3).map(|i| (format!("ok{i}"), Box::new(Local::default()) as Box<dyn Method>)).collect();
    // Nothing listens on port 1 of loopback: refused at once.
    hosts.push(("refused".into(), Box::new(hypha::Ssh::new("127.0.0.1:1"))));
    // Starts, and never says a word: the connect timeout.
    hosts.push(("silent".into(), Box::new(Local::default().with_program(&silent))));
    let answers = fleet.start(hosts).collect().await;
    let summary = Summary::new(&answers, |()| Ok(()));
    assert_eq!(summary.ok, ["ok0", "ok1", "ok2"]);
    let why: Vec<_> = summary.unreachable.iter().map(|(h, why)| format!("{h}: {why}")).collect();
    assert_eq!(why.len(), 2, "{why:?}");
    assert!(why[0].starts_with("refused: ") && why[0].contains("127.0.0.1"), "{why:?}");
    assert!(why[1].starts_with("silent: ") && why[1].contains("2"), "{why:?}");
    // The hosts that failed to start stay named in every later round.
    let answers = fleet.call(&Echo("hi".into())).collect().await;
    let summary = Summary::new(&answers, |s| if s == "hi" { Ok(()) } else { Err(s.clone()) });
    assert_eq!((summary.ok.len(), summary.unreachable.len()), (3, 2), "{summary:?}");
    fleet.shutdown().await;
    rt.shutdown().await;
}

#[tokio::test]
async fn fleet_gateways_start_their_own_hosts_and_a_dead_one_fails_only_those() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let fleet = Fleet::new(&rt).with_fanout(8);
    let gateways: Vec<(String, Box<dyn Method>)> =
        ["hop1", "plain"].iter().map(|h| (h.to_string(), Box::new(lab.ssh(h)) as Box<dyn Method>)).collect();
    let summary = Summary::new(&fleet.start(gateways).collect().await, |()| Ok(()));
    assert!(summary.all_ok(), "{summary:?}");
    let gw = |name: &str| fleet.get(name).unwrap();
    let (hop1, plain) = (gw("hop1"), gw("plain"));
    // hop2 answers only from hop1; noisy is started from plain.
    let behind = Summary::new(&fleet.start_via(&hop1, [("hop2", lab.ssh("hop2"))]).collect().await, |()| Ok(()));
    assert!(behind.all_ok(), "{behind:?}");
    let behind = Summary::new(&fleet.start_via(&plain, [("noisy", lab.ssh("noisy"))]).collect().await, |()| Ok(()));
    assert!(behind.all_ok(), "{behind:?}");
    let hostnames = fleet.check(Command::new(["hostname"])).collect().await;
    let mut seen: Vec<String> = hostnames
        .iter()
        .map(|a| match &a.outcome {
            Outcome::Done(out) => format!("{} {}", a.host, out.stdout.join("")),
            other => panic!("{}: {other:?}", a.host),
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ["hop1 lab-hop1", "hop2 lab-hop2", "noisy lab-noisy", "plain lab-plain"]);

    // hop1's agent dies: hop1 and the host behind it are unreachable, naming it; the rest answer.
    lab.root_sh("hop1", &format!("kill -9 {}", hop1.hello().pid));
    hop1.closed().await;
    let summary = Summary::of_checks(&fleet.check(Command::new(["hostname"])).collect().await);
    assert_eq!(summary.ok, ["noisy", "plain"], "{summary:?}");
    let unreachable: Vec<&str> = summary.unreachable.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(unreachable, ["hop1", "hop2"], "{summary:?}");
    assert!(summary.unreachable[1].1.contains("through gateway hop1"), "{summary:?}");
    fleet.shutdown().await;
    rt.shutdown().await;
}

#[tokio::test]
async fn dropping_a_rounds_answers_kills_the_commands_still_running() {
    let s = Scratch::new("fleet-drop");
    let pid_fifo = s.path("pid");
    fifo(&pid_fifo);
    let rt = runtime();
    let fleet = Fleet::new(&rt);
    fleet.start([("only", Box::new(Local::default()) as Box<dyn Method>)]).collect().await;
    let script = format!("echo $$ > {}; exec sleep 300", pid_fifo.display());
    let answers = fleet.check(Command::shell(script));
    let pid: u32 = read_fifo(&pid_fifo).await.trim().parse().unwrap();
    assert!(alive(pid));
    drop(answers);
    assert!(gone_within(pid, Duration::from_secs(10)).await, "the command {pid} still runs");
    // The context itself stays up for the next round.
    assert_eq!(fleet.call(&Echo("next".into())).collect().await.len(), 1);
    fleet.shutdown().await;
    rt.shutdown().await;
}

#[tokio::test]
async fn a_member_whose_agent_dies_is_down_at_once_without_a_call() {
    let rt = runtime();
    let fleet = Fleet::new(&rt);
    let hosts = ["a", "b"].map(|h| (h, Box::new(Local::default()) as Box<dyn Method>));
    assert!(Summary::new(&fleet.start(hosts).collect().await, |()| Ok(())).all_ok());
    kill9(fleet.get("a").unwrap().hello().pid);
    // No call is made: the fleet's own watch on the context says so.
    let down = fleet.wait_until(Duration::from_secs(10), |f| f.get("a").is_none()).await;
    assert!(down, "a is still shown up: {:?}", fleet.summary());
    let up: Vec<String> = fleet.up().into_iter().map(|(h, _)| h).collect();
    assert_eq!(up, ["b"]);
    assert_eq!(fleet.names(), ["a", "b"]);
    let seen = fleet.summary();
    assert_eq!(seen.ok, ["b"], "{seen:?}");
    assert_eq!(seen.unreachable.len(), 1, "{seen:?}");
    assert_eq!(seen.unreachable[0].0, "a");
    assert!(seen.unreachable[0].1.starts_with("lost: "), "{seen:?}");
    // The next round answers for it from what the fleet knows, the same reason.
    let round = Summary::new(&fleet.call(&Echo("hi".into())).collect().await, |_| Ok(()));
    assert_eq!(round, seen);
    fleet.shutdown().await;
    rt.shutdown().await;
}

/// A lab test's gateways (`hop1` and `plain`, both on the lab's bridge) and four hosts dealt over
/// them by one assignment: `a` is noisy, `b` plain, `c` hop1's host itself, `d` plain again (a
/// host may be started more than once, under other names). All are reachable from both gateways.
async fn two_gateways_four_hosts(lab: &Lab, fleet: &Fleet, rt: &hypha::Runtime) -> (hypha::Context, hypha::Context) {
    let hop1 = rt.start(lab.ssh("hop1")).name("hop1").await.unwrap();
    let plain = rt.start(lab.ssh("plain")).name("plain").await.unwrap();
    let hosts = [("a", "noisy"), ("b", "plain"), ("c", "hop1"), ("d", "plain")].map(|(h, at)| (h, lab.ssh(at)));
    let started =
        Summary::new(&fleet.start_through(&[hop1.clone(), plain.clone()], hosts).collect().await, |()| Ok(()));
    assert!(started.all_ok(), "{started:?}");
    // Split, not all through one: every other host through each gateway, and really so (the
    // path of contexts each call takes).
    for (host, gateway) in [("a", "hop1"), ("b", "plain"), ("c", "hop1"), ("d", "plain")] {
        assert_eq!(fleet.via(host).as_deref(), Some(gateway), "{host}");
        let path = fleet.get(host).unwrap().path();
        assert!(path.starts_with(&format!("controller → {gateway} → {host} ")), "{host}: {path}");
    }
    assert_eq!(hostnames(fleet).await, ["a lab-noisy", "b lab-plain", "c lab-hop1", "d lab-plain"]);
    (hop1, plain)
}

/// Each host with the host name its command printed; panics on any other answer.
async fn hostnames(fleet: &Fleet) -> Vec<String> {
    let answers = tokio::time::timeout(Duration::from_secs(60), fleet.check(Command::new(["hostname"])).collect());
    let mut seen: Vec<String> = answers
        .await
        .expect("every host answers within 60 s")
        .iter()
        .map(|a| match &a.outcome {
            Outcome::Done(out) => format!("{} {}", a.host, out.stdout.join("")),
            other => panic!("{}: {other:?}", a.host),
        })
        .collect();
    seen.sort();
    seen
}

#[tokio::test]
async fn fleet_gateways_split_an_assignment_and_a_dead_one_fails_only_its_hosts() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let fleet = Fleet::new(&rt).with_fanout(8);
    let (hop1, plain) = two_gateways_four_hosts(&lab, &fleet, &rt).await;

    // hop1's agent dies: its hosts are shown down, naming it, before anything calls them.
    lab.root_sh("hop1", &format!("kill -9 {}", hop1.hello().pid));
    let down = fleet.wait_until(Duration::from_secs(60), |f| f.get("a").is_none() && f.get("c").is_none()).await;
    assert!(down, "{:?}", fleet.summary());
    let seen = fleet.summary();
    assert_eq!(seen.ok, ["b", "d"], "{seen:?}");
    let unreachable: Vec<&str> = seen.unreachable.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(unreachable, ["a", "c"], "{seen:?}");
    for (host, why) in &seen.unreachable {
        assert!(why.contains("gateway hop1"), "{host}: {why}");
    }
    // Without re-routing they stay so, and the others answer.
    let round = Summary::of_checks(&fleet.check(Command::new(["hostname"])).collect().await);
    assert_eq!(round, seen);
    assert!(fleet.via("a").is_none() && fleet.via("b").as_deref() == Some("plain"));
    fleet.shutdown().await;
    plain.shutdown().await;
    rt.shutdown().await;
}

/// Run `command` as the lab user on lab host `host`, in a blocking task, within 60 s.
async fn lab_sh(lab: &Lab, host: &'static str, command: String) -> String {
    let lab = lab.clone();
    let run = tokio::task::spawn_blocking(move || lab.sh_as(host, &lab.user, &command));
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("within 60 s").unwrap()
}

#[tokio::test]
async fn fleet_gateways_reroute_the_hosts_of_a_dead_one_and_calls_in_flight_fail_naming_it() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let fleet = Fleet::new(&rt).with_fanout(8).with_reroute(true);
    let (hop1, plain) = two_gateways_four_hosts(&lab, &fleet, &rt).await;
    let before: Vec<u32> = ["a", "c"].iter().map(|h| fleet.get(h).unwrap().hello().pid).collect();

    // A command runs on a and c (through hop1) when hop1 dies: it says so through a fifo on
    // their hosts, then waits. b and d (through plain) have no fifo, and print their host name.
    let fifo = "/tmp/hypha-fleet-in-flight";
    for host in ["noisy", "hop1"] {
        lab_sh(&lab, host, format!("rm -f {fifo} && mkfifo {fifo}")).await;
    }
    lab_sh(&lab, "plain", format!("rm -f {fifo}")).await;
    let script = format!("if [ -p {fifo} ]; then echo started > {fifo}; exec sleep 300; fi; hostname");
    let round = fleet.check(Command::shell(script));
    for host in ["noisy", "hop1"] {
        assert_eq!(lab_sh(&lab, host, format!("cat {fifo} && rm {fifo}")).await, "started\n", "{host}");
    }
    lab.root_sh("hop1", &format!("kill -9 {}", hop1.hello().pid));

    // The calls in flight through hop1 fail, naming it, and are not made again (the command
    // might have run): the others answer.
    let answers = tokio::time::timeout(Duration::from_secs(60), round.collect()).await.expect("the round ends");
    let mut ends: Vec<String> = answers
        .iter()
        .map(|a| match &a.outcome {
            Outcome::Done(out) => format!("{} {}", a.host, out.stdout.join("")),
            Outcome::Unreachable(why) => {
                assert!(why.contains("gateway hop1"), "{}: {why}", a.host);
                format!("{} lost", a.host)
            }
            other => panic!("{}: {other:?}", a.host),
        })
        .collect();
    ends.sort();
    assert_eq!(ends, ["a lost", "b lab-plain", "c lost", "d lab-plain"]);

    // Re-routed: a and c come back through plain, new contexts, and answer.
    let back = fleet
        .wait_until(Duration::from_secs(90), |f| {
            ["a", "b", "c", "d"].iter().all(|h| f.via(h).as_deref() == Some("plain"))
        })
        .await;
    assert!(back, "{:?}", fleet.summary());
    for host in ["a", "c"] {
        let path = fleet.get(host).unwrap().path();
        assert!(path.starts_with(&format!("controller → plain → {host} ")), "{host}: {path}");
    }
    let after: Vec<u32> = ["a", "c"].iter().map(|h| fleet.get(h).unwrap().hello().pid).collect();
    assert!(before.iter().zip(&after).all(|(b, a)| b != a), "{before:?} {after:?}");
    assert_eq!(hostnames(&fleet).await, ["a lab-noisy", "b lab-plain", "c lab-hop1", "d lab-plain"]);

    // With plain gone too, no gateway of the assignment is left: down, naming it.
    lab.root_sh("plain", &format!("kill -9 {}", plain.hello().pid));
    let last = |why: &str| why.contains("gateway plain") && why.contains("no other gateway of its assignment is up");
    let down = fleet
        .wait_until(Duration::from_secs(60), |f| {
            let seen = f.summary();
            seen.ok.is_empty() && seen.unreachable.len() == 4 && seen.unreachable.iter().all(|(_, why)| last(why))
        })
        .await;
    assert!(down, "{:?}", fleet.summary());
    fleet.shutdown().await;
    rt.shutdown().await;
}

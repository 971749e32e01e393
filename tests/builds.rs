//! Builds of the program besides this executable (`Options::agent_for`): served to hosts by the
//! stub, fetched once by a via parent and kept for its children, checked before anything runs.

#![allow(clippy::unwrap_used)]

mod util;

use hypha::bootstrap::builds;
use hypha::{Options, Runtime, StartError, Sudo, Whoami};
use util::*;

/// A second build of this program for this architecture: this executable with one byte more at
/// the end (it runs the same, and its hash is another).
fn second_build() -> (std::path::PathBuf, String) {
    let path = std::env::temp_dir().join(format!("hypha-second-build-{}", std::process::id()));
    let mut bytes = std::fs::read("/proc/self/exe").unwrap();
    bytes.push(0);
    std::fs::write(&path, &bytes).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (path.clone(), hypha::bootstrap::hash_file(&path).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_via_parent_fetches_a_build_once_and_serves_it_to_every_child() {
    let Some(_lab) = lab() else { return };
    let (path, hash) = second_build();
    let wipe = || {
        let out = std::process::Command::new("sh")
            .args(["-c", "rm -rf ~hypha-nopw/.cache/hypha /tmp/hypha-$(id -u hypha-nopw)"])
            .status()
            .unwrap();
        assert!(out.success());
    };
    wipe();
    let options = Options::default().agent_for(std::env::consts::ARCH, &path);
    let rt = Runtime::with_options(handlers(), options).unwrap();
    // Local contexts run this executable; the stub is offered the build that was named.
    let gw = rt.local().await.unwrap();
    assert_eq!(gw.hello().binary_hash, hypha::bootstrap::exe_hash().unwrap());
    let first = rt.start(Sudo::new("hypha-nopw")).via(&gw).await.unwrap();
    assert_eq!(first.hello().binary_hash, hash, "the named build runs");
    assert!(first.uploaded().is_some());
    assert_eq!(first.call(Whoami).await.unwrap().user, "hypha-nopw");
    exercise(&first).await;
    assert_eq!(builds::served(), 1, "the parent fetched the build from the controller");
    // A second child, with the host's cache gone: the parent uploads the build it kept.
    wipe();
    let second = rt.start(Sudo::new("hypha-nopw")).via(&gw).await.unwrap();
    assert!(second.uploaded().is_some());
    assert_eq!(second.hello().binary_hash, hash);
    // A third finds it cached.
    let third = rt.start(Sudo::new("hypha-nopw")).via(&gw).await.unwrap();
    assert_eq!(third.uploaded(), None);
    assert_eq!(builds::served(), 1, "fetched once, not once per child");
    // The controller serves it from the file itself.
    let direct = rt.start(Sudo::new("hypha-nopw")).await.unwrap();
    assert_eq!(direct.hello().binary_hash, hash);
    rt.shutdown().await;
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn a_build_that_is_not_one_for_its_architecture_is_refused_at_start() {
    let (path, _) = second_build();
    let other = if std::env::consts::ARCH == "aarch64" { "x86_64" } else { "aarch64" };
    let err = Runtime::with_options(handlers(), Options::default().agent_for(other, &path)).unwrap_err();
    assert!(matches!(err, StartError::Build(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("the {other} build")) && text.contains("is an ELF executable for"), "{text}");
    let script = std::env::temp_dir().join(format!("hypha-not-a-build-{}", std::process::id()));
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let err = Runtime::with_options(handlers(), Options::default().agent_for(other, &script)).unwrap_err();
    assert!(err.to_string().contains("is not an ELF executable"), "{err}");
    let err = Runtime::with_options(handlers(), Options::default().agent_for(other, "/nonexistent")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent"), "{err}");
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(&script).unwrap();
}

#[tokio::test]
async fn a_build_changed_after_it_was_named_is_not_served() {
    let Some(_lab) = lab() else { return };
    let (path, _) = second_build();
    let rt = Runtime::with_options(handlers(), Options::default().agent_for(std::env::consts::ARCH, &path)).unwrap();
    // Replaced under the same name after the fingerprint was taken (another byte at the end).
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.push(1);
    std::fs::write(&path, &bytes).unwrap();
    let _ = std::process::Command::new("sh").args(["-c", "rm -rf ~hypha-nopw/.cache/hypha"]).status();
    let err = rt.start(Sudo::new("hypha-nopw")).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("is not the one named") && text.contains("changed since it was added"), "{text}");
    rt.shutdown().await;
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn a_build_name_that_is_not_a_plain_token_never_reaches_a_command_line() {
    let rt = runtime();
    let gw = rt.local().await.unwrap();
    let agent = hypha::bootstrap::stub::Fingerprint::current().await.unwrap();
    for (arch, hash) in [("x86_64; touch /tmp/hypha-pwned", "00ff"), ("aarch64", "00ff $(reboot)")] {
        let fingerprint = hypha::bootstrap::stub::Fingerprint { hash: hash.into(), ..agent.clone() };
        let spawn = hypha::bootstrap::Spawn {
            id: 4242,
            name: "forged-build".into(),
            method: hypha::Sudo::new("hypha-nopw"),
            ids: (0, 0),
            builds: vec![builds::Offer { arch: arch.into(), fingerprint }],
        };
        let err = rt.router().call(gw.id(), &spawn).await.unwrap_err().to_string();
        assert!(err.contains("refusing a build named"), "{err}");
    }
    assert!(!std::path::Path::new("/tmp/hypha-pwned").exists());
    assert_eq!(gw.call(Echo("still fine".into())).await.unwrap(), "still fine");
    rt.shutdown().await;
}

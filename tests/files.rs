//! The file service: trees pushed, pulled and copied between contexts (local, over SSH, through a
//! sudo hop), modes, links and times kept; errors that name host and path and leave no partial
//! file, on a full disk too; a file larger than 4 GiB.

#![allow(clippy::unwrap_used)]

mod util;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use hypha::files::{copy, FileError, Keep};
use hypha::process::Command;
use util::*;

/// A tree with what a transfer must keep: nested directories, an empty file, a file of several
/// chunks, many small files, an executable, a read-only directory and a symbolic link.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    fs::create_dir_all(root.join("many")).unwrap();
    fs::write(root.join("etc/conf.d/empty"), b"").unwrap();
    fs::write(root.join("etc/app.conf"), b"key = value\n").unwrap();
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    fs::write(root.join("big.bin"), big).unwrap();
    for i in 0..300 {
        fs::write(root.join(format!("many/f{i:03}")), format!("file {i}\n").repeat(i % 17 + 1)).unwrap();
    }
    fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("etc/app.conf", root.join("link")).unwrap();
    fs::set_permissions(root.join("etc/conf.d"), fs::Permissions::from_mode(0o555)).unwrap();
}

/// Each entry under `root`: relative path, kind, mode, and content or link target.
fn describe(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let mode = meta.mode() & 0o7777;
            if meta.is_dir() {
                out.push(format!("{rel} dir {mode:o}"));
                stack.push(path);
            } else if meta.file_type().is_symlink() {
                out.push(format!("{rel} -> {}", fs::read_link(&path).unwrap().display()));
            } else {
                let hash = xxhash(&fs::read(&path).unwrap());
                out.push(format!("{rel} file {mode:o} {} {hash:x}", meta.len()));
            }
        }
    }
    out.sort();
    out
}

fn xxhash(data: &[u8]) -> u64 {
    // FNV-1a: enough to tell contents apart in a test.
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

#[tokio::test]
async fn a_tree_pushed_and_pulled_back_is_the_same_tree() {
    let s = Scratch::new("files-local");
    make_tree(&s.path("src"));
    let want = describe(&s.path("src"));
    let rt = runtime();
    let ctx = rt.local().await.unwrap();

    // To a path that does not exist: the tree becomes it.
    let done = ctx.push(s.path("src"), s.path("pushed"), Keep::mode()).await.unwrap();
    assert_eq!((done.files, done.dirs, done.links), (304, 4, 1), "{done:?}");
    assert_eq!(done.bytes, fs::metadata(s.path("src/big.bin")).unwrap().len() + sizes(&s.path("src")));
    assert_eq!(describe(&s.path("pushed")), want);
    // Into a directory that exists: under the source's own name, as `scp -r` does.
    fs::create_dir(s.path("into")).unwrap();
    ctx.push(s.path("src"), s.path("into"), Keep::mode()).await.unwrap();
    assert_eq!(describe(&s.path("into/src")), want);
    // Pulled back, times kept when asked.
    ctx.pull(s.path("pushed"), s.path("pulled"), Keep::mode().with_times()).await.unwrap();
    assert_eq!(describe(&s.path("pulled")), want);
    let mtime = |p: &str| fs::symlink_metadata(s.path(p)).unwrap().mtime();
    assert_eq!(mtime("pulled/big.bin"), mtime("pushed/big.bin"));
    assert_eq!(mtime("pulled/etc"), mtime("pushed/etc"));
    // One file, into a directory and to a new name; pushed again over itself.
    ctx.push(s.path("src/run.sh"), s.path("into"), Keep::mode()).await.unwrap();
    ctx.push(s.path("src/run.sh"), s.path("renamed.sh"), Keep::mode()).await.unwrap();
    ctx.push(s.path("src/etc/app.conf"), s.path("renamed.sh"), Keep::mode()).await.unwrap();
    assert_eq!(fs::read(s.path("into/run.sh")).unwrap(), b"#!/bin/sh\necho hi\n");
    assert_eq!(fs::read(s.path("renamed.sh")).unwrap(), b"key = value\n");
    assert_eq!(fs::metadata(s.path("into/run.sh")).unwrap().mode() & 0o777, 0o750);
    rt.shutdown().await;
}

/// Bytes of the small files of [`make_tree`] (all but big.bin).
fn sizes(root: &Path) -> u64 {
    let small: u64 = (0..300).map(|i| fs::metadata(root.join(format!("many/f{i:03}"))).unwrap().len()).sum();
    small + 12 + 18
}

#[tokio::test]
async fn files_move_over_ssh_between_two_contexts_and_through_a_sudo_hop() {
    let Some(lab) = lab() else { return };
    let s = Scratch::new("files-ssh");
    make_tree(&s.path("src"));
    let want = describe(&s.path("src"));
    let rt = runtime();
    let plain = rt.start(lab.ssh("plain")).await.unwrap();
    let remote = format!("/tmp/hypha-files-{}", std::process::id());
    plain.check(Command::new(["rm", "-rf", &remote])).await.unwrap();
    plain.push(s.path("src"), &remote, Keep::mode()).await.unwrap();
    let listing = plain.check(Command::shell(format!("cd {remote} && ls -l run.sh many | head -3"))).await.unwrap();
    assert!(listing.stdout[0].starts_with("-rwxr-x---"), "{listing:?}");
    plain.pull(&remote, s.path("back"), Keep::mode()).await.unwrap();
    assert_eq!(describe(&s.path("back")), want);

    // Host to host: from the SSH context to a sudo context started through it, and to a local one.
    let sudo = rt.start(hypha::Sudo::new("hypha-nopw")).via(&plain).await.unwrap();
    let theirs = format!("/tmp/hypha-files-nopw-{}", std::process::id());
    sudo.check(Command::new(["rm", "-rf", &theirs])).await.unwrap();
    let done = copy(&plain, &remote, &sudo, &theirs, Keep::mode()).await.unwrap();
    assert_eq!(done.files, 304);
    let owner = sudo.check(Command::new(["stat", "-c", "%U %a", &format!("{theirs}/run.sh")])).await.unwrap();
    assert_eq!(owner.stdout, ["hypha-nopw 750"]);
    let local = rt.local().await.unwrap();
    copy(&sudo, &theirs, &local, s.path("from-sudo"), Keep::mode()).await.unwrap();
    assert_eq!(describe(&s.path("from-sudo")), want);
    sudo.check(Command::shell(format!("chmod -R u+w {theirs}; rm -rf {theirs}"))).await.unwrap();
    plain.check(Command::shell(format!("chmod -R u+w {remote}; rm -rf {remote}"))).await.unwrap();
    rt.shutdown().await;
}

#[tokio::test]
async fn missing_files_and_refused_writes_name_host_and_path() {
    let s = Scratch::new("files-errors");
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let host = ctx.hello().host;
    // Here: the source does not exist.
    let missing = s.path("no-such-file");
    let err = ctx.push(&missing, s.path("dst"), Keep::mode()).await.unwrap_err();
    assert!(matches!(err, FileError::Io { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&host) && text.contains(&*missing.to_string_lossy()) && text.contains("No such file"),
        "{text}"
    );
    // There: the source does not exist.
    let text = ctx.pull(&missing, s.path("dst"), Keep::mode()).await.unwrap_err().to_string();
    assert!(
        text.contains(&host) && text.contains(&*missing.to_string_lossy()) && text.contains("No such file"),
        "{text}"
    );
    assert!(text.contains("controller → "), "the path of contexts: {text}");
    // There: the target's directory does not exist.
    fs::write(s.path("file"), b"data").unwrap();
    let nowhere = s.path("no-dir/file");
    let text = ctx.push(s.path("file"), &nowhere, Keep::mode()).await.unwrap_err().to_string();
    assert!(text.contains(&*nowhere.to_string_lossy()) && text.contains("No such file"), "{text}");
    assert!(!s.path("dst").exists());
    // The context goes on.
    assert_eq!(ctx.call(Echo("still here".into())).await.unwrap(), "still here");
    rt.shutdown().await;
}

#[tokio::test]
async fn no_permission_and_a_full_disk_are_errors_that_leave_no_partial_file() {
    let Some(lab) = lab() else { return };
    let s = Scratch::new("files-full");
    let rt = runtime();
    let plain = rt.start(lab.ssh("plain")).await.unwrap();
    let host = "lab-plain";
    // No permission: the lab user cannot write into /root.
    fs::write(s.path("small"), b"data").unwrap();
    let text = plain.push(s.path("small"), "/root/hypha-denied", Keep::mode()).await.unwrap_err().to_string();
    assert!(text.contains(host) && text.contains("/root/hypha-denied") && text.contains("Permission denied"), "{text}");
    // A full disk: 4 MiB into 1 MiB.
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
    fs::write(s.path("big"), &data).unwrap();
    let text = plain.push(s.path("big"), "/tmp/small-disk/big", Keep::mode()).await.unwrap_err().to_string();
    assert!(text.contains(host) && text.contains("/tmp/small-disk/big") && text.contains("No space left"), "{text}");
    let left = plain.check(Command::new(["ls", "-A", "/tmp/small-disk"])).await.unwrap();
    assert!(left.stdout.is_empty(), "left behind: {left:?}");
    // A tree that fills it: the files that fit are whole, the one that did not is gone.
    fs::create_dir(s.path("tree")).unwrap();
    for i in 0..8 {
        fs::write(s.path(&format!("tree/f{i}")), &data[..256 << 10]).unwrap();
    }
    let text = plain.push(s.path("tree"), "/tmp/small-disk/tree", Keep::mode()).await.unwrap_err().to_string();
    assert!(text.contains("No space left"), "{text}");
    let sizes =
        plain.check(Command::shell("cd /tmp/small-disk/tree && ls -A | xargs -r stat -c '%n %s'")).await.unwrap();
    assert!(
        !sizes.stdout.is_empty() && sizes.stdout.iter().all(|l| l.ends_with(" 262144") && !l.starts_with('.')),
        "{sizes:?}"
    );
    plain.check(Command::new(["rm", "-rf", "/tmp/small-disk/tree"])).await.unwrap();
    // Pulled to a place here that cannot take it: the error names this host and the path.
    let here = hypha::Identity::current().host.clone();
    let text = plain.pull("/etc/hostname", "/proc/hypha-denied", Keep::mode()).await.unwrap_err().to_string();
    assert!(text.contains(&here) && text.contains("/proc/hypha-denied"), "{text}");
    // The context goes on.
    assert_eq!(plain.check(Command::new(["hostname"])).await.unwrap().stdout, [host]);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_file_larger_than_4_gib_arrives_whole() {
    let s = Scratch::new("files-huge");
    let size: u64 = (4 << 30) + (3 << 20) + 5;
    let marks = [0u64, (2 << 30) + 17, (4 << 30) + 4099, size - 3];
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(s.path("huge")).unwrap();
        for &at in &marks {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(b"hyp").unwrap();
        }
        f.set_len(size).unwrap();
    }
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let done = ctx.push(s.path("huge"), s.path("copy"), Keep::mode()).await.unwrap();
    assert_eq!((done.files, done.bytes), (1, size));
    let meta = fs::metadata(s.path("copy")).unwrap();
    assert_eq!(meta.len(), size);
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = fs::File::open(s.path("copy")).unwrap();
        for &at in &marks {
            let mut buf = [0u8; 3];
            f.seek(SeekFrom::Start(at)).unwrap();
            f.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"hyp", "at {at}");
        }
    }
    rt.shutdown().await;
}

//! Who and where this process is: user, host, architecture, and the hash of its own executable.

use std::ffi::CStr;
use std::io::Read;
use std::sync::OnceLock;

use hypha_runtime::proto::{Hello, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};

/// A context's answer to [`Whoami`](crate::Whoami).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Process id.
    pub pid: u32,
    /// User name (effective uid).
    pub user: String,
    /// Host name.
    pub host: String,
    /// `uname -m`.
    pub arch: String,
}

impl Identity {
    /// This process, looked up once.
    pub fn current() -> &'static Identity {
        static ID: OnceLock<Identity> = OnceLock::new();
        ID.get_or_init(|| Identity { pid: std::process::id(), user: user_name(), host: host_name(), arch: machine() })
    }

    /// `user@host pid N`, the form errors use.
    pub fn origin(&self) -> String {
        format!("{}@{} pid {}", self.user, self.host, self.pid)
    }
}

/// The Hello this process sends when it starts as an agent.
pub fn hello() -> std::io::Result<Hello> {
    let me = Identity::current();
    Ok(Hello {
        protocol: PROTOCOL_VERSION,
        binary_hash: exe_hash()?.to_owned(),
        pid: me.pid,
        user: me.user.clone(),
        host: me.host.clone(),
        arch: me.arch.clone(),
    })
}

/// Content hash (xxh3-128, hex) of this process's executable, computed once. It names the agent
/// binary in caches and proves both ends of a link run the same code.
pub fn exe_hash() -> std::io::Result<&'static str> {
    static HASH: OnceLock<String> = OnceLock::new();
    if let Some(h) = HASH.get() {
        return Ok(h);
    }
    let h = hash_reader(open_exe()?)?;
    Ok(HASH.get_or_init(|| h))
}

/// The path that names this process's executable: on Linux `/proc/self/exe`, which opens (and
/// runs) the file this process was started from even after another file was renamed over its
/// path (a sibling start installing the same agent) or it was removed; elsewhere
/// [`std::env::current_exe`].
pub(crate) fn exe_path() -> std::io::Result<std::path::PathBuf> {
    let proc = std::path::Path::new("/proc/self/exe");
    if cfg!(target_os = "linux") && proc.exists() {
        return Ok(proc.to_owned());
    }
    std::env::current_exe()
}

/// This process's executable, opened: the file that is running, not whatever its path names now.
pub(crate) fn open_exe() -> std::io::Result<std::fs::File> {
    std::fs::File::open(exe_path()?)
}

/// xxh3-128 of a file's content, as 32 hex digits.
pub fn hash_file(path: &std::path::Path) -> std::io::Result<String> {
    hash_reader(std::fs::File::open(path)?)
}

/// xxh3-128 of `data`, as 32 hex digits (the form [`exe_hash`] gives).
pub(crate) fn hash_bytes(data: &[u8]) -> String {
    hex(xxhash_rust::xxh3::xxh3_128(data))
}

/// An xxh3-128 digest as the 32 hex digits hashes are written in.
pub(crate) fn hex(digest: u128) -> String {
    format!("{digest:032x}")
}

fn hash_reader(file: impl Read) -> std::io::Result<String> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    each_chunk(file, |chunk| hasher.update(chunk))?;
    Ok(hex(hasher.digest128()))
}

/// Feed everything `file` yields to `f`, a MiB at a time.
pub(crate) fn each_chunk(mut file: impl Read, mut f: impl FnMut(&[u8])) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        f(&buf[..n]);
    }
}

fn user_name() -> String {
    let uid = unsafe { libc::geteuid() };
    let mut pw = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the sizes given; `out` is null or points into `pw`/`buf`.
    let rc = unsafe { libc::getpwuid_r(uid, pw.as_mut_ptr(), buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc == 0 && !out.is_null() {
        // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string inside `buf`.
        let name = unsafe { CStr::from_ptr((*out).pw_name) };
        return name.to_string_lossy().into_owned();
    }
    format!("uid{uid}")
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        if let Ok(s) = CStr::from_bytes_until_nul(&buf) {
            return s.to_string_lossy().into_owned();
        }
    }
    "unknown-host".to_owned()
}

fn machine() -> String {
    let mut u = std::mem::MaybeUninit::<libc::utsname>::uninit();
    // SAFETY: uname fills the struct on success.
    if unsafe { libc::uname(u.as_mut_ptr()) } == 0 {
        // SAFETY: initialised by the successful call above; fields are NUL-terminated.
        let u = unsafe { u.assume_init() };
        let m = unsafe { CStr::from_ptr(u.machine.as_ptr()) };
        return m.to_string_lossy().into_owned();
    }
    std::env::consts::ARCH.to_owned()
}

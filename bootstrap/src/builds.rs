//! The builds of this program an agent can be started from, one per architecture.
//!
//! A host runs the build for its own architecture. This executable is the build for the
//! architecture it was compiled for; builds of the same program for other architectures are files
//! the user names ([`add_build`], `Options::agent_for` in `hypha-actors`, `--agent ARCH=PATH` in
//! the examples). The stub is offered every build's [`Fingerprint`] and picks the one for its
//! host's `uname -m` ([`Builds`]); the agent's Hello then proves that build is what runs.
//!
//! A context that starts children *via* itself learns the controller's builds with each start
//! (`Spawn::builds`). It serves its own executable for its own architecture, and fetches any other
//! build from the context that asked for the start, once, when a child first needs it (a cached
//! agent needs nothing), keeping it in memory for the children after ([`Source::Fetch`]). Every
//! context serves the builds it has to its descendants (`hypha.build`, [`BuildRequest`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::method::BoxFuture;
use crate::stub::{Fingerprint, Payload};

/// The architecture names builds go by: Rust's (`std::env::consts::ARCH`), which for the common
/// ones is what `uname -m` says. Aliases are mapped (`arm64` to `aarch64`, `amd64` to `x86_64`,
/// `i686` to `x86`, `armv7l` to `arm`); the stub maps `uname -m` the same way.
pub fn normalize_arch(name: &str) -> String {
    match name {
        "amd64" | "x64" => "x86_64",
        "arm64" => "aarch64",
        "i386" | "i486" | "i586" | "i686" => "x86",
        "ppc64le" | "ppc64" => "powerpc64",
        n if n.starts_with("armv") => "arm",
        n => n,
    }
    .to_owned()
}

/// The architecture this executable was built for.
pub fn own_arch() -> &'static str {
    std::env::consts::ARCH
}

/// Where a build's bytes come from.
pub enum Source {
    /// This executable.
    Own,
    /// A file on this host.
    File(PathBuf),
    /// Another context, asked when a child first needs the build.
    Fetch(Box<dyn Fn() -> BoxFuture<'static, std::io::Result<Payload>> + Send + Sync>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Own => f.write_str("Own"),
            Source::File(p) => f.debug_tuple("File").field(p).finish(),
            Source::Fetch(_) => f.write_str("Fetch"),
        }
    }
}

/// One build of this program: its architecture, fingerprint, and (loaded once, when first
/// needed) its bytes.
#[derive(Debug)]
pub struct Build {
    arch: String,
    fingerprint: Fingerprint,
    source: Source,
    payload: OnceCell<Arc<Payload>>,
}

impl Build {
    /// A build of `arch` with `fingerprint`, whose bytes come from `source`.
    pub fn new(arch: &str, fingerprint: Fingerprint, source: Source) -> Build {
        Build { arch: normalize_arch(arch), fingerprint, source, payload: OnceCell::new() }
    }

    /// The architecture it runs on.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// What the stub checks a cached copy against.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Where its bytes come from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Its bytes, ready to upload: read (or fetched) and compressed once; concurrent first callers
    /// wait for the same result, and a failure is retried by the next caller. A payload whose
    /// hash is not the fingerprint's is refused (a file replaced since it was named, or a
    /// fetched copy damaged).
    pub async fn payload(&self) -> std::io::Result<Arc<Payload>> {
        self.payload
            .get_or_try_init(|| async {
                let payload = match &self.source {
                    Source::Own => return Payload::current().await,
                    Source::File(path) => {
                        let path = path.clone();
                        blocking(move || Payload::from_reader(std::fs::File::open(&path)?)).await?
                    }
                    Source::Fetch(fetch) => fetch().await?,
                };
                if payload.hash != self.fingerprint.hash || payload.raw_len != self.fingerprint.len {
                    return Err(std::io::Error::other(format!(
                        "the {} build is not the one named ({} bytes with hash {}, not {} bytes with hash {}){}",
                        self.arch,
                        payload.raw_len,
                        payload.hash,
                        self.fingerprint.len,
                        self.fingerprint.hash,
                        match &self.source {
                            Source::File(p) => format!(": {} changed since it was added", p.display()),
                            _ => String::new(),
                        }
                    )));
                }
                Ok(Arc::new(payload))
            })
            .await
            .cloned()
    }
}

/// The builds this process knows, by architecture (this executable's own is not stored: it is
/// always there, unless a build for its architecture was added).
fn registry() -> &'static Mutex<BTreeMap<String, Arc<Build>>> {
    static BUILDS: Mutex<BTreeMap<String, Arc<Build>>> = Mutex::new(BTreeMap::new());
    &BUILDS
}

/// A build file that cannot serve as an agent.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// It cannot be read.
    #[error("the {arch} build {}: {source}", path.display())]
    Unreadable {
        /// The architecture it was named for.
        arch: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not an executable for the architecture it was named for.
    #[error("the {arch} build {} is {found}", path.display())]
    WrongKind {
        /// The architecture it was named for.
        arch: String,
        /// The file.
        path: PathBuf,
        /// What it is instead (`not an ELF executable`, `an ELF executable for x86_64`).
        found: String,
    },
}

/// Serve `path` to hosts of `arch` (Rust's name for it, or an alias [`normalize_arch`] knows):
/// a build of this same program for that architecture, which should be static so it runs
/// whatever the host's C library (`scripts/build-agents.sh` in hypha's repository makes them).
/// The file is checked to be an ELF executable for `arch` and fingerprinted now; it is read
/// again, and its hash checked, when a host first needs it. A second build for one architecture
/// replaces the first; one for this executable's own architecture is served instead of this
/// executable (local contexts still run this executable).
pub fn add_build(arch: &str, path: impl AsRef<Path>) -> Result<(), BuildError> {
    let (arch, path) = (normalize_arch(arch), path.as_ref().to_owned());
    let unreadable = |source| BuildError::Unreadable { arch: arch.clone(), path: path.clone(), source };
    let mut head = Vec::with_capacity(20);
    std::fs::File::open(&path).and_then(|f| f.take(20).read_to_end(&mut head)).map_err(unreadable)?;
    match elf_arch(&head) {
        Some(found) if found == arch => {}
        found => {
            let found = match found {
                Some(other) => format!("an ELF executable for {other}"),
                None => "not an ELF executable".to_owned(),
            };
            return Err(BuildError::WrongKind { arch, path, found });
        }
    }
    let fingerprint = Fingerprint::of_file(&path).map_err(unreadable)?;
    let build = Build::new(&arch, fingerprint, Source::File(path));
    registry().lock().unwrap_or_else(|e| e.into_inner()).insert(arch, Arc::new(build));
    Ok(())
}

/// Offer `build` for its architecture unless one with the same hash is offered already (a via
/// start's builds, learned from its request).
pub(crate) fn learn(build: Build) {
    let mut builds = registry().lock().unwrap_or_else(|e| e.into_inner());
    if builds.get(build.arch()).is_some_and(|b| b.fingerprint.hash == build.fingerprint.hash) {
        return;
    }
    builds.insert(build.arch.clone(), Arc::new(build));
}

/// The architecture an ELF header (its first 20 bytes) says it is for, if it is an executable or
/// shared object of an architecture this knows.
fn elf_arch(head: &[u8]) -> Option<&'static str> {
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return None;
    }
    let le = head[5] == 1;
    let half = |at: usize| {
        if le {
            u16::from_le_bytes([head[at], head[at + 1]])
        } else {
            u16::from_be_bytes([head[at], head[at + 1]])
        }
    };
    if !matches!(half(16), 2 | 3) {
        return None; // not ET_EXEC or ET_DYN
    }
    Some(match half(18) {
        3 => "x86",
        8 => "mips",
        20 | 21 => "powerpc64",
        22 => "s390x",
        40 => "arm",
        62 => "x86_64",
        183 => "aarch64",
        243 => "riscv64",
        258 => "loongarch64",
        _ => return None,
    })
}

/// Every build this process can serve, one per architecture, at the time of the call.
#[derive(Clone, Debug)]
pub struct Builds {
    builds: Vec<Arc<Build>>,
}

impl Builds {
    /// This executable's own build and every build added or learned.
    pub async fn current() -> std::io::Result<Builds> {
        static OWN: OnceCell<Arc<Build>> = OnceCell::const_new();
        let own = OWN
            .get_or_try_init(|| async {
                let fingerprint = Fingerprint::current().await?.clone();
                Ok::<_, std::io::Error>(Arc::new(Build::new(own_arch(), fingerprint, Source::Own)))
            })
            .await?;
        let mut builds: Vec<Arc<Build>> =
            registry().lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        if !builds.iter().any(|b| b.arch == own.arch) {
            builds.push(own.clone());
        }
        builds.sort_by(|a, b| a.arch.cmp(&b.arch));
        Ok(Builds { builds })
    }

    /// The build for hosts of `arch` (already normalized, as the stub reports it).
    pub fn get(&self, arch: &str) -> Option<&Arc<Build>> {
        self.builds.iter().find(|b| b.arch == arch)
    }

    /// Every build, by architecture.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Build>> {
        self.builds.iter()
    }

    /// The architectures there are builds for, as `x86_64` or `aarch64, x86_64`.
    pub fn arches(&self) -> String {
        self.builds.iter().map(|b| b.arch.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// What a via start tells the parent about them.
    pub fn offers(&self) -> Vec<Offer> {
        self.builds.iter().map(|b| Offer { arch: b.arch.clone(), fingerprint: b.fingerprint.clone() }).collect()
    }
}

/// A build a context may serve to its children, as a via start names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Its architecture.
    pub arch: String,
    /// Its fingerprint.
    pub fingerprint: Fingerprint,
}

/// Ask a context for its build with this hash, as a download of its gzip-compressed bytes
/// (answered with the uncompressed size).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BuildRequest {
    /// The build's hash.
    pub hash: String,
}

impl hypha_runtime::Request for BuildRequest {
    type Response = u64;
    const NAME: &'static str = "hypha.build";
}

static SERVED: AtomicU64 = AtomicU64::new(0);

/// How many times this process has served a build to another context (`hypha.build`).
pub fn served() -> u64 {
    SERVED.load(Ordering::Relaxed)
}

/// The `hypha.build` handler: the build with the requested hash, if this process has it.
pub(crate) async fn serve(
    req: BuildRequest,
    _cx: hypha_runtime::Cx,
    mut tx: hypha_runtime::ByteSender,
) -> Result<u64, hypha_runtime::HandlerError> {
    let builds = Builds::current().await?;
    let Some(build) = builds.iter().find(|b| b.fingerprint.hash == req.hash) else {
        return Err(format!("no build with hash {} here", req.hash).into());
    };
    let payload = build.payload().await?;
    SERVED.fetch_add(1, Ordering::Relaxed);
    for chunk in payload.gzip.chunks(256 << 10) {
        tx.send(bytes::Bytes::copy_from_slice(chunk)).await?;
    }
    Ok(payload.raw_len)
}

/// Run `work` on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(format!("reading a build: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names_are_normalized_as_the_stub_does() {
        for (given, want) in
            [("x86_64", "x86_64"), ("amd64", "x86_64"), ("arm64", "aarch64"), ("armv7l", "arm"), ("i686", "x86")]
        {
            assert_eq!(normalize_arch(given), want);
        }
    }

    #[test]
    fn a_file_that_is_not_a_build_for_the_arch_is_refused() {
        let exe = std::env::current_exe().unwrap();
        let err = add_build("aarch64", &exe).unwrap_err();
        assert!(err.to_string().contains(&format!("is an ELF executable for {}", own_arch())), "{err}");
        let not_elf = std::env::temp_dir().join(format!("hypha-not-elf-{}", std::process::id()));
        std::fs::write(&not_elf, b"#!/bin/sh\necho this is a script, not a build\n").unwrap();
        let err = add_build("aarch64", &not_elf).unwrap_err();
        assert!(err.to_string().contains("is not an ELF executable"), "{err}");
        std::fs::remove_file(&not_elf).unwrap();
        let err = add_build("aarch64", "/nonexistent/build").unwrap_err();
        assert!(matches!(err, BuildError::Unreadable { .. }), "{err}");
    }
}

//! The file service against the test lab, side by side with `scp` in the same run: a 1 GiB file
//! pushed to `plain` (the `ssh` and the `openssh` methods, `scp`, and bare libssh2 when
//! `FILES_FLOOR_EXE` names the `ssh2_floor` bench binary), the same file through two hops
//! (`hop1` then `hop2`, against one hop to `hop1`), a tree of 1,000 small files (against
//! `scp -r`), and the peak RSS of the controller and of each agent. For the `ssh` pushes, the CPU
//! time of the controller, the agents and the sshd processes serving them is reported too: every
//! lab host runs on this machine, so a transfer's hops share its CPUs (`machine_cpu_s` in the
//! JSON is the whole machine's, other work included).
//!
//! ```text
//! bash tests/lab/lab.sh up       # as root, once
//! benches/files.sh               # builds this and ssh2_floor, runs both interleaved
//! ```
//!
//! A plain `main` that times its own runs: a 1 GiB transfer takes seconds, and the runs of hypha
//! and of its peer are interleaved (hypha, scp, hypha, ...) so that the noise of a shared machine
//! hits both alike. Prints one JSON object per figure on stdout (medians), a table on stderr.
//!
//! Environment: `FILES_RUNS` (rounds of 1 GiB figures, default 5), `FILES_SMALL_RUNS` (rounds of
//! the tree, default 15), `FILES_MIB` (size of the big file, default 1024), `FILES_GROUPS`
//! (comma-separated, of `big`, `hops`, `small`; default all: run each group in a process of its
//! own for a controller peak of its own), `FILES_CIPHER` (default `aes128-ctr`, the cipher the
//! `ssh` method negotiates by default: given to every client here), `FILES_FLOOR_EXE`.
//! Without the lab the bench is skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{env_num, handlers, tokio_rt};
use hypha::files::Keep;
use hypha::{Context, OpenSsh, Runtime, Ssh};

/// Where every transfer goes on the far host (a tmpfs in the lab), emptied before each run.
const REMOTE_DIR: &str = "/tmp/hypha-bench-files";
/// The cipher the `ssh` method negotiates by default (the first of `DEFAULT_CIPHERS`).
const DEFAULT_CIPHER: &str = "aes128-ctr";

struct Lab {
    dir: PathBuf,
    user: String,
    env: String,
    cipher: String,
}

impl Lab {
    fn find() -> Option<Lab> {
        let dir = PathBuf::from(std::env::var("HYPHA_LAB_DIR").unwrap_or_else(|_| "/run/hypha-lab".into()));
        let env = std::fs::read_to_string(dir.join("env")).ok()?;
        let user = env.lines().find_map(|l| l.strip_prefix("USER="))?.to_owned();
        let cipher = std::env::var("FILES_CIPHER").unwrap_or_else(|_| DEFAULT_CIPHER.into());
        Some(Lab { dir, user, env, cipher })
    }

    fn host(&self, name: &str) -> String {
        let key = format!("HOST_{name}=");
        self.env.lines().find_map(|l| l.strip_prefix(&key)).map(str::to_owned).expect("a lab host")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("keys/id_ed25519")
    }

    fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    fn ssh(&self, name: &str) -> Ssh {
        let m = Ssh::new(format!("{}@{}", self.user, self.host(name)))
            .with_key(self.key())
            .with_known_hosts(self.known_hosts());
        // The default list starts with the default cipher: only another one needs saying.
        if self.cipher == DEFAULT_CIPHER {
            m
        } else {
            m.with_ciphers(self.cipher.clone())
        }
    }

    fn openssh(&self, name: &str) -> OpenSsh {
        OpenSsh::new(format!("{}@{}", self.user, self.host(name)))
            .with_identity(self.key())
            .with_known_hosts(self.known_hosts())
            .with_args(["-F", "/dev/null", "-c", &self.cipher])
    }

    /// `scp` (or `ssh`) with no configuration, the lab's key and known_hosts only, and the cipher.
    fn client(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
            .arg(self.key())
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts().display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-c", &self.cipher]);
        c
    }

    /// Wall time (and the machine's CPU seconds) of `scp [-r] src user@plain:REMOTE_DIR/`.
    fn scp(&self, src: &Path, recursive: bool) -> (Duration, f64) {
        let mut c = self.client("scp");
        if recursive {
            c.arg("-r");
        }
        c.arg("-q").arg(src).arg(format!("{}@{}:{REMOTE_DIR}/", self.user, self.host("plain")));
        let (t, cpu) = (Instant::now(), cpu_busy());
        let status = c.status().expect("scp");
        let took = (t.elapsed(), cpu_busy() - cpu);
        assert!(status.success(), "scp failed: {status}");
        took
    }

    /// Wall time of `ssh plain true`: what each scp spends on connecting and authenticating.
    fn ssh_true(&self) -> (Duration, f64) {
        let mut c = self.client("ssh");
        c.arg("-n").arg(format!("{}@{}", self.user, self.host("plain"))).arg("true");
        let (t, cpu) = (Instant::now(), cpu_busy());
        let status = c.status().expect("ssh");
        let took = (t.elapsed(), cpu_busy() - cpu);
        assert!(status.success(), "ssh failed: {status}");
        took
    }
}

/// Fill `buf` with xorshift64* output: incompressible, and with no zero page for the sink to skip.
fn random_fill(state: &mut u64, buf: &mut [u8]) {
    for word in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        word.copy_from_slice(&v[..word.len()]);
    }
}

/// A file of `mib` MiB of random bytes, written 1 MiB at a time.
fn make_big(path: &Path, mib: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create the big file"));
    let mut state = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        random_fill(&mut state, &mut buf);
        f.write_all(&buf).expect("write the big file");
    }
    f.flush().expect("write the big file");
}

/// 1,000 files of 1 to 8 KiB of random bytes, in 10 directories. Their total size.
fn make_tree(root: &Path) -> u64 {
    let mut state = 0x2545_f491_4f6c_dd1d;
    let mut total = 0;
    for d in 0..10 {
        let dir = root.join(format!("dir{d}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..100 {
            let mut size = [0u8; 8];
            random_fill(&mut state, &mut size);
            let size = 1024 + (u64::from_le_bytes(size) % (7 * 1024 + 1)) as usize;
            let mut buf = vec![0u8; size];
            random_fill(&mut state, &mut buf);
            std::fs::write(dir.join(format!("file{f:03}.dat")), &buf).expect("write a small file");
            total += size as u64;
        }
    }
    total
}

/// Empty [`REMOTE_DIR`] in `ctx` (not timed).
async fn clear(ctx: &Context) {
    let cmd = format!("rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR}");
    let out = ctx.check(hypha::process::Command::new(["sh", "-c", &cmd])).await.expect("clear");
    assert!(out.exit.success(), "clearing {REMOTE_DIR}: {:?}", out.stderr);
}

/// Wall time (and the machine's CPU seconds) of one push of `src` into [`REMOTE_DIR`] of `ctx`,
/// checked to have moved `bytes`.
async fn push(ctx: &Context, src: &Path, bytes: u64) -> (Duration, f64) {
    clear(ctx).await;
    let (t, cpu) = (Instant::now(), cpu_busy());
    let moved = ctx.push(src, REMOTE_DIR, Keep::mode()).await.expect("push");
    let took = (t.elapsed(), cpu_busy() - cpu);
    assert_eq!(moved.bytes, bytes, "bytes pushed");
    took
}

/// The `VmHWM` (peak RSS) and `VmRSS` lines of a `/proc/PID/status`, in KiB.
fn peak_rss(status: &str) -> (u64, u64) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn controller_rss() -> (u64, u64) {
    peak_rss(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
}

async fn agent_rss(ctx: &Context) -> (u64, u64) {
    let path = format!("/proc/{}/status", ctx.hello().pid);
    let out = ctx.check(hypha::process::Command::new(["cat", &path])).await.expect("agent status");
    peak_rss(&out.stdout.join("\n"))
}

/// Busy time of all the machine's CPUs since boot, in seconds (`/proc/stat`): the lab's hosts,
/// both ends and their sshd and ssh processes run here, and so does whatever else is running.
fn cpu_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: f64 = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    busy / 100.0
}

/// CPU seconds (user and system) used so far by this process.
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    stat_cpu(&stat)
}

/// utime + stime of one `/proc/PID/stat` line, in seconds (the kernel's 100 ticks a second).
fn stat_cpu(line: &str) -> f64 {
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = line.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // state is not a number: utime and stime are the 12th and 13th numbers after it.
    (f.get(10).unwrap_or(&0.0) + f.get(11).unwrap_or(&0.0)) / 100.0
}

/// CPU seconds used so far by `ctx`'s agent and its ancestors up to the sshd process serving its
/// session (which decrypts what arrives), that sshd included.
async fn far_cpu(ctx: &Context) -> f64 {
    let script = format!(
        "p={}; while [ \"$p\" -gt 1 ]; do s=$(cat /proc/$p/stat) || break; echo \"$s\"; \
         case \"$s\" in *'(sshd)'*) break;; esac; p=$(echo \"${{s##*)}}\" | cut -d' ' -f3); done",
        ctx.hello().pid
    );
    let out = ctx.check(hypha::process::Command::new(["sh", "-c", &script])).await.expect("agent cpu");
    out.stdout.iter().map(|l| stat_cpu(l)).sum()
}

/// One figure: its runs, in seconds, and the machine's CPU seconds during each.
#[derive(Default)]
struct Figure {
    runs: Vec<f64>,
    cpu: Vec<f64>,
}

impl Figure {
    fn add(&mut self, (d, cpu): (Duration, f64)) {
        self.runs.push(d.as_secs_f64());
        self.cpu.push(cpu);
    }

    fn cpu_median(&self) -> f64 {
        let mut v = self.cpu.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }

    fn median(&self) -> f64 {
        let mut v = self.runs.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
}

/// Prints figures as JSON lines (stdout) and rows (stderr, at the end).
struct Report {
    rows: Vec<String>,
}

impl Report {
    /// `figure` moved `bytes` per run; `peer`, when given, is the figure it is compared with and
    /// the target ratio (peer's time / this one's: above 1 is faster than the peer).
    fn time(&mut self, name: &str, f: &Figure, bytes: u64, cipher: &str, peer: Option<(&str, &Figure, f64)>) {
        let median = f.median();
        let mib_s = bytes as f64 / f64::from(1 << 20) / median;
        let runs: Vec<String> = f.runs.iter().map(|r| format!("{r:.4}")).collect();
        let (vs, ratio, target) = match peer {
            Some((peer, p, target)) => {
                (format!("\"{peer}\""), format!("{:.3}", p.median() / median), format!("{target}"))
            }
            None => ("null".into(), "null".into(), "null".into()),
        };
        println!(
            r#"{{"figure": "{name}", "median_s": {median:.4}, "mib_s": {mib_s:.1}, "n": {}, "bytes": {bytes}, "cipher": "{cipher}", "vs": {vs}, "ratio": {ratio}, "target": {target}, "runs_s": [{}], "machine_cpu_s": {:.2}}}"#,
            f.runs.len(),
            runs.join(", "),
            f.cpu_median()
        );
        let vs_col = match peer {
            Some((peer, _, t)) => format!("{ratio}x {peer} (target >= {t})"),
            None => "-".into(),
        };
        self.rows
            .push(format!("| {name} | {median:.3} s | {mib_s:.0} MiB/s | {} | {cipher} | {vs_col} |", f.runs.len()));
    }

    /// A floor measured elsewhere, in MiB/s (its runs), compared with `name`'s rate.
    fn floor(&mut self, rates: &[f64], bytes: u64, cipher: &str, name: &str, f: &Figure) {
        let mut v = rates.to_vec();
        v.sort_by(f64::total_cmp);
        let median = match v.len() {
            0 => return,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        let ours = bytes as f64 / f64::from(1 << 20) / f.median();
        let runs: Vec<String> = rates.iter().map(|r| format!("{r:.1}")).collect();
        println!(
            r#"{{"figure": "ssh2_floor_1gib", "peer": "libssh2", "mib_s": {median:.1}, "n": {}, "cipher": "{cipher}", "vs": "{name}", "ratio": {:.3}, "target": 1.0, "runs_mib_s": [{}]}}"#,
            v.len(),
            ours / median,
            runs.join(", ")
        );
        self.rows.push(format!(
            "| ssh2_floor_1gib (bare libssh2 into cat) | - | {median:.0} MiB/s | {} | {cipher} | {name} is {:.3}x of it (target >= 1.0) |",
            v.len(),
            ours / median
        ));
    }

    /// CPU seconds that `who` used during each run of `name` (`f`): median, and in cores.
    fn cpu(&mut self, name: &str, who: &str, cpu: &[f64], f: &Figure) {
        let mut v = cpu.to_vec();
        v.sort_by(f64::total_cmp);
        let median = v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
        println!(
            r#"{{"figure": "cpu_s", "of": "{name}", "processes": "{who}", "median_s": {median:.2}, "cores": {:.2}, "n": {}}}"#,
            median / f.median(),
            v.len()
        );
        self.rows.push(format!(
            "| CPU of {name}: {who} | {median:.2} s | {:.2} cores busy | {} | - | - |",
            median / f.median(),
            v.len()
        ));
    }

    fn rss(&mut self, who: &str, (hwm, rss): (u64, u64)) {
        println!(r#"{{"figure": "peak_rss", "process": "{who}", "vm_hwm_kib": {hwm}, "vm_rss_kib": {rss}}}"#);
        self.rows.push(format!(
            "| peak RSS: {who} | - | {:.1} MiB (now {:.1} MiB) | - | - | - |",
            hwm as f64 / 1024.0,
            rss as f64 / 1024.0
        ));
    }
}

/// Runs of the `ssh2_floor` bench binary (three 1 GiB writes each): their MiB/s.
fn floor_runs(exe: &Path, cipher: &str, mib: usize) -> Vec<f64> {
    let out = Command::new(exe).env("CIPHER", cipher).env("MIB", mib.to_string()).output().expect("ssh2_floor");
    assert!(out.status.success(), "ssh2_floor failed: {}", String::from_utf8_lossy(&out.stderr));
    // Its stderr has a line `libssh2 CIPHER (CHUNK): N MiB/s` per run.
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("libssh2 ")?.rsplit_once(": ")?.1.strip_suffix(" MiB/s")?.parse().ok())
        .collect()
}

/// The local files of a run, removed when it ends (a failed run too).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() {
    hypha::run_if_agent(&handlers());
    let Some(lab) = Lab::find() else {
        eprintln!("files bench skipped: the lab is not up (run `bash tests/lab/lab.sh up` as root)");
        return;
    };
    let runs = env_num("FILES_RUNS", 5);
    let small_runs = env_num("FILES_SMALL_RUNS", 15);
    let mib = env_num("FILES_MIB", 1024);
    let groups = std::env::var("FILES_GROUPS").unwrap_or_else(|_| "big,hops,small".into());
    let floor_exe = std::env::var_os("FILES_FLOOR_EXE").map(PathBuf::from);
    let cipher = lab.cipher.clone();
    let mut report = Report { rows: Vec::new() };

    let scratch = Scratch(std::env::temp_dir().join(format!("hypha-bench-files-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).expect("scratch dir");
    let scratch = &scratch.0;
    let big = scratch.join("big.bin");
    let bytes = (mib as u64) << 20;
    let tree = scratch.join("tree");
    let tree_bytes = make_tree(&tree);
    if groups.contains("big") || groups.contains("hops") {
        make_big(&big, mib);
    }
    eprintln!("files bench: {mib} MiB file and a 1,000-file tree ({tree_bytes} bytes) in {}", scratch.display());
    report.rss("controller, before any transfer", controller_rss());

    let rt = tokio_rt();
    let hypha = rt.block_on(async { Runtime::new(handlers()) }).expect("hypha");
    rt.block_on(async {
        if groups.contains("big") {
            let ssh = hypha.start(lab.ssh("plain")).await.expect("ssh to plain");
            let openssh = hypha.start(lab.openssh("plain")).await.expect("openssh to plain");
            report.rss("controller, two contexts up, before the 1 GiB pushes", controller_rss());
            let (mut f_ssh, mut f_openssh) = (Figure::default(), Figure::default());
            let (mut f_scp, mut f_true) = (Figure::default(), Figure::default());
            let (mut floor, mut ssh_cpu) = (Vec::new(), Vec::new());
            for round in 1..=runs {
                let before = own_cpu() + far_cpu(&ssh).await;
                let a = push(&ssh, &big, bytes).await;
                ssh_cpu.push(own_cpu() + far_cpu(&ssh).await - before);
                clear(&ssh).await;
                let b = lab.scp(&big, false);
                let c = push(&openssh, &big, bytes).await;
                clear(&ssh).await;
                let t = lab.ssh_true();
                f_ssh.add(a);
                f_scp.add(b);
                f_openssh.add(c);
                f_true.add(t);
                let mut line = format!(
                    "round {round}: push ssh {:.2} s, scp {:.2} s, push openssh {:.2} s, ssh true {:.3} s",
                    a.0.as_secs_f64(),
                    b.0.as_secs_f64(),
                    c.0.as_secs_f64(),
                    t.0.as_secs_f64()
                );
                if let Some(exe) = &floor_exe {
                    let got = floor_runs(exe, &cipher, mib);
                    line += &format!(", ssh2 floor {got:.0?} MiB/s");
                    floor.extend(got);
                }
                eprintln!("{line}");
            }
            clear(&ssh).await;
            report.time("push_1gib_ssh", &f_ssh, bytes, &cipher, Some(("scp_1gib", &f_scp, 0.9)));
            report.time("push_1gib_openssh", &f_openssh, bytes, &cipher, Some(("scp_1gib", &f_scp, 0.9)));
            report.time("scp_1gib", &f_scp, bytes, &cipher, None);
            report.time("ssh_true (each scp's connect)", &f_true, 0, &cipher, None);
            report.floor(&floor, bytes, &cipher, "push_1gib_ssh", &f_ssh);
            report.cpu("push_1gib_ssh", "controller, plain's agent and sshd", &ssh_cpu, &f_ssh);
            report.rss("controller, after the 1 GiB pushes", controller_rss());
            report.rss("agent on plain (ssh)", agent_rss(&ssh).await);
            report.rss("agent on plain (openssh)", agent_rss(&openssh).await);
            ssh.shutdown().await;
            openssh.shutdown().await;
        }
        if groups.contains("hops") {
            let hop1 = hypha.start(lab.ssh("hop1")).await.expect("ssh to hop1");
            let hop2 = hypha.start(lab.ssh("hop2")).via(&hop1).await.expect("ssh to hop2 via hop1");
            let (mut one, mut two) = (Figure::default(), Figure::default());
            let (mut one_cpu, mut two_cpu) = (Vec::new(), Vec::new());
            for round in 1..=runs {
                let before = own_cpu() + far_cpu(&hop1).await;
                let a = push(&hop1, &big, bytes).await;
                let a_cpu = own_cpu() + far_cpu(&hop1).await - before;
                clear(&hop1).await;
                let before = own_cpu() + far_cpu(&hop1).await + far_cpu(&hop2).await;
                let b = push(&hop2, &big, bytes).await;
                let b_cpu = own_cpu() + far_cpu(&hop1).await + far_cpu(&hop2).await - before;
                clear(&hop2).await;
                eprintln!(
                    "round {round}: one hop {:.2} s ({a_cpu:.2} CPU s in hypha and sshd), two hops {:.2} s ({b_cpu:.2} CPU s)",
                    a.0.as_secs_f64(),
                    b.0.as_secs_f64()
                );
                one.add(a);
                two.add(b);
                one_cpu.push(a_cpu);
                two_cpu.push(b_cpu);
            }
            report.cpu("push_1gib_one_hop (hop1)", "controller, hop1's agent and sshd", &one_cpu, &one);
            report.cpu("push_1gib_two_hops (hop1, hop2)", "controller, hop1's and hop2's agents and sshds", &two_cpu, &two);
            report.time("push_1gib_one_hop (hop1)", &one, bytes, &cipher, None);
            report.time(
                "push_1gib_two_hops (hop1, hop2)",
                &two,
                bytes,
                &cipher,
                Some(("push_1gib_one_hop", &one, 0.8)),
            );
            report.rss("controller, after the hop pushes", controller_rss());
            report.rss("agent on hop1 (relays to hop2)", agent_rss(&hop1).await);
            report.rss("agent on hop2", agent_rss(&hop2).await);
            hop2.shutdown().await;
            hop1.shutdown().await;
        }
        if groups.contains("small") {
            let ssh = hypha.start(lab.ssh("plain")).await.expect("ssh to plain");
            let openssh = hypha.start(lab.openssh("plain")).await.expect("openssh to plain");
            let (mut f_ssh, mut f_openssh, mut f_scp) = (Figure::default(), Figure::default(), Figure::default());
            for round in 1..=small_runs {
                let a = push(&ssh, &tree, tree_bytes).await;
                clear(&ssh).await;
                let b = lab.scp(&tree, true);
                let c = push(&openssh, &tree, tree_bytes).await;
                eprintln!(
                    "round {round}: tree push ssh {:.3} s, scp -r {:.3} s, push openssh {:.3} s",
                    a.0.as_secs_f64(),
                    b.0.as_secs_f64(),
                    c.0.as_secs_f64()
                );
                f_ssh.add(a);
                f_scp.add(b);
                f_openssh.add(c);
            }
            clear(&ssh).await;
            report.time(
                "push_1000_small_files (ssh)",
                &f_ssh,
                tree_bytes,
                &cipher,
                Some(("scp_r_1000_small_files", &f_scp, 5.0)),
            );
            report.time(
                "push_1000_small_files_openssh",
                &f_openssh,
                tree_bytes,
                &cipher,
                Some(("scp_r_1000_small_files", &f_scp, 5.0)),
            );
            report.time("scp_r_1000_small_files", &f_scp, tree_bytes, &cipher, None);
            report.rss("controller, after the tree pushes", controller_rss());
            report.rss("agent on plain (ssh), after the trees", agent_rss(&ssh).await);
            ssh.shutdown().await;
            openssh.shutdown().await;
        }
    });
    rt.block_on(hypha.shutdown());
    eprintln!("| figure | median | rate | n | cipher | vs peer |");
    eprintln!("|---|---|---|---|---|---|");
    for row in &report.rows {
        eprintln!("{row}");
    }
}

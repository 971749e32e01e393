//! The floor of the SSH library itself: libssh2 (through the `ssh2` crate that async-ssh2-lite
//! re-exports), blocking, no hypha code at all, writing 1 GiB into `cat >/dev/null` on the lab's
//! `plain` host with aes128-gcm. It shows how fast the `ssh` method could be at best, next to
//! `benches/peers/openssh_baseline.sh` (the OpenSSH client, same host, same cipher).
//!
//! ```text
//! bash tests/lab/lab.sh up && cargo bench --bench ssh2_floor
//! ```

use std::io::Write;
use std::net::TcpStream;
use std::time::Instant;

use async_ssh2_lite::ssh2::{MethodType, Session};

fn main() {
    let lab = std::path::PathBuf::from(std::env::var("HYPHA_LAB_DIR").unwrap_or_else(|_| "/run/hypha-lab".into()));
    let Ok(env) = std::fs::read_to_string(lab.join("env")) else {
        eprintln!("ssh2 floor skipped: the lab is not up (run `bash tests/lab/lab.sh up` as root)");
        return;
    };
    let get = |key: &str| env.lines().find_map(|l| l.strip_prefix(key)).map(str::to_owned).expect("lab env");
    let (user, host) = (get("USER="), get("HOST_plain="));
    let cipher = std::env::var("CIPHER").unwrap_or_else(|_| "aes128-gcm@openssh.com".into());
    let mib: usize = std::env::var("MIB").ok().and_then(|m| m.parse().ok()).unwrap_or(1024);
    let chunk: usize = std::env::var("CHUNK").ok().and_then(|c| c.parse().ok()).unwrap_or(32 << 10);

    let mut rates = Vec::new();
    for _ in 0..3 {
        let mut session = Session::new().expect("session");
        session.set_tcp_stream(TcpStream::connect((host.as_str(), 22)).expect("connect"));
        session.method_pref(MethodType::CryptCs, &cipher).expect("cipher");
        session.handshake().expect("handshake");
        session.userauth_pubkey_file(&user, None, &lab.join("keys/id_ed25519"), None).expect("auth");
        let mut channel = session.channel_session().expect("channel");
        channel.exec("cat > /dev/null").expect("exec");
        let buf = vec![0u8; chunk];
        let started = Instant::now();
        let mut left = mib << 20;
        while left > 0 {
            let n = channel.write(&buf[..left.min(chunk)]).expect("write");
            left -= n;
        }
        channel.send_eof().expect("eof");
        channel.wait_eof().expect("remote eof"); // `cat` has read everything
        channel.close().expect("close");
        channel.wait_close().expect("closed");
        let secs = started.elapsed().as_secs_f64();
        rates.push(mib as f64 / secs);
        eprintln!(
            "libssh2 {} ({}): {:.0} MiB/s",
            session.methods(MethodType::CryptCs).unwrap_or("?"),
            chunk,
            mib as f64 / secs
        );
    }
    rates.sort_by(f64::total_cmp);
    println!(
        r#"{{"peer": "libssh2", "figure": "ssh2_write_mib_s", "median": {:.1}, "n": 3, "unit": "MiB/s", "cipher": "{cipher}", "mib": {mib}}}"#,
        rates[1]
    );
}

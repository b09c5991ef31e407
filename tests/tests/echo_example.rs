//! The `echo` example of teleport-transport, driven as a process the way an operator runs it:
//! `listening on ADDR` lines, shouting, TLS flags, and a drain on SIGTERM/SIGINT.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use teleport_tests::{Pki, round_trip, tls_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SOON: Duration = Duration::from_secs(10);

/// `cargo test` builds examples next to the test binaries; build it if this run did not.
fn echo_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .to_path_buf();
    let path = profile_dir.join("examples").join("echo");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "teleport-transport", "--example", "echo"])
            .status()
            .unwrap();
        assert!(status.success(), "cannot build the echo example");
    }
    path
}

struct Running {
    child: Child,
    stdout: BufReader<ChildStdout>,
    addrs: Vec<SocketAddr>,
}

fn start(args: &[&str]) -> Running {
    let mut child = Command::new(echo_binary())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let expected = args.iter().filter(|a| **a == "--listen").count();
    let mut addrs = Vec::new();
    while addrs.len() < expected {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "echo ended before it was ready"
        );
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .expect("a `listening on` line");
        addrs.push(addr.parse().unwrap());
    }
    Running {
        child,
        stdout,
        addrs,
    }
}

impl Running {
    /// Sends `signal`, then returns the rest of stdout and whether the process exited 0.
    fn stop(mut self, signal: Signal) -> (String, bool) {
        kill_process(Pid::from_child(&self.child), signal).unwrap();
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        let status = self.child.wait().unwrap();
        (rest, status.success())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shouts_on_every_address_and_drains_on_sigterm() {
    let running = start(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "[::1]:0",
        "--shout",
        "--drain-timeout",
        "5s",
    ]);
    assert_eq!(running.addrs.len(), 2);
    assert!(running.addrs.iter().all(|a| a.port() != 0));
    let mut clients = Vec::new();
    for addr in &running.addrs {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            round_trip(&mut stream, b"hello, teleport\n").await.unwrap(),
            b"HELLO, TELEPORT\n"
        );
        clients.push(stream);
    }
    // Both clients stay connected through the signal: the drain ends them cleanly.
    let (rest, ok) = tokio::task::spawn_blocking(move || running.stop(Signal::TERM))
        .await
        .unwrap();
    assert!(ok, "echo did not exit 0");
    assert_eq!(rest.trim(), "drained 2 forced 0");
    for mut stream in clients {
        let mut tail = Vec::new();
        tokio::time::timeout(SOON, stream.read_to_end(&mut tail))
            .await
            .unwrap()
            .unwrap();
        assert!(tail.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_mutual_tls_from_pem_files_and_stops_on_sigint() {
    let pki = Pki::generate();
    let dir = std::env::temp_dir().join(format!("teleport-echo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let cert = write("cert.pem", &pki.server.cert_pem);
    let key = write("key.pem", &pki.server.key_pem);
    let ca = write("ca.pem", &pki.ca_pem);
    let running = start(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--client-ca",
        &ca,
        "--handshake-timeout",
        "2s",
    ]);
    let addr = running.addrs[0];

    let mut trusted = tls_connect(addr, pki.client_config(Some(&pki.client), true))
        .await
        .unwrap();
    assert_eq!(
        round_trip(&mut trusted, b"bytes back").await.unwrap(),
        b"bytes back"
    );
    trusted.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(SOON, trusted.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();

    let anonymous = async {
        let mut stream = tls_connect(addr, pki.client_config(None, true)).await?;
        round_trip(&mut stream, b"no cert").await
    };
    assert!(
        tokio::time::timeout(SOON, anonymous)
            .await
            .unwrap()
            .is_err()
    );

    let (rest, ok) = tokio::task::spawn_blocking(move || running.stop(Signal::INT))
        .await
        .unwrap();
    assert!(ok);
    assert_eq!(rest.trim(), "drained 0 forced 0");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_fails_with_a_clear_message() {
    let run = |args: &[&str]| {
        let out = Command::new(echo_binary()).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        "/nonexistent/c.pem",
        "--tls-key",
        "/nonexistent/k.pem",
    ]);
    assert!(!ok);
    assert!(err.contains("cannot read /nonexistent/c.pem"), "{err}");

    let (ok, err) = run(&["--listen", "127.0.0.1:0", "--idle-timeout", "soon"]);
    assert!(!ok);
    assert!(err.contains("--idle-timeout"), "{err}");

    let (ok, err) = run(&["--listen", "127.0.0.1:0", "--loops", "0"]);
    assert!(!ok);
    assert!(
        err.contains("invalid config: accept_loops must be at least 1"),
        "{err}"
    );
}

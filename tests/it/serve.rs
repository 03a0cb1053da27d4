//! `behalf serve` as a process: it starts on the shipped policies with the API and the proxy,
//! answers, and stops cleanly on SIGTERM (what container runtimes send) as on SIGINT.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn serve_until(signal: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let mut child = Command::new(env!("CARGO_BIN_EXE_behalf"))
        .args(["--policies", &format!("{root}/policies"), "--state"])
        .arg(tmp.path().join("state"))
        .args(["serve", "--api", "127.0.0.1:0", "--proxy", "127.0.0.1:0"])
        .current_dir(root)
        .env("BEHALF_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut banner = String::new();
    let api = loop {
        let line = lines
            .next()
            .expect("serve exited before its banner")
            .unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if let Some(rest) = line.trim().strip_prefix("API           http://") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // The API answers.
    let mut stream = std::net::TcpStream::connect(&api).unwrap();
    std::io::Write::write_all(
        &mut stream,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"dev\":true"), "{response}");

    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve ignored SIG{signal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(exit.code(), Some(0), "{banner}{}", rest.join("\n"));
    assert!(rest.iter().any(|l| l == "behalf: stopped"), "{rest:?}");
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    serve_until("TERM");
}

#[test]
fn serve_stops_cleanly_on_sigint() {
    serve_until("INT");
}

/// SIGTERM while a request waits on a slow upstream: behalf stops accepting, lets the request
/// finish and its response reach the client, flushes the audit log and exits 0; the log
/// verifies and records the request.
#[test]
fn sigterm_lets_a_slow_request_finish_and_exits_0_with_a_verifiable_audit_log() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies");
    let state = tmp.path().join("state");
    for (file, text) in [
        (
            "behalf.toml",
            "dev = true\nstate_dir = \"../state\"\ntools_dir = \"../tools\"\n",
        ),
        (
            "services/slow.toml",
            "[service]\nname = \"slow\"\norigins = [\"http://slow.test\"]\n",
        ),
        (
            "tenants/acme.toml",
            "[tenant]\nname = \"acme\"\n\n[[grant]]\nid = \"slow\"\nwho = [\"*\"]\n\
             clients = [\"proxy\"]\nservice = \"slow\"\nallow = [\"GET /**\"]\n",
        ),
    ] {
        let path = policies.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    // An upstream that answers two seconds after the request arrives.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (arrived_tx, arrived) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        arrived_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nslow");
    });

    let behalf = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_behalf"));
        c.arg("--policies")
            .arg(&policies)
            .arg("--state")
            .arg(&state)
            .args(args);
        c
    };
    let token = behalf(&["token", "mint", "--tenant", "acme", "--user", "alice"])
        .output()
        .unwrap();
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();

    let mut child = behalf(&[
        "serve",
        "--api",
        "127.0.0.1:0",
        "--proxy",
        "127.0.0.1:0",
        "--connect-to",
        &format!("http://slow.test={upstream_addr}"),
    ])
    .env("BEHALF_LOG", "info")
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let proxy = loop {
        let line = lines
            .next()
            .expect("serve exited before its banner")
            .unwrap();
        if let Some(rest) = line.trim().strip_prefix("forward proxy http://") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(&proxy).unwrap();
        write!(
            s,
            "GET http://slow.test/report HTTP/1.1\r\nHost: slow.test\r\n\
             Proxy-Authorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        response
    });
    arrived
        .recv_timeout(Duration::from_secs(10))
        .expect("the request reached the upstream");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let response = client.join().unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("slow"), "{response}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "serve did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(exit.code(), Some(0), "{}", rest.join("\n"));
    assert!(rest.iter().any(|l| l == "behalf: stopped"), "{rest:?}");

    let verify = behalf(&["audit", "verify"]).output().unwrap();
    assert!(verify.status.success(), "{verify:?}");
    let audit: String = std::fs::read_dir(state.join("audit"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    assert!(
        audit.contains("\"path\":\"/report\"") && audit.contains("\"status\":200"),
        "{audit}"
    );
}

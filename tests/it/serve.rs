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

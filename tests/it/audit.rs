//! The audit log (DESIGN.md "Audit log", invariants 3 and 5): the chain across restarts and
//! rotated files, `verify` naming the first broken record after each kind of tampering,
//! failing closed on a full disk and recovering, concurrent writers, no query strings, the
//! flusher, and `behalf audit verify`'s exit codes.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::copy_dir;
use behalf::audit::{
    self, AuditError, AuditLog, Entry, Outcome, Problem, Record, VerifyError, VerifyReport,
};
use behalf::state::StateDir;

fn state() -> (tempfile::TempDir, StateDir) {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::open(&tmp.path().join("state")).unwrap();
    (tmp, state)
}

fn entry(i: usize) -> Entry {
    Entry {
        tenant: Some("acme".into()),
        user: Some("alice".into()),
        client: Some("proxy".into()),
        grant: Some("eng-github".into()),
        credential: Some("user:github_token".into()),
        status: Some(200),
        duration_ms: 3,
        bytes: 100,
        ..Entry::new(
            Outcome::Allow,
            "GET",
            "https://api.github.com",
            format!("/repos/acme/r{i}"),
        )
    }
}

fn audit_dir(state: &StateDir) -> PathBuf {
    state.join(audit::DIR)
}

fn current(state: &StateDir) -> PathBuf {
    audit_dir(state).join(audit::CURRENT)
}

fn verify(state: &StateDir) -> Result<VerifyReport, VerifyError> {
    let key = audit::read_key(state).unwrap();
    audit::verify(&audit_dir(state), &key)
}

/// A log of `n` records after the `start` record (seqs 1..=n+1), in one file.
fn log_with(state: &StateDir, n: usize) {
    let log = AuditLog::open(state, 1 << 20).unwrap();
    for i in 0..n {
        log.record(entry(i)).unwrap();
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

fn records(path: &Path) -> Vec<Record> {
    read_lines(path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The (file name, line, seq, problem) of a broken-chain error, panicking on anything else.
fn broken(err: VerifyError) -> (String, u64, Option<u64>, Problem) {
    let text = err.to_string();
    match err {
        VerifyError::Broken {
            file,
            line,
            seq,
            problem,
            ..
        } => {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                text.starts_with(&format!("{}:{line}: ", file.display())),
                "{text}"
            );
            (name, line, seq, problem)
        }
        other => panic!("expected a broken record, got {other:?}"),
    }
}

// === the chain ===

#[test]
fn the_chain_continues_across_restarts() {
    let (_tmp, state) = state();
    log_with(&state, 3);
    let log = AuditLog::open(&state, 1 << 20).unwrap();
    assert_eq!(log.head_seq(), 5, "start, 3 records, start");
    assert_eq!(log.record(entry(9)).unwrap(), 6);
    drop(log);

    let all = records(&current(&state));
    let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
    assert_eq!(all[0].prev, "");
    for pair in all.windows(2) {
        assert_eq!(pair[1].prev, pair[0].mac);
    }
    let decisions: Vec<&str> = all.iter().map(|r| r.decision.as_str()).collect();
    assert_eq!(
        decisions,
        ["start", "allow", "allow", "allow", "start", "allow"]
    );
    let report = verify(&state).unwrap();
    assert_eq!(
        report,
        VerifyReport {
            files: 1,
            records: 6,
            head_seq: 6
        }
    );
}

#[test]
fn the_chain_continues_across_rotated_files_and_restarts() {
    let (_tmp, state) = state();
    // About two records per file.
    let log = AuditLog::open(&state, 600).unwrap();
    for i in 0..9 {
        log.record(entry(i)).unwrap();
    }
    drop(log);
    let rotated: Vec<String> = fs::read_dir(audit_dir(&state))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != audit::CURRENT && n.ends_with(".jsonl"))
        .collect();
    assert!(rotated.len() >= 3, "{rotated:?}");
    for name in &rotated {
        assert_eq!(name.len(), "00000000000000000001.jsonl".len(), "{name}");
        let first = &records(&audit_dir(&state).join(name))[0];
        assert_eq!(name, &format!("{:020}.jsonl", first.seq));
    }
    let before = verify(&state).unwrap();
    assert_eq!(before.records, 10);
    assert_eq!(before.files, rotated.len() + 1);

    // Rotating after every record leaves current.jsonl empty: a restart continues from the
    // newest rotated file.
    let log = AuditLog::open(&state, 1).unwrap();
    assert_eq!(log.head_seq(), 11);
    log.record(entry(0)).unwrap();
    drop(log);
    assert_eq!(fs::metadata(current(&state)).unwrap().len(), 0);
    let report = verify(&state).unwrap();
    assert_eq!((report.records, report.head_seq), (12, 12));

    // And so does one where current.jsonl is gone (a crash between rename and create).
    fs::remove_file(current(&state)).unwrap();
    let log = AuditLog::open(&state, 1 << 20).unwrap();
    assert_eq!(log.head_seq(), 13);
    drop(log);
    assert_eq!(verify(&state).unwrap().head_seq, 13);
}

// === verify names the first broken record ===

#[test]
fn verify_passes_on_a_real_log() {
    let (_tmp, state) = state();
    log_with(&state, 7);
    let report = verify(&state).unwrap();
    assert_eq!((report.files, report.records, report.head_seq), (1, 8, 8));
}

#[test]
fn one_changed_byte_in_a_middle_record_is_a_bad_mac_there() {
    let (_tmp, state) = state();
    log_with(&state, 7);
    let path = current(&state);
    let mut bytes = fs::read(&path).unwrap();
    let line5 = read_lines(&path)[..4]
        .iter()
        .map(|l| l.len() + 1)
        .sum::<usize>();
    let at = line5 + bytes[line5..].windows(3).position(|w| w == b"/r3").unwrap() + 2;
    bytes[at] = b'4';
    fs::write(&path, &bytes).unwrap();
    let (file, line, seq, problem) = broken(verify(&state).unwrap_err());
    assert_eq!(
        (file.as_str(), line, seq, problem),
        (audit::CURRENT, 5, Some(5), Problem::BadMac)
    );

    // A changed byte that breaks the JSON is named too.
    bytes[at] = b'"';
    fs::write(&path, &bytes).unwrap();
    let (_, line, seq, problem) = broken(verify(&state).unwrap_err());
    assert_eq!((line, seq), (5, None));
    assert!(matches!(problem, Problem::Unparsable(_)), "{problem}");
}

#[test]
fn a_removed_record_is_a_seq_gap_at_the_next_one() {
    let (_tmp, state) = state();
    log_with(&state, 7);
    let path = current(&state);
    let mut lines = read_lines(&path);
    lines.remove(4);
    write_lines(&path, &lines);
    let err = verify(&state).unwrap_err();
    let text = err.to_string();
    let (_, line, seq, problem) = broken(err);
    assert_eq!(
        (line, seq, problem),
        (
            5,
            Some(6),
            Problem::SeqGap {
                expected: 5,
                found: 6
            }
        )
    );
    assert!(
        text.ends_with("current.jsonl:5: seq 6: seq gap: expected seq 5, found 6: record 5 is missing or out of order"),
        "{text}"
    );
}

#[test]
fn a_reordered_record_is_named() {
    let (_tmp, state) = state();
    log_with(&state, 7);
    let path = current(&state);
    let mut lines = read_lines(&path);
    lines.swap(3, 5);
    write_lines(&path, &lines);
    let (_, line, seq, problem) = broken(verify(&state).unwrap_err());
    assert_eq!(
        (line, seq, problem),
        (
            4,
            Some(6),
            Problem::SeqGap {
                expected: 4,
                found: 6
            }
        )
    );
}

#[test]
fn a_record_with_a_renumbered_seq_but_the_wrong_prev_is_a_broken_link() {
    // Records carry their own valid mac, so the only way to splice in a record from another
    // chain with the right seq is a copy from another log with the same key: `prev` catches it.
    let (_tmp, state) = state();
    log_with(&state, 4);
    let other = state.path().parent().unwrap().join("other");
    let other = StateDir::open(&other).unwrap();
    fs::copy(state.join(audit::KEY_FILE), other.join(audit::KEY_FILE)).unwrap();
    let log = AuditLog::open(&other, 1 << 20).unwrap();
    log.record(entry(1)).unwrap();
    log.record(entry(2)).unwrap();
    drop(log);
    let path = current(&state);
    let mut lines = read_lines(&path);
    lines[2] = read_lines(&current(&other))[2].clone();
    write_lines(&path, &lines);
    let (_, line, seq, problem) = broken(verify(&state).unwrap_err());
    assert_eq!((line, seq, problem), (3, Some(3), Problem::BrokenPrev));
}

#[test]
fn a_tail_cut_mid_line_is_a_truncated_tail() {
    let (_tmp, state) = state();
    log_with(&state, 7);
    let path = current(&state);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 20]).unwrap();
    let (_, line, seq, problem) = broken(verify(&state).unwrap_err());
    assert_eq!((line, seq, problem), (8, None, Problem::TruncatedTail));
}

#[test]
fn a_removed_rotated_file_is_named_at_the_next_file() {
    let (_tmp, state) = state();
    let log = AuditLog::open(&state, 600).unwrap();
    for i in 0..9 {
        log.record(entry(i)).unwrap();
    }
    drop(log);
    let mut rotated: Vec<PathBuf> = fs::read_dir(audit_dir(&state))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl") && !p.ends_with(audit::CURRENT))
        .collect();
    rotated.sort();
    assert!(rotated.len() >= 3);
    let removed_first = records(&rotated[1])[0].seq;
    let next_first = records(&rotated[2])[0].seq;
    fs::remove_file(&rotated[1]).unwrap();
    let (file, line, seq, problem) = broken(verify(&state).unwrap_err());
    assert_eq!(
        file,
        rotated[2].file_name().unwrap().to_string_lossy().as_ref()
    );
    assert_eq!(
        (line, seq, problem),
        (
            1,
            Some(next_first),
            Problem::SeqGap {
                expected: removed_first,
                found: next_first
            }
        )
    );

    // Removing the first file is caught too: the chain must start at seq 1.
    fs::remove_file(&rotated[0]).unwrap();
    let (_, line, _, problem) = broken(verify(&state).unwrap_err());
    assert_eq!(line, 1);
    assert!(
        matches!(problem, Problem::SeqGap { expected: 1, .. }),
        "{problem}"
    );
}

#[test]
fn a_wrong_key_fails_at_the_first_record_and_no_log_is_no_verification() {
    let (_tmp, state) = state();
    log_with(&state, 2);
    let (_, line, _, problem) = broken(audit::verify(&audit_dir(&state), &[0u8; 32]).unwrap_err());
    assert_eq!((line, problem), (1, Problem::BadMac));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        audit::verify(empty.path(), &[0u8; 32]),
        Err(VerifyError::Empty { .. })
    ));
    assert!(matches!(
        audit::verify(&empty.path().join("missing"), &[0u8; 32]),
        Err(VerifyError::Empty { .. })
    ));
}

// === failing closed ===

#[test]
fn a_full_disk_fails_closed_and_recovers_when_the_file_is_real_again() {
    let (_tmp, state) = state();
    fs::create_dir(audit_dir(&state)).unwrap();
    symlink("/dev/full", current(&state)).unwrap();

    let log = AuditLog::open(&state, 1 << 20).expect("opens, unhealthy");
    assert!(!log.healthy());
    assert!(matches!(log.gate(), Err(AuditError::Unavailable)));
    assert!(matches!(log.record(entry(1)), Err(AuditError::Unavailable)));
    assert!(matches!(log.gate(), Err(AuditError::Unavailable)));
    assert!(matches!(log.sync(), Err(AuditError::Unavailable)));
    assert_eq!(log.head_seq(), 0);
    let why = log.last_error().unwrap();
    assert!(why.contains("current.jsonl"), "{why}");
    // verify refuses to read a device rather than reading zeros forever.
    assert!(matches!(verify(&state), Err(VerifyError::NotAFile { .. })));

    fs::remove_file(current(&state)).unwrap();
    fs::write(current(&state), b"").unwrap();
    log.gate().expect("the pending start record is written now");
    assert!(log.healthy());
    assert_eq!(log.last_error(), None);
    assert_eq!(log.record(entry(2)).unwrap(), 2);
    log.sync().unwrap();
    let all = records(&current(&state));
    assert_eq!(all[0].decision, "start");
    assert_eq!(all[1].path, "/repos/acme/r2");
    assert_eq!(verify(&state).unwrap().head_seq, 2);
}

// === concurrency, content, durability ===

#[test]
fn concurrent_writers_keep_one_contiguous_chain() {
    let (_tmp, state) = state();
    let log = AuditLog::open(&state, 4096).unwrap();
    let mut seqs: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                scope.spawn(move || {
                    (0..50)
                        .map(|i| log.record(entry(t * 100 + i)).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    seqs.sort_unstable();
    assert_eq!(seqs, (2..=401).collect::<Vec<_>>());
    assert_eq!(log.head_seq(), 401);
    drop(log);
    let report = verify(&state).unwrap();
    assert_eq!((report.records, report.head_seq), (401, 401));
    assert!(report.files > 1, "rotated while writing");
}

#[test]
fn query_strings_and_fragments_are_never_logged() {
    let (_tmp, state) = state();
    let log = AuditLog::open(&state, 1 << 20).unwrap();
    let mut e = entry(0);
    e.path = "/search?q=CANARY-QUERY&api_key=CANARY-KEY#CANARY-FRAG".into();
    log.record(e).unwrap();
    let mut e = entry(0);
    e.origin = "https://api.github.com?CANARY-ORIGIN".into();
    e.path = "?CANARY-ONLY".into();
    log.record(e).unwrap();
    drop(log);
    let text = fs::read_to_string(current(&state)).unwrap();
    assert!(!text.contains("CANARY") && !text.contains('?'), "{text}");
    let all = records(&current(&state));
    assert_eq!(all[1].path, "/search");
    assert_eq!(
        (all[2].origin.as_str(), all[2].path.as_str()),
        ("https://api.github.com", "")
    );
    verify(&state).unwrap();
}

#[test]
fn the_flusher_fsyncs_without_being_asked() {
    let (_tmp, state) = state();
    let log = AuditLog::open(&state, 1 << 20).unwrap();
    assert_eq!(log.synced_seq(), 1, "the start record is fsynced by open");
    let seq = log.record(entry(0)).unwrap();
    // The flusher promises 100 ms; allow a slow CI machine far more before calling it broken.
    let deadline = Instant::now() + Duration::from_secs(5);
    while log.synced_seq() < seq {
        assert!(
            Instant::now() < deadline,
            "the flusher never fsynced seq {seq}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Nothing unsynced: the counter stays put.
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(log.synced_seq(), seq);
}

// === behalf audit verify ===

/// Runs `behalf --policies P --state S audit verify`: (exit code, stdout, stderr).
fn cli_verify(policies: &Path, state: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_behalf"))
        .arg("--policies")
        .arg(policies)
        .arg("--state")
        .arg(state)
        .args(["audit", "verify"])
        .env_remove("BEHALF_LOG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn cli_audit_verify_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        &policies,
    );
    let state_path = tmp.path().join("state");

    // No audit key yet: a state problem.
    let (code, _, err) = cli_verify(&policies, &state_path);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("audit.key"), "{err}");
    assert!(
        !state_path.join(audit::KEY_FILE).exists(),
        "verify never makes a key"
    );

    let state = StateDir::open(&state_path).unwrap();
    log_with(&state, 3);
    let (code, out, err) = cli_verify(&policies, &state_path);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out.trim(),
        "audit log verified: 4 records in 1 files, head seq 4"
    );

    let path = current(&state);
    let mut lines = read_lines(&path);
    lines[2] = lines[2].replace("/repos/acme/r1", "/repos/acme/r9");
    write_lines(&path, &lines);
    let (code, out, err) = cli_verify(&policies, &state_path);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains(&format!("{}:3: seq 3: bad mac", path.display())),
        "{out}"
    );

    // A broken policies dir is a configuration error.
    fs::write(policies.join("behalf.toml"), "nonsense = [").unwrap();
    let (code, _, err) = cli_verify(&policies, &state_path);
    assert_eq!(code, Some(64), "{err}");
}

//! The `chatr` binary end to end, as the NAT lab and a new user drive it:
//! init, register, whoami, contacts, pipe, send/receive, chat/listen, and the
//! errors people can act on — against an in-process server on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// One copy of the in-process test server, shared with the library's own tests.
#[path = "../../client/tests/session_support/mod.rs"]
mod session_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use session_support::{TestServer, WAIT};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_chatr");

fn chatr(home: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--home")
        .arg(home)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    cmd
}

/// Runs a command to completion; returns (exit code, stdout, stderr).
async fn run(mut cmd: Command) -> (i32, String, String) {
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .unwrap()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A client home set up with init + register; returns its "<uuid> <key>".
async fn setup_home(server: &TestServer, root: &Path, name: &str) -> (PathBuf, String, String) {
    let home = root.join(name);
    let cert = root.join("server-cert.pem");
    std::fs::write(&cert, server.handle.cert_pem()).unwrap();
    let addr = server.handle.connect_addr();
    let mut init = chatr(&home);
    init.args(["init", "--server", &addr.to_string(), "--api"])
        .arg(format!("https://{}", server.handle.api_addr()))
        .arg("--server-cert")
        .arg(&cert)
        .args(["--alias", name]);
    let (code, out, err) = run(init).await;
    assert_eq!(code, 0, "init: {out}{err}");
    assert!(out.contains("uuid:"), "{out}");
    let mut reg = chatr(&home);
    reg.arg("register");
    let (code, out, err) = run(reg).await;
    assert_eq!(code, 0, "register: {out}{err}");
    assert!(out.contains("registered"), "{out}");
    let mut who = chatr(&home);
    who.arg("whoami");
    let (code, out, _) = run(who).await;
    assert_eq!(code, 0);
    let mut parts = out.split_whitespace();
    let uuid = parts.next().unwrap().to_string();
    let key = parts.next().unwrap().to_string();
    assert!(
        parts.next().is_none(),
        "whoami prints one line of two fields: {out}"
    );
    assert!(out.contains(&uuid) && uuid::Uuid::parse_str(&uuid).is_ok());
    (home, uuid, key)
}

async fn add_contact(home: &Path, uuid: &str, alias: &str) {
    let mut cmd = chatr(home);
    cmd.args(["contacts", "add", uuid, alias]);
    let (code, out, err) = run(cmd).await;
    assert_eq!(code, 0, "contacts add: {out}{err}");
}

/// Collects a child's output in the background, so tests can wait for a line.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<String>>);

impl Output {
    fn follow(reader: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Self {
        let out = Output::default();
        let sink = out.0.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        out
    }

    async fn wait_for(&self, needle: &str) {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if self.0.lock().unwrap().contains(needle) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(found.is_ok(), "never saw {needle:?}; got:\n{}", self.text());
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

struct Running {
    child: Child,
    stdout: Output,
    stderr: Output,
}

fn spawn(mut cmd: Command) -> Running {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stdout = Output::follow(child.stdout.take().unwrap());
    let stderr = Output::follow(child.stderr.take().unwrap());
    Running {
        child,
        stdout,
        stderr,
    }
}

async fn wait_exit(child: &mut Child) -> i32 {
    match tokio::time::timeout(WAIT, child.wait()).await {
        Ok(status) => status.unwrap().code().unwrap_or(-1),
        Err(_) => {
            let _ = child.kill().await;
            -2
        }
    }
}

fn read_report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_contacts_pipe_and_files() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server"), None).await;
    let (alice, alice_uuid, alice_key) = setup_home(&server, root.path(), "alice").await;
    let (bob, bob_uuid, bob_key) = setup_home(&server, root.path(), "bob").await;

    // Contacts: keys come from the registry and match `whoami`.
    add_contact(&alice, &bob_uuid, "bob").await;
    add_contact(&bob, &alice_uuid, "alice").await;
    let mut list = chatr(&alice);
    list.args(["contacts", "list"]);
    let (code, out, _) = run(list).await;
    assert_eq!(code, 0);
    // Online state last: bob is not logged in.
    assert_eq!(out.trim(), format!("bob\t{bob_uuid}\t{bob_key}\toffline"));
    let mut dup = chatr(&bob);
    dup.args(["contacts", "add", &alice_uuid, "again", "--key", &alice_key]);
    let (code, _, err) = run(dup).await;
    assert_ne!(code, 0);
    assert!(err.contains("already a contact"), "{err}");

    // pipe: bob listens for alice, alice pipes 1 MiB to bob, bob answers a line.
    let data = {
        let mut x: u32 = 12345;
        (0..1024 * 1024)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect::<Vec<u8>>()
    };
    let bob_report = root.path().join("bob-report.json");
    let alice_report = root.path().join("alice-report.json");
    let mut listen = chatr(&bob);
    listen.arg("--report").arg(&bob_report).args([
        "pipe",
        "--listen",
        "--from",
        "alice",
        "--wait-direct",
        "10",
    ]);
    listen
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut bob_child = listen.spawn().unwrap();
    let bob_err = Output::follow(bob_child.stderr.take().unwrap());
    let mut bob_stdout = bob_child.stdout.take().unwrap();
    let bob_out = tokio::spawn(async move {
        let mut buf = Vec::new();
        bob_stdout.read_to_end(&mut buf).await.unwrap();
        buf
    });
    let mut bob_in = bob_child.stdin.take().unwrap();
    bob_in.write_all(b"pong\n").await.unwrap();
    drop(bob_in);
    bob_err.wait_for("waiting for a link").await;

    let mut pipe = chatr(&alice);
    pipe.arg("--report")
        .arg(&alice_report)
        .args(["pipe", "bob", "--wait-direct", "10"]);
    pipe.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut alice_child = pipe.spawn().unwrap();
    let mut alice_in = alice_child.stdin.take().unwrap();
    let payload = data.clone();
    tokio::spawn(async move {
        alice_in.write_all(&payload).await.unwrap();
    });
    let alice_out = tokio::time::timeout(WAIT, alice_child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        alice_out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&alice_out.stderr)
    );
    assert_eq!(alice_out.stdout, b"pong\n");
    assert_eq!(wait_exit(&mut bob_child).await, 0, "{}", bob_err.text());
    let received = bob_out.await.unwrap();
    assert_eq!(received.len(), data.len());
    assert!(received == data, "bob's output differs from alice's input");

    for (path, peer) in [(&alice_report, &bob_uuid), (&bob_report, &alice_uuid)] {
        let r = read_report(path);
        assert_eq!(r["peer"], peer.as_str());
        // On loopback the handshake may win over the relay copy (PROTOCOL.md §15 set-up);
        // either way the link must settle on the direct path, and the pipe ran on it.
        let final_path = r["transfer"]["path_class"].as_str().unwrap_or_default();
        assert!(
            ["direct-lan", "direct-public"].contains(&final_path),
            "the pipe must end on a direct path: {r}"
        );
        match r["result"].as_str() {
            Some("direct") => {
                assert!(
                    ["lan", "public"].contains(&r["path"].as_str().unwrap()),
                    "{r}"
                );
                assert!(r["candidate"].is_string() && r["remote"].is_string(), "{r}");
                assert!(r["punch_ms"].is_u64() && r["probes_sent"].is_u64(), "{r}");
            }
            Some("relayed") => assert!(r["transfer"]["switches"].as_u64() >= Some(1), "{r}"),
            _ => panic!("the link must come up: {r}"),
        }
    }

    // send / receive.
    let inbox = root.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let file = root.path().join("notes.txt");
    std::fs::write(&file, b"meeting at noon\n").unwrap();
    let mut recv = chatr(&bob);
    recv.args(["receive", "--from", "alice", "--dir"])
        .arg(&inbox);
    let mut receiver = spawn(recv);
    receiver.stderr.wait_for("waiting for a link").await;
    let mut send = chatr(&alice);
    send.args(["send", "bob"]).arg(&file);
    let (code, out, err) = run(send).await;
    assert_eq!(code, 0, "send: {out}{err}");
    assert!(out.contains("sent notes.txt (16 bytes"), "{out}");
    assert_eq!(
        wait_exit(&mut receiver.child).await,
        0,
        "{}",
        receiver.stderr.text()
    );
    assert!(
        receiver.stdout.text().contains("received"),
        "{}",
        receiver.stdout.text()
    );
    assert_eq!(
        std::fs::read(inbox.join("notes.txt")).unwrap(),
        b"meeting at noon\n"
    );

    // A receiver's size limit refuses the file at its header; both sides say so.
    let mut bad = chatr(&bob);
    bad.args(["receive", "--max-size", "ten"]);
    let (code, _, err) = run(bad).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("e.g. 500M"), "{err}");
    let mut recv = chatr(&bob);
    recv.args(["receive", "--from", "alice", "--max-size", "8", "--dir"])
        .arg(&inbox);
    let mut receiver = spawn(recv);
    receiver.stderr.wait_for("waiting for a link").await;
    let mut send = chatr(&alice);
    send.args(["send", "bob"]).arg(&file);
    let (code, out, err) = run(send).await;
    assert_eq!(code, 9, "send: {out}{err}");
    assert!(err.contains("--max-size"), "{err}");
    assert_eq!(
        wait_exit(&mut receiver.child).await,
        9,
        "{}",
        receiver.stderr.text()
    );
    assert!(
        receiver
            .stderr
            .text()
            .contains("more than the receiver accepts"),
        "{}",
        receiver.stderr.text()
    );
    let mut stored: Vec<_> = std::fs::read_dir(&inbox)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    stored.sort();
    assert_eq!(stored, vec![std::ffi::OsString::from("notes.txt")]);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_with_a_listener_and_actionable_errors() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server"), None).await;
    let (alice, alice_uuid, _) = setup_home(&server, root.path(), "alice").await;
    let (bob, bob_uuid, _) = setup_home(&server, root.path(), "bob").await;
    let (carol, carol_uuid, _) = setup_home(&server, root.path(), "carol").await;
    add_contact(&alice, &bob_uuid, "bob").await;
    add_contact(&bob, &alice_uuid, "alice").await;
    add_contact(&alice, &carol_uuid, "carol").await;
    add_contact(&carol, &bob_uuid, "bob").await;

    // Bob listens (contacts only).
    let mut listen = chatr(&bob);
    listen.arg("listen");
    let mut bob_l = spawn(listen);
    bob_l.stderr.wait_for("waiting for link requests").await;

    let mut chat = chatr(&alice);
    chat.args(["chat", "bob"]);
    let mut alice_c = spawn(chat);
    alice_c.stdout.wait_for("chatting with bob").await;
    let alice_in = alice_c.child.stdin.as_mut().unwrap();
    alice_in.write_all(b"hello bob\n").await.unwrap();
    bob_l.stdout.wait_for("alice: hello bob").await;
    let bob_in = bob_l.child.stdin.as_mut().unwrap();
    bob_in.write_all(b"hi alice\n").await.unwrap();
    alice_c.stdout.wait_for("bob: hi alice").await;
    let alice_in = alice_c.child.stdin.as_mut().unwrap();
    alice_in.write_all(b"/away lunch\n/quit\n").await.unwrap();
    assert_eq!(
        wait_exit(&mut alice_c.child).await,
        0,
        "{}",
        alice_c.stderr.text()
    );
    bob_l.stdout.wait_for("alice is away: lunch").await;
    bob_l.stdout.wait_for("alice left").await;

    // Carol is not bob's contact: denied (exit 4), with a report saying so.
    let report = root.path().join("carol.json");
    let mut denied = chatr(&carol);
    denied.arg("--report").arg(&report).args(["chat", "bob"]);
    let (code, _, err) = run(denied).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("denied the link request"), "{err}");
    let r = read_report(&report);
    assert_eq!(r["result"], "failed");
    assert_eq!(r["peer"], bob_uuid.as_str());
    bob_l.stderr.wait_for("denied a link request").await;

    // Stop the listener politely (Ctrl-C).
    let pid = bob_l.child.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        wait_exit(&mut bob_l.child).await,
        0,
        "{}",
        bob_l.stderr.text()
    );

    // Carol (a contact of alice) is registered but offline: exit 4 too.
    let mut offline = chatr(&alice);
    offline.args(["pipe", "carol"]);
    let (code, _, err) = run(offline).await;
    assert_eq!(code, 4, "{err}");
    // Unknown alias: an actionable message.
    let mut unknown = chatr(&alice);
    unknown.args(["chat", "nobody"]);
    let (code, _, err) = run(unknown).await;
    assert_eq!(code, 1);
    assert!(err.contains("contacts list"), "{err}");

    // A home without init says what to do.
    let mut fresh = chatr(&root.path().join("fresh"));
    fresh.arg("whoami");
    let (code, _, err) = run(fresh).await;
    assert_ne!(code, 0);
    assert!(err.contains("chatr init"), "{err}");

    // A wrong pinned certificate: exit 7 with a clear message.
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestServer::start(other_dir.path(), None).await;
    std::fs::write(carol.join("server-cert.pem"), other.handle.cert_pem()).unwrap();
    let mut status = chatr(&carol);
    status.arg("status");
    let (code, _, err) = run(status).await;
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("certificate is not trusted"), "{err}");
    other.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_endpoints() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server"), None).await;
    let (alice, alice_uuid, _) = setup_home(&server, root.path(), "alice").await;
    let mut status = chatr(&alice);
    status.arg("status");
    let (code, out, err) = run(status).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&alice_uuid), "{out}");
    assert!(out.contains("registered with this key"), "{out}");
    assert!(out.contains("reachable; logged in"), "{out}");
    assert!(out.contains("(STUN)"), "{out}");
    assert!(
        out.contains("the server's answer to our binding message"),
        "{out}"
    );
    // Our TCP endpoint as the server sees it: on loopback, our own TCP port,
    // which is the UDP port (same-port rule).
    let local_port = out
        .lines()
        .find_map(|l| l.strip_prefix("local:       TCP "))
        .and_then(|rest| rest.split(',').next())
        .expect("a local TCP line");
    assert!(
        out.contains(&format!(
            "public TCP:  {local_port} (the server's view of our TCP connection)"
        )),
        "{out}"
    );
    // On loopback there is no NAT.
    assert!(out.contains("NAT:         none"), "{out}");
    server.stop().await;
}

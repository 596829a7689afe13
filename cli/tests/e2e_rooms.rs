//! The README walkthrough with the real `chatr` binary on loopback: four new users
//! init, add each other, see who is online (and `--no-presence` withholding it), then
//! alice opens a room with three friends; every message reaches every other member
//! exactly once, a member who leaves is told to the others, and one who is killed is
//! noticed within the keep-alive.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../client/tests/session_support/mod.rs"]
mod session_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use session_support::{TestServer, WAIT};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};

const BIN: &str = env!("CARGO_BIN_EXE_chatr");

fn chatr(home: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--home")
        .arg(home)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    cmd
}

async fn run(home: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = chatr(home);
    cmd.args(args);
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

async fn ok(home: &Path, args: &[&str]) -> String {
    let (code, out, err) = run(home, args).await;
    assert_eq!(code, 0, "chatr {}: {out}{err}", args.join(" "));
    out
}

/// init + register; returns the home and the UUID.
async fn user(server: &TestServer, root: &Path, name: &str) -> (PathBuf, String) {
    let home = root.join(name);
    let cert = root.join("server-cert.pem");
    std::fs::write(&cert, server.handle.cert_pem()).unwrap();
    let addr = server.handle.connect_addr().to_string();
    let api = format!("https://{}", server.handle.api_addr());
    let cert = cert.to_string_lossy().into_owned();
    ok(
        &home,
        &[
            "init",
            "--server",
            &addr,
            "--api",
            &api,
            "--server-cert",
            &cert,
            "--alias",
            name,
        ],
    )
    .await;
    ok(&home, &["register"]).await;
    let whoami = ok(&home, &["whoami"]).await;
    let uuid = whoami.split_whitespace().next().unwrap().to_owned();
    (home, uuid)
}

/// A child's output, collected in the background.
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

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    fn count(&self, line: &str) -> usize {
        self.text().lines().filter(|l| *l == line).count()
    }

    async fn wait_for(&self, what: &str, limit: Duration, found: impl Fn(&str) -> bool) {
        let seen = tokio::time::timeout(limit, async {
            while !found(&self.text()) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(seen.is_ok(), "never saw {what}; got:\n{}", self.text());
    }

    async fn wait_line(&self, line: &str) {
        self.wait_for(line, WAIT, |t| t.lines().any(|l| l == line))
            .await;
    }
}

struct Running {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    stdout: Output,
    stderr: Output,
}

impl Running {
    fn start(name: &'static str, home: &Path, args: &[&str]) -> Running {
        let mut cmd = chatr(home);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = Output::follow(child.stdout.take().unwrap());
        let stderr = Output::follow(child.stderr.take().unwrap());
        Running {
            name,
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    async fn say(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    async fn exit_code(&mut self) -> i32 {
        match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(status) => status.unwrap().code().unwrap_or(-1),
            Err(_) => panic!(
                "{} did not exit; stderr:\n{}",
                self.name,
                self.stderr.text()
            ),
        }
    }
}

/// The state `contacts list` prints for `alias` (the fourth column).
fn listed_state(list: &str, alias: &str) -> String {
    list.lines()
        .find(|l| l.split('\t').next() == Some(alias))
        .and_then(|l| l.split('\t').nth(3))
        .unwrap_or_else(|| panic!("{alias} missing from contacts list:\n{list}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_friends_see_each_other_online_and_chat_in_a_room() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server"), None).await;
    let names = ["alice", "bob", "carol", "dave"];
    let mut users = Vec::new();
    for name in names {
        users.push(user(&server, root.path(), name).await);
    }
    // Everyone adds everyone; dave withholds his presence from alice.
    for (i, (home, _)) in users.iter().enumerate() {
        for (j, (_, uuid)) in users.iter().enumerate() {
            if i == j {
                continue;
            }
            let mut args = vec!["contacts", "add", uuid, names[j]];
            if names[i] == "dave" && names[j] == "alice" {
                args.push("--no-presence");
            }
            let out = ok(home, &args).await;
            assert_eq!(
                out.contains("presence not shared"),
                names[i] == "dave" && names[j] == "alice",
                "{out}"
            );
        }
    }
    let [alice, bob, carol, dave] = [0, 1, 2, 3].map(|i| users[i].0.clone());

    // ----- presence -----
    let mut bob_listen = Running::start("bob", &bob, &["listen"]);
    let mut dave_listen = Running::start("dave", &dave, &["listen"]);
    for l in [&bob_listen, &dave_listen] {
        l.stderr
            .wait_for("online as", WAIT, |t| t.contains("online as"))
            .await;
    }
    // Presence is sent after login: give the server its round trip.
    let list = {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let list = ok(&alice, &["contacts", "list"]).await;
            if listed_state(&list, "bob").starts_with("online")
                || tokio::time::Instant::now() > deadline
            {
                break list;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert_eq!(listed_state(&list, "bob"), "online (available)", "{list}");
    assert_eq!(listed_state(&list, "carol"), "offline", "{list}");
    // Dave is online, but not for alice: he did not consent.
    assert_eq!(listed_state(&list, "dave"), "offline", "{list}");
    // Alice comes online for a while (`listen`), then her process dies: bob sees both.
    // (A `contacts list` is online for milliseconds only: a listener's view may never
    // show it, as the view is a state, not a log.)
    let mut alice_listen = Running::start("alice", &alice, &["listen"]);
    bob_listen
        .stdout
        .wait_line("* alice is online, available")
        .await;
    alice_listen.child.kill().await.unwrap();
    bob_listen.stdout.wait_line("* alice went offline").await;
    // Dave's listen never hears of alice, though he has her as a contact.
    let dave_list = ok(&dave, &["contacts", "list", "--offline"]).await;
    assert_eq!(dave_list.lines().count(), 3, "{dave_list}");
    assert!(
        !dave_listen.stdout.text().contains("alice"),
        "{}",
        dave_listen.stdout.text()
    );
    // And carol's listen does show bob, who is mutual with her.
    let carol_list = ok(&carol, &["contacts", "list"]).await;
    assert_eq!(
        listed_state(&carol_list, "bob"),
        "online (available)",
        "{carol_list}"
    );
    assert_eq!(
        listed_state(&carol_list, "dave"),
        "online (available)",
        "{carol_list}"
    );
    for l in [&mut bob_listen, &mut dave_listen] {
        l.child.kill().await.unwrap();
    }

    // ----- a room with three friends -----
    let out = ok(&alice, &["room", "create", "friends"]).await;
    assert!(out.contains("created room friends"), "{out}");
    for friend in ["bob", "carol", "dave"] {
        let out = ok(&alice, &["room", "invite", "friends", friend]).await;
        assert!(
            out.contains(&format!("invited {friend} to friends")),
            "{out}"
        );
    }
    let join = ["room", "join", "friends", "--keepalive", "2"];
    let mut members = vec![Running::start("alice", &alice, &join)];
    for (name, home) in [("bob", &bob), ("carol", &carol), ("dave", &dave)] {
        members.push(Running::start(name, home, &join));
    }
    for m in &members[1..] {
        m.stderr
            .wait_for("the invitation wait", WAIT, |t| {
                t.contains("waiting for a member to bring its invitation")
            })
            .await;
        m.stdout
            .wait_for("the invitation", WAIT, |t| {
                t.contains("* you are now in room friends (invited; delivered by ")
            })
            .await;
    }
    // Everyone sees everyone else here before talking.
    for (i, m) in members.iter().enumerate() {
        for (j, other) in names.iter().enumerate() {
            if i != j {
                m.stdout
                    .wait_line(&format!("[friends] * {other} is here"))
                    .await;
            }
        }
    }
    for (i, line) in ["hello all", "second", "third"].iter().enumerate() {
        members[0].say(line).await;
        members[1 + i % 3].say(&format!("reply {i}")).await;
    }
    for (i, m) in members.iter().enumerate() {
        for (j, sender) in names.iter().enumerate() {
            let said: Vec<String> = if j == 0 {
                ["hello all", "second", "third"]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect()
            } else {
                vec![format!("reply {}", j - 1)]
            };
            for text in &said {
                let line = format!("[friends] {sender}: {text}");
                if i == j {
                    assert_eq!(m.stdout.count(&line), 0, "own messages are not echoed");
                    continue;
                }
                m.stdout.wait_line(&line).await;
            }
        }
    }
    // Exactly once, in alice's order, after everything settled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for m in &members[1..] {
        let text = m.stdout.text();
        let from_alice: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("[friends] alice: "))
            .collect();
        assert_eq!(
            from_alice,
            [
                "[friends] alice: hello all",
                "[friends] alice: second",
                "[friends] alice: third"
            ],
            "{}: {text}",
            m.name
        );
    }

    // Bob leaves: the others are told; his command ends.
    members[1].say("/leave").await;
    assert_eq!(
        members[1].exit_code().await,
        0,
        "{}",
        members[1].stderr.text()
    );
    for i in [0, 2, 3] {
        members[i]
            .stdout
            .wait_line("[friends] * bob left the room")
            .await;
    }
    // Dave is killed: alice and carol notice within the keep-alive (2 s; the wait
    // allows for the time-out of a few keep-alives on a busy machine).
    members[3].child.kill().await.unwrap();
    for i in [0, 2] {
        members[i]
            .stdout
            .wait_for("dave noticed gone", Duration::from_secs(10), |t| {
                t.contains("[friends] * lost dave") || t.contains("[friends] * dave went offline")
            })
            .await;
    }
    // Who is left: alice and carol here; bob is no member any more.
    let who = ok(&carol, &["room", "list"]).await;
    assert!(
        who.contains("friends\t") && who.contains("3 members"),
        "{who}"
    );
    members[0].say("still here?").await;
    members[2]
        .stdout
        .wait_line("[friends] alice: still here?")
        .await;
    members[0].say("/quit").await;
    members[2].say("/quit").await;
    assert_eq!(members[0].exit_code().await, 0);
    assert_eq!(members[2].exit_code().await, 0);
}

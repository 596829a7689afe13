//! `chatr tui` in a real terminal: tmux runs it, `send-keys` types, `capture-pane`
//! reads the screen. Bob (the plain CLI) is online and in a room with alice; alice's
//! TUI shows him online, accepts the room's invitation, sends to the room and shows
//! his answer, shows the link path, opens the help, and quits on Ctrl-C.
//!
//! Needs tmux (`tests/run-all.sh` installs it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../client/tests/session_support/mod.rs"]
mod session_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use session_support::{TestServer, WAIT};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_chatr");

async fn ok(home: &Path, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        WAIT,
        Command::new(BIN)
            .arg("--home")
            .arg(home)
            .args(args)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "chatr {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn user(server: &TestServer, root: &Path, name: &str) -> (PathBuf, String) {
    let home = root.join(name);
    let cert = root.join("server-cert.pem");
    std::fs::write(&cert, server.handle.cert_pem()).unwrap();
    let addr = server.handle.connect_addr().to_string();
    let api = format!("https://{}", server.handle.api_addr());
    let cert = cert.to_string_lossy().into_owned();
    let init = [
        "init",
        "--server",
        &addr,
        "--api",
        &api,
        "--server-cert",
        &cert,
        "--alias",
        name,
    ];
    ok(&home, &init).await;
    ok(&home, &["register"]).await;
    let whoami = ok(&home, &["whoami"]).await;
    (home, whoami.split_whitespace().next().unwrap().to_owned())
}

/// One tmux server of our own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self
            .cmd()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running tmux (install it: apt-get install tmux): {e}"));
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "tui"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "tui"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Types `text` literally, then Enter.
    fn type_line(&self, text: &str) {
        self.run(&["send-keys", "-t", "tui", "-l", text]);
        self.keys(&["Enter"]);
    }

    async fn wait_screen(&self, what: &str, found: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let s = self.screen();
            if found(&s) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the TUI never showed {what}; screen:\n{s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn alive(&self) -> bool {
        self.cmd()
            .args(["has-session", "-t", "tui"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tui_in_tmux_shows_presence_rooms_paths_and_help() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server"), None).await;
    let (alice, alice_id) = user(&server, root.path(), "alice").await;
    let (bob, bob_id) = user(&server, root.path(), "bob").await;
    ok(&alice, &["contacts", "add", &bob_id, "bob"]).await;
    ok(&bob, &["contacts", "add", &alice_id, "alice"]).await;
    ok(&bob, &["room", "create", "friends"]).await;
    ok(&bob, &["room", "invite", "friends", "alice"]).await;

    // Bob is in the room with the plain CLI.
    let mut bob_join = Command::new(BIN)
        .arg("--home")
        .arg(&bob)
        .args(["room", "join", "friends", "--keepalive", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut bob_in = bob_join.stdin.take().unwrap();
    let bob_out = Arc::new(Mutex::new(String::new()));
    let sink = bob_out.clone();
    let mut lines = tokio::io::BufReader::new(bob_join.stdout.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            let mut s = sink.lock().unwrap();
            s.push_str(&l);
            s.push('\n');
        }
    });

    let tmux = Tmux {
        socket: format!("chatr-tui-test-{}", std::process::id()),
    };
    let command = format!(
        "RUST_LOG=off {} --home {} tui --status-message 'at my desk'",
        BIN,
        alice.display()
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "tui",
        "-x",
        "120",
        "-y",
        "30",
        &command,
    ]);

    // Bob online with his presence; the room arrives by invitation.
    tmux.wait_screen("bob online", |s| s.contains("● bob — available"))
        .await;
    tmux.wait_screen("the room", |s| s.contains("# friends (1/1 here)"))
        .await;
    // Bob's side sees alice come into the room.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !bob_out
        .lock()
        .unwrap()
        .contains("[friends] * alice is here")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob never saw alice: {}",
            bob_out.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The link with bob (the room's) and its path, with bob selected.
    let s = tmux
        .wait_screen("the link path", |s| {
            s.contains("link: direct") || s.contains("link: relayed")
        })
        .await;
    assert!(s.contains("chat with bob") && s.contains(" online "), "{s}");

    // Down to the room; a line goes to every member.
    tmux.keys(&["Down"]);
    tmux.wait_screen("the room's history", |s| s.contains("room friends"))
        .await;
    tmux.type_line("hello from the tui");
    tmux.wait_screen("our line", |s| s.contains("you: hello from the tui"))
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !bob_out
        .lock()
        .unwrap()
        .contains("[friends] alice: hello from the tui")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob never got the room message: {}",
            bob_out.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bob_in.write_all(b"hi tui\n").await.unwrap();
    bob_in.flush().await.unwrap();
    let s = tmux
        .wait_screen("bob's answer", |s| s.contains("bob: hi tui"))
        .await;
    assert_eq!(s.matches("bob: hi tui").count(), 1, "delivered once:\n{s}");
    assert!(s.contains("1 of 1 members here"), "{s}");

    // Help opens with F1 and any key closes it.
    tmux.keys(&["F1"]);
    let s = tmux.wait_screen("the help", |s| s.contains(" keys ")).await;
    assert!(s.contains("/invite CONTACT") && s.contains("Ctrl-C"), "{s}");
    tmux.keys(&["x"]);
    tmux.wait_screen("the help closed", |s| !s.contains(" keys "))
        .await;
    let s = tmux.screen();
    assert!(!s.contains("> x"), "the closing key is not typed: {s}");

    // Bob leaves the room: the TUI says so.
    bob_in.write_all(b"/leave\n").await.unwrap();
    bob_in.flush().await.unwrap();
    tmux.wait_screen("bob's leave", |s| s.contains("* bob left the room"))
        .await;

    // Ctrl-C quits and gives the terminal back.
    tmux.keys(&["C-c"]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while tmux.alive() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the TUI did not quit on Ctrl-C:\n{}",
            tmux.screen()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = bob_join.wait().await;
}

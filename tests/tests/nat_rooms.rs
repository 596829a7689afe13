//! A room of five in the NAT lab, with the real binaries: members behind a full-cone,
//! an address-restricted, a port-restricted, a symmetric and a carrier-grade NAT form a
//! mesh (direct where the punch works, relayed where it does not), every member gets
//! every other member's messages exactly once, one member leaves (the others are told)
//! and one is killed (the others notice within the keep-alive).
//!
//! Needs root and the `chatr`/`chatr-server` binaries (see `nat_matrix.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, ChildStdin};
use std::time::{Duration, Instant};

use chatr_tests::lab::cli_runner::ChatrRunner;
use chatr_tests::lab::lab_server::LabServer;
use chatr_tests::lab::matrix::Binaries;
use chatr_tests::lab::{self, Host, Lab, LinkCondition, NatProfile};

/// Forming the mesh across NATs (punches, relays, redial back-off) on a busy machine.
const MESH_LIMIT: Duration = Duration::from_secs(90);
const LINE_LIMIT: Duration = Duration::from_secs(30);
/// Keep-alive of every member, in seconds.
const KEEPALIVE: &str = "3";

fn binaries() -> Binaries {
    Binaries::for_tests().unwrap_or_else(|e| panic!("{e}"))
}

struct Member {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Member {
    fn text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn wait(&self, what: &str, limit: Duration, found: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + limit;
        while !found(&self.text()) {
            assert!(
                Instant::now() < deadline,
                "{} never saw {what}; stdout:\n{}\nstderr:\n{}",
                self.name,
                self.text(),
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_line(&self, line: &str, limit: Duration) {
        self.wait(line, limit, |t| t.lines().any(|l| l == line));
    }

    fn count(&self, line: &str) -> usize {
        self.text().lines().filter(|l| *l == line).count()
    }
}

fn stop(members: &mut [Member]) {
    for m in members {
        let _ = m.child.kill();
        let _ = m.child.wait();
    }
}

#[test]
fn five_members_behind_mixed_nats_chat_in_a_room() {
    let _serial = lab::exclusive();
    let binaries = binaries();
    let mut lab = Lab::new().unwrap();
    let server_host = lab.add_public_host("srv").unwrap();
    let names = ["alice", "bob", "carol", "dave", "erin"];
    let profiles = [
        NatProfile::FullCone,
        NatProfile::AddressRestricted,
        NatProfile::PortRestricted,
        NatProfile::Symmetric,
        NatProfile::Cgnat,
    ];
    let mut hosts: Vec<Host> = Vec::new();
    for (i, profile) in profiles.iter().enumerate() {
        let mut site = lab
            .add_site(&format!("r{i}"), *profile, LinkCondition::delay_ms(5))
            .unwrap();
        hosts.push(lab.add_host(&mut site, "h").unwrap());
    }
    let work = tempfile::tempdir().unwrap();
    let server = LabServer::start(&binaries, &server_host, &work.path().join("server")).unwrap();
    let runner = ChatrRunner {
        chatr: binaries.chatr.clone(),
        server: &server,
        dir: work.path().join("users"),
    };
    std::fs::create_dir_all(&runner.dir).unwrap();
    let uuids: Vec<String> = names
        .iter()
        .zip(&hosts)
        .map(|(name, host)| runner.enrol(host, name).unwrap())
        .collect();
    for (i, (name, host)) in names.iter().zip(&hosts).enumerate() {
        for (j, other) in names.iter().enumerate() {
            if i != j {
                runner
                    .step(
                        host,
                        name,
                        &format!("add-{other}"),
                        &["contacts", "add", &uuids[j], other],
                    )
                    .unwrap();
            }
        }
    }
    runner
        .step(&hosts[0], "alice", "create", &["room", "create", "friends"])
        .unwrap();
    for friend in &names[1..] {
        runner
            .step(
                &hosts[0],
                "alice",
                &format!("invite-{friend}"),
                &["room", "invite", "friends", friend],
            )
            .unwrap();
    }

    let mut members: Vec<Member> = Vec::new();
    for (name, host) in names.iter().zip(&hosts) {
        let (mut child, files) = runner
            .spawn(
                host,
                name,
                "join",
                &["room", "join", "friends", "--keepalive", KEEPALIVE],
            )
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        members.push(Member {
            name,
            child,
            stdin,
            stdout: files.stdout,
            stderr: files.stderr,
        });
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_room(&mut members, &names);
    }));
    stop(&mut members);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn run_room(members: &mut [Member], names: &[&str]) {
    let started = Instant::now();
    for m in &members[1..] {
        m.wait("the invitation", MESH_LIMIT, |t| {
            t.contains("* you are now in room friends (invited; delivered by ")
        });
    }
    // The full mesh: every member has a session with every other.
    for (i, m) in members.iter().enumerate() {
        for (j, other) in names.iter().enumerate() {
            if i != j {
                m.wait_line(&format!("[friends] * {other} is here"), MESH_LIMIT);
            }
        }
    }
    eprintln!(
        "room of five: mesh formed {:?} after the joins",
        started.elapsed()
    );

    for (i, name) in names.iter().enumerate() {
        members[i].say(&format!("hello from {name}"));
        members[i].say(&format!("second from {name}"));
    }
    for (i, m) in members.iter().enumerate() {
        for (j, sender) in names.iter().enumerate() {
            if i == j {
                continue;
            }
            m.wait_line(
                &format!("[friends] {sender}: second from {sender}"),
                LINE_LIMIT,
            );
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    for (i, m) in members.iter().enumerate() {
        let text = m.text();
        for (j, sender) in names.iter().enumerate() {
            if i == j {
                continue;
            }
            // Once each, and in the sender's order.
            let first = format!("[friends] {sender}: hello from {sender}");
            let second = format!("[friends] {sender}: second from {sender}");
            assert_eq!(m.count(&first), 1, "{}: {text}", m.name);
            assert_eq!(m.count(&second), 1, "{}: {text}", m.name);
            let at = |l: &str| text.lines().position(|x| x == l).unwrap();
            assert!(at(&first) < at(&second), "{}: {text}", m.name);
        }
    }

    // Bob leaves: everyone else is told, and his command ends.
    members[1].say("/leave");
    let deadline = Instant::now() + LINE_LIMIT;
    while members[1].child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "bob's join did not end after /leave"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in [0, 2, 3, 4] {
        members[i].wait_line("[friends] * bob left the room", LINE_LIMIT);
    }
    // Carol is killed: the others notice within the keep-alive (3 s; the limit allows
    // for a few on a busy machine, and for relayed paths).
    members[2].child.kill().unwrap();
    let killed = Instant::now();
    for i in [0, 3, 4] {
        members[i].wait("carol noticed gone", Duration::from_secs(20), |t| {
            t.contains("[friends] * lost carol") || t.contains("[friends] * carol went offline")
        });
    }
    eprintln!(
        "room of five: carol's death noticed after {:?}",
        killed.elapsed()
    );
    // The rest go on.
    members[0].say("still here");
    for i in [3, 4] {
        members[i].wait_line("[friends] alice: still here", LINE_LIMIT);
    }
}

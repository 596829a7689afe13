//! `deploy/`: the systemd unit is hardened and passes `systemd-analyze
//! verify` (run whenever the tool is installed), the example config parses
//! to the documented defaults, the Dockerfile is multi-stage and non-root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use chatr_server::RegistrationPolicy;
use chatr_server::settings::ServeArgs;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(name)).unwrap()
}

/// `Key=value` lines that are not comments.
fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn value<'a>(d: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    d.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn systemd_unit_is_hardened() {
    let unit = read("chatr-server.service");
    let d = directives(&unit);
    for (key, expected) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("StateDirectory", "chatr-server"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("Environment", "CHATR_DATA_DIR=/var/lib/chatr-server"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(value(&d, key), vec![expected], "{key}");
    }
    // No capability by default; the low-port grant is present but commented.
    assert!(value(&d, "AmbientCapabilities").is_empty());
    assert!(unit.contains("#AmbientCapabilities=CAP_NET_BIND_SERVICE"));
    let exec = value(&d, "ExecStart");
    assert_eq!(exec.len(), 1);
    assert!(exec[0].starts_with("/usr/local/bin/chatr-server serve --config "));
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let available = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let unit = read("chatr-server.service");
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = unit.replace(
        "/usr/local/bin/chatr-server",
        env!("CARGO_BIN_EXE_chatr-server"),
    );
    let low_port = unit
        .replace("\nCapabilityBoundingSet=\n", "\n")
        .replace(
            "#CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        )
        .replace("#AmbientCapabilities=", "AmbientCapabilities=");
    assert_ne!(low_port, unit);
    assert!(directives(&low_port).contains(&(
        "AmbientCapabilities".to_owned(),
        "CAP_NET_BIND_SERVICE".to_owned()
    )));
    if !available {
        eprintln!(
            "systemd-analyze not installed: unit structure checked, `verify` not run \
             (apt-get install systemd to run it)"
        );
        return;
    }
    for variant in [unit, low_port] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chatr-server.service");
        std::fs::write(&path, variant).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "systemd-analyze verify failed: {stderr}"
        );
        assert!(
            !stderr.contains("chatr-server.service"),
            "systemd-analyze complained: {stderr}"
        );
    }
}

#[test]
fn example_config_parses_to_the_defaults() {
    let path = deploy_dir().join("chatr-server.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let layer = ServeArgs::from_toml(&text, &path).unwrap();
    let settings = layer.finish().unwrap();
    let defaults = ServeArgs::default().finish().unwrap();
    let (c, d) = (&settings.server, &defaults.server);
    assert_eq!(c.listen, d.listen);
    assert_eq!(c.api_listen, d.api_listen);
    assert_eq!(c.registration, RegistrationPolicy::Open);
    assert_eq!(c.require_channel_binding, d.require_channel_binding);
    assert_eq!(c.timings.ping_interval, d.timings.ping_interval);
    assert_eq!(c.timings.ping_timeout, d.timings.ping_timeout);
    assert_eq!(c.timings.login_timeout, d.timings.login_timeout);
    assert_eq!(c.timings.request_timeout, d.timings.request_timeout);
    assert_eq!(c.timings.takeover_probe, d.timings.takeover_probe);
    assert_eq!(c.timings.write_timeout, d.timings.write_timeout);
    assert_eq!(c.limits.max_connections, d.limits.max_connections);
    assert_eq!(
        c.limits.max_connections_per_ip,
        d.limits.max_connections_per_ip
    );
    assert_eq!(
        c.limits.api_requests_per_second,
        d.limits.api_requests_per_second
    );
    assert_eq!(c.limits.api_burst, d.limits.api_burst);
    assert_eq!(settings.log_format, defaults.log_format);
    assert_eq!(settings.log_level, defaults.log_level);
}

#[test]
fn dockerfile_is_multi_stage_and_non_root() {
    let docker = read("Dockerfile");
    let lines: Vec<&str> = docker
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let froms = lines.iter().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "not multi-stage");
    assert!(lines.iter().any(|l| l.starts_with("COPY --from=build ")));
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("no USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "{user}"
    );
    for port in ["7777/tcp", "7777/udp", "7778/tcp"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("EXPOSE") && l.contains(port)),
            "{port}"
        );
    }
    assert!(
        read("Dockerfile.dockerignore")
            .lines()
            .any(|l| l.trim() == "target")
    );
}

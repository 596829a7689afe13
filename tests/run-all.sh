#!/usr/bin/env bash
# Runs every Chatr check and test, from a clean clone, as root:
#   formatting, clippy (warnings are errors), the docs (warnings are errors), a build with
#   the declared minimum Rust version, a build of the fuzz target, all unit / integration /
#   end-to-end tests (the NAT lab included: it builds network namespaces and nftables NATs),
#   and a smoke run of chatr-bench so the benchmark tool keeps compiling and working.
#   Cluster mode (feature `cluster`) is checked and tested too, against Debian's real
#   nats-server and PostgreSQL: the tests start them on loopback (random ports, temp dirs).
# It installs the system packages it needs when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# The cluster tests' real servers (started by the tests themselves, never as a service).
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
# cli/tests/tui_tmux.rs drives `chatr tui` through a real terminal.
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
# The NAT lab's `upnp` profile runs a real miniupnpd (UPnP IGD, NAT-PMP, PCP) in a router namespace.
[ -x /usr/sbin/miniupnpd ] || missing+=(miniupnpd-nftables)

if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "run-all: missing ${missing[*]} and not root: install them or run as root" >&2
    exit 1
  fi
  echo "run-all: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

echo "run-all: cargo fmt --check"
cargo fmt --all -- --check
echo "run-all: cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "run-all: cargo clippy --all-features (cluster mode)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
echo "run-all: cargo doc (warnings are errors: the docs are a newcomer's map)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
echo "run-all: MSRV check"
# `rust-version` in Cargo.toml is the oldest toolchain we promise to build with, so it must be
# one we actually build with. This machine has a single toolchain and cannot fetch others, so
# the declared MSRV is that toolchain's version: build with rustup's toolchain of exactly that
# version when one is installed, else with the active toolchain if it is that version, and fail
# otherwise (lowering rust-version needs that older toolchain here to prove it).
msrv=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
msrv_toolchain=""
if command -v rustup >/dev/null 2>&1; then
  msrv_toolchain=$(rustup toolchain list | awk -v v="$msrv" 'index($1, v ".") == 1 || index($1, v "-") == 1 { print $1; exit }')
fi
if [ -n "$msrv_toolchain" ]; then
  cargo "+${msrv_toolchain}" check --workspace --all-targets --locked
else
  active=$(rustc --version | awk '{ print $2 }')
  case "$active" in
    "$msrv" | "$msrv".*) cargo check --workspace --all-targets --locked ;;
    *)
      echo "run-all: rust-version is ${msrv} but only rustc ${active} is here; install it (rustup toolchain install ${msrv}) or declare what is tested" >&2
      exit 1
      ;;
  esac
fi
echo "run-all: fuzz target build (its own workspace; artifacts under target/fuzz)"
CARGO_TARGET_DIR="$PWD/target/fuzz" bash fuzz/run-stable.sh --build-only
echo "run-all: building binaries (the NAT lab runs the real ones)"
cargo build --workspace --bins --locked
echo "run-all: cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# --no-fail-fast: one failing test binary must not hide the results of the others.
status=0
cargo test --workspace --locked --no-fail-fast -- --test-threads=2 2>&1 | tee "$log" || status=$?
echo "run-all: cluster tests (feature cluster; real nats-server and PostgreSQL on loopback)"
# One test at a time: each starts three nodes beside NATS and PostgreSQL, and two at once on
# two cores starved the nodes' 300 ms heartbeats in one run of three (meshing not seen in 30 s).
cargo test -p chatr-server --features cluster --locked --no-fail-fast --lib --test cluster --test registry_backends \
  -- --test-threads=1 2>&1 | tee -a "$log" || status=$?
passed=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^passed/) s += $i } END { print s + 0 }' "$log")
failed=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^failed/) s += $i } END { print s + 0 }' "$log")
if [ "$status" -ne 0 ]; then
  echo "run-all: cargo test failed (exit ${status}); failing tests:"
  grep -E '^test .* FAILED$' "$log" || true
  echo "tests: ${passed} passed, ${failed} failed"
  exit "$status"
fi
echo "run-all: chatr-bench smoke run"
cargo run -q -p chatr-tests --bin chatr-bench --locked -- smoke
echo "run-all: chatr-bench cluster builds (feature cluster)"
cargo build -q -p chatr-tests --features cluster --bin chatr-bench --locked
echo "run-all: all checks passed"
echo "tests: ${passed} passed, ${failed} failed"

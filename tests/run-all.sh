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

# One feature set for every compiling step after the default-feature lint: cluster mode on.
# Cargo resolves features per invocation, and cluster mode turns on features of crates the
# whole tree depends on (bytes' serde, for one), so each differing set recompiled most of the
# tree: five sets took a clean-clone CI run to 37 minutes. Cluster mode is additive (a node
# without `[cluster]` in its config is the single-node server), so the tests below run every
# single-node test with it compiled in, and the default build is linted on its own.
features="chatr-server/cluster,chatr-tests/cluster"
step_started=$SECONDS
step() {
  echo "run-all: [$((SECONDS - step_started)) s] $*"
}

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (default features: the single-node build that ships)"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo clippy (cluster mode)"
cargo clippy --workspace --all-targets --features "$features" --locked -- -D warnings
step "cargo doc (warnings are errors: the docs are a newcomer's map)"
# --examples makes cargo resolve the dev-dependencies' features too, as clippy --all-targets
# did, so the doc step reuses clippy's checked dependencies instead of checking them again.
# (Not --bins: the chatr-server binary would overwrite the library's page of the same name.)
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --lib --examples --features "$features" --locked
step "MSRV check"
# `rust-version` in Cargo.toml is the oldest toolchain we promise to build with, so it must be
# one we actually build with. This machine has a single toolchain and cannot fetch others, so
# the declared MSRV is that toolchain's version: check with rustup's toolchain of exactly that
# version when one is installed besides the active one; when the active toolchain is that
# version, the clippy passes above were that check; fail otherwise (lowering rust-version needs
# that older toolchain here to prove it).
msrv=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
active=$(rustc --version | awk '{ print $2 }')
case "$active" in
  "$msrv" | "$msrv".*) echo "run-all: rustc ${active} is the declared rust-version ${msrv}: checked by clippy above" ;;
  *)
    msrv_toolchain=""
    if command -v rustup >/dev/null 2>&1; then
      msrv_toolchain=$(rustup toolchain list | awk -v v="$msrv" 'index($1, v ".") == 1 || index($1, v "-") == 1 { print $1; exit }')
    fi
    if [ -z "$msrv_toolchain" ]; then
      echo "run-all: rust-version is ${msrv} but only rustc ${active} is here; install it (rustup toolchain install ${msrv}) or declare what is tested" >&2
      exit 1
    fi
    cargo "+${msrv_toolchain}" check --workspace --all-targets --locked
    ;;
esac
step "fuzz target build (its own workspace; artifacts under target/fuzz)"
CARGO_TARGET_DIR="$PWD/target/fuzz" bash fuzz/run-stable.sh --build-only
step "building binaries and tests (the NAT lab runs the real binaries)"
cargo build --workspace --all-targets --features "$features" --locked
step "cargo test (cluster tests against real nats-server and PostgreSQL on loopback included)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# --no-fail-fast: one failing test binary must not hide the results of the others.
# The cluster tests take a lock so that one three-node cluster runs at a time.
status=0
cargo test --workspace --features "$features" --locked --no-fail-fast -- --test-threads=2 2>&1 | tee "$log" || status=$?
passed=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^passed/) s += $i } END { print s + 0 }' "$log")
failed=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^failed/) s += $i } END { print s + 0 }' "$log")
if [ "$status" -ne 0 ]; then
  echo "run-all: cargo test failed (exit ${status}); failing tests:"
  grep -E '^test .* FAILED$' "$log" || true
  echo "tests: ${passed} passed, ${failed} failed"
  exit "$status"
fi
step "chatr-bench smoke run (the binary built above, cluster mode compiled in)"
target/debug/chatr-bench smoke
step "all checks passed"
echo "tests: ${passed} passed, ${failed} failed"

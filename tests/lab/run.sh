#!/usr/bin/env bash
# Runs the Chatr NAT lab: installs what it needs, builds the real binaries, runs the
# lab's own NAT-profile checks and the matrix test, and (with --write-matrix) rewrites
# docs/NAT-MATRIX.md. Needs root (network namespaces, nftables). Fails loudly.
#
#   sudo tests/lab/run.sh                     # profile checks + matrix test
#   sudo tests/lab/run.sh --write-matrix      # ... then rewrite docs/NAT-MATRIX.md
#   sudo tests/lab/run.sh --write-matrix --delay-ms 50 --loss 2
#   sudo tests/lab/run.sh --sweep             # only remove leftovers of killed runs
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/lab/run.sh: the NAT lab needs root (network namespaces, nftables)" >&2
    exit 1
fi

missing=()
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing+=(nftables)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || missing+=(iproute2)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "tests/lab/run.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "${1:-}" = "--sweep" ]; then
    exec cargo run -q -p chatr-tests --bin chatr-natlab -- --sweep
fi

cargo build -p chatr-server -p chatr-cli
cargo test -p chatr-tests --test nat_profiles --test nat_matrix

if [ "${1:-}" = "--write-matrix" ]; then
    shift
    cargo run -q -p chatr-tests --bin chatr-natlab -- --out docs/NAT-MATRIX.md "$@"
fi

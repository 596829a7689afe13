//! End-to-end tests, the NAT lab and the benchmark tool for Chatr.
//!
//! [`lab`] builds real NAT topologies in Linux network namespaces and runs the
//! real `chatr`/`chatr-server` binaries across every pair of NAT profiles (see
//! `docs/NAT-MATRIX.md`, rewritten by the `chatr-natlab` binary).
#![warn(missing_docs, unreachable_pub)]
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod bench;
pub mod lab;
pub mod pattern;

//! `chatr-bench`: the figures of issue 7, each measured beside its baseline in the same run.
//!
//! Every server-side benchmark runs the server in a **child process** (the same
//! `chatr-bench` executable, hidden `serve` subcommand), so the parent can read the
//! server's own RSS and CPU from `/proc/<pid>` while it generates load:
//!
//! * `chatr` kind: [`chatr_server::start`], exactly what the `chatr-server` binary
//!   runs, with the benchmark identities put into its in-memory registry (registering
//!   100 000 identities through the durable registry would cost 100 000 fsyncs).
//! * `bare` kind: a bare tokio-rustls accept loop with the **same certificate and the
//!   same rustls configuration** ([`chatr_server::tls::rustls_server_config`], ring,
//!   TLS 1.3) that answers PacketConnect with a canned PacketConnected (no lookup, no
//!   signature check) and echoes every other frame: the floor any TLS server pays.
//!
//! The load clients ([`client`]) are written from the spec with raw frames
//! ([`chatr_proto::decode_frame`], [`chatr_proto::Packet::encode`]), not with the
//! `chatr-client` library, so the figures measure the server.
//!
//! Modules: [`login_rate`], [`concurrent`], [`broker`], [`hostile`] (issue 16's attacks),
//! [`lab`] (punch time in the NAT lab), [`throughput`] (link throughput in the NAT lab, beside
//! iperf3 and iroh) and [`smoke`] are the subcommands; [`stats`], [`sys`],
//! [`identity`], [`tls`], [`client`], [`server`] and [`report`] are their tools.

pub mod broker;
pub mod client;
pub mod concurrent;
mod error;
pub mod hostile;
pub mod identity;
pub mod lab;
pub mod login_rate;
pub mod report;
pub mod serve;
pub mod server;
pub mod smoke;
pub mod stats;
pub mod sys;
pub mod throughput;
pub mod tls;

pub use error::BenchError;

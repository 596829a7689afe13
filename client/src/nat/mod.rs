//! What our NAT does, and what that means for punching to a given peer.
//!
//! # Where this sits in the flow
//! 1. After login, a version-3 server announces its NAT probe ports (`PacketConnected`
//!    extension 22). From the link socket (the one that punches) the client sends a STUN
//!    Binding request to the Connect UDP port and then to each probe port, in that order
//!    (`node::nat_probe`), and [`classify`] turns the public addresses the answers report
//!    into a [`chatr_proto::NatHint`]: no NAT, one port for every destination, or a new
//!    port per destination picked in sequence (with its step) or at random.
//! 2. The hint goes out in every request and accept (link hints, `docs/PROTOCOL.md`
//!    §5), so each side of an exchange knows both NATs before the punch starts.
//! 3. [`Strategy::choose`] picks, from both hints, how hard the punch tries (§10.7):
//!    plain probing, port prediction against a sequential NAT, or the birthday
//!    technique against a random one.

mod classify;
mod strategy;

pub use classify::{Observation, classify, describe};
pub use strategy::{
    BIRTHDAY_PROBES, BIRTHDAY_SOCKETS, PREDICT_WINDOW, SPRAY_RATE, Strategy, birthday_ports,
    predicted_ports,
};

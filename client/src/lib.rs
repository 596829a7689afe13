//! Chatr client (being built; see the open issues).

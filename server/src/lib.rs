//! Chatr Connect server (being built; see the open issues).

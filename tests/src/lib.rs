//! End-to-end tests, the NAT lab and chatr-bench (being built).

//! `chatr-server` binary (being built).
fn main() {
    eprintln!("chatr-server: not built yet");
    std::process::exit(1);
}

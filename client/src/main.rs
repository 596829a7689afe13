//! `chatr` binary (being built).
fn main() {
    eprintln!("chatr: not built yet");
    std::process::exit(1);
}

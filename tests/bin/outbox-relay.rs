//! The `outbox-relay` binary, built inside the test package; see `host/src/main.rs`.

fn main() -> std::process::ExitCode {
    outbox_relay::cli::main()
}

//! The `outbox-relay` binary; see [`outbox_relay::cli`].

fn main() -> std::process::ExitCode {
    outbox_relay::cli::main()
}

//! The `brig` binary.

mod app;
mod attach;
mod cli;
mod client;
mod demo;
mod output;
mod server;
mod term;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Entry points that run inside or next to a sandbox. They must run
    // before any thread exists (they fork, and install seccomp), so they are
    // dispatched here, ahead of argument parsing and the async runtime.
    match args.get(1).map(String::as_str) {
        Some("sandbox-init") => {
            brig_sandbox::init::main(args.get(2).map(String::as_str).unwrap_or(""))
        }
        Some("oci-runtime") => std::process::exit(brig_sandbox::native::cli_main(&args[2..])),
        _ => {}
    }
    std::process::exit(app::main());
}

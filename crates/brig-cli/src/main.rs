//! The `brig` binary.

mod agents;
mod app;
mod attach;
mod cli;
mod client;
mod creds;
mod demo;
mod human;
mod journal;
mod login;
mod mcp;
mod model;
mod output;
mod pr;
mod recipes;
mod scan;
mod server;
mod term;
mod token;

fn main() {
    // Entry points that run inside or next to a sandbox. They must run
    // before any thread exists (they fork, and install seccomp), so they are
    // dispatched here, ahead of argument parsing and the async runtime.
    // Arguments are read as OsString: a non-UTF-8 path given to the client
    // must reach clap's own error, not a panic here.
    let first = std::env::args_os().nth(1);
    let internal = matches!(
        first.as_deref().and_then(|a| a.to_str()),
        Some("sandbox-init" | "sandbox-forwarder" | "sandbox-anyip" | "oci-runtime")
    );
    let args: Vec<String> = if internal {
        std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    } else {
        Vec::new()
    };
    match args.get(1).map(String::as_str) {
        Some("sandbox-init") => {
            brig_sandbox::init::main(args.get(2).map(String::as_str).unwrap_or(""))
        }
        Some("sandbox-forwarder") => {
            brig_sandbox::forwarder::main(args.get(2).map(String::as_str).unwrap_or(""))
        }
        Some("sandbox-anyip") => brig_sandbox::egress::anyip_main(),
        Some("oci-runtime") => std::process::exit(brig_sandbox::native::cli_main(&args[2..])),
        _ => {}
    }
    std::process::exit(app::main());
}

//! Command-line grammar (clap derive). Values with units are checked here,
//! before anything contacts a server, so a typo fails fast with exit 2.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_SOCKET: &str = "/run/brig/brig.sock";
pub const DEFAULT_CONFIG: &str = "/etc/brig/brig.toml";

#[derive(Parser, Debug)]
#[command(
    name = "brig",
    version,
    about = "brig: a secure devbox for AI coding agents",
    long_about = "brig runs AI coding agents in ephemeral, hardened, auditable sandboxes.\n\
                  Start the control plane with `brig serve`, try everything end to end with `brig demo`.",
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Unix socket of the brig control plane.
    #[arg(long, global = true, env = "BRIG_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Reach the control plane over TCP instead (e.g. http://10.0.0.5:7878); uses BRIG_TOKEN.
    #[arg(long, global = true, env = "BRIG_URL", value_name = "URL")]
    pub url: Option<String>,

    /// brig.toml to use (default: /etc/brig/brig.toml if present).
    #[arg(long, global = true, env = "BRIG_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Machine-readable output on stdout; errors as {"error": {...}} on stderr.
    #[arg(long, global = true)]
    pub json: bool,

    /// Print less: no progress, no summaries.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the control plane (API on a unix socket, state in SQLite).
    Serve(ServeArgs),
    /// Create, inspect, use and destroy sessions.
    #[command(subcommand)]
    Session(SessionCmd),
    /// Create a session, run one command in it, destroy it, print a summary.
    Run(RunArgs),
    /// Kill switch: kill a session, every session of a user or task, or all, now.
    Kill(KillArgs),
    /// Game days: rehearse the kill switch and time it.
    #[command(subcommand)]
    Drill(DrillCmd),
    /// List and import images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Hand build artifacts out of a session: upload URLs, list, fetch.
    #[command(subcommand)]
    Artifact(ArtifactCmd),
    /// Show, follow, export and verify the tamper-evident journal.
    #[command(subcommand)]
    Journal(crate::journal::JournalCmd),
    /// What a session holds of its profile's secrets (never the values).
    #[command(subcommand)]
    Creds(crate::creds::CredsCmd),
    /// Approval requests of sensitive capabilities.
    #[command(subcommand)]
    Approvals(crate::human::ApprovalsCmd),
    /// Approve a request (you must hold one of the roles it asks for).
    Approve {
        id: String,
        /// How long the approval holds (default [approvals] default_for).
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        #[arg(long)]
        note: Option<String>,
    },
    /// Deny a request; the agent is told the reason.
    Deny {
        id: String,
        #[arg(long, required = true)]
        reason: String,
    },
    /// A session's structured plans (goal, steps, blast radius, rollback).
    #[command(subcommand)]
    Plan(crate::human::PlanCmd),
    /// Check, test and show the Cedar policies (offline, from brig.toml).
    #[command(subcommand)]
    Policy(crate::human::PolicyCmd),
    /// What sessions asked models through brig's gateway (captured, redacted).
    #[command(subcommand)]
    Model(crate::model::ModelCmd),
    /// Reports: cost (tokens, model spend, sandbox-hours).
    #[command(subcommand)]
    Report(crate::model::ReportCmd),
    /// Before a pull request: preview a pushed branch, run the test gate, open the PR.
    #[command(subcommand)]
    Pr(crate::pr::PrCmd),
    /// Scan a directory or a git range for secrets, private keys, large binaries and denied files.
    Scan(crate::scan::ScanArgs),
    /// Report what this host supports and which runtimes will work.
    Doctor,
    /// Print brig's version.
    Version,
    /// Log in with the IdP (OIDC device flow); the login is used over TCP (--url).
    Login(crate::login::LoginArgs),
    /// Forget the stored login.
    Logout,
    /// Who the server says you are.
    Whoami,
    /// API tokens for automation: create (shown once), list, revoke.
    #[command(subcommand)]
    Token(crate::token::TokenCmd),
    /// Run the whole job end to end on embedded defaults (no setup needed).
    Demo(DemoArgs),
    /// Serve the Model Context Protocol (stdio, or streamable HTTP with
    /// --listen): MCP clients drive sessions as tools, as you. A server:
    /// --json only prints the --listen address as JSON.
    Mcp(crate::mcp::McpArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Where brig keeps its database, images and workspaces.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand, Debug)]
pub enum SessionCmd {
    /// Create a session and print its id.
    Create(CreateArgs),
    /// List live sessions (all with --all).
    #[command(alias = "ls")]
    List {
        /// Include destroyed and failed sessions.
        #[arg(long)]
        all: bool,
    },
    /// Show one session.
    Show { id: String },
    /// Run a command in a session, attached.
    Exec(ExecArgs),
    /// Open an interactive shell in a session.
    Shell { id: String },
    /// Destroy a session gracefully (TERM, 2 s grace, KILL, shred).
    #[command(alias = "rm")]
    Destroy { id: String },
    /// Kill a session immediately (KILL, shred).
    Kill { id: String },
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// One session.
    #[arg(value_name = "SESSION", conflicts_with_all = ["user", "task", "all"])]
    pub session: Option<String>,
    /// Every live session of this human.
    #[arg(long, value_name = "USER", conflicts_with_all = ["task", "all"])]
    pub user: Option<String>,
    /// Every live session of this task.
    #[arg(long, value_name = "TASK", conflicts_with = "all")]
    pub task: Option<String>,
    /// Every live session.
    #[arg(long)]
    pub all: bool,
}

#[derive(Subcommand, Debug)]
pub enum DrillCmd {
    /// Start a test session with a running process, open connections and a
    /// live credential, kill it, and report time-to-dead for each part.
    Kill {
        /// The profile the test session runs under.
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// The repository: a git repository (working tree or bare) checked out
    /// at a pinned commit, a `[repos.NAME]` of brig.toml, or a plain
    /// directory copied in (never mounted).
    #[arg(long, value_name = "PATH|NAME")]
    pub repo: Option<PathBuf>,
    /// Branch, tag or commit of the repository to pin (default: its HEAD).
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,
    /// Check out only these directories (cone mode), e.g. pkg/a,pkg/b.
    #[arg(long, value_name = "DIRS", value_delimiter = ',')]
    pub sparse: Vec<String>,
    /// History depth of the checkout (default 1: the pinned commit alone).
    #[arg(long, value_name = "N")]
    pub depth: Option<u32>,
    /// The task this session works on (a ticket key, e.g. JIRA-1234).
    #[arg(long, value_name = "ID", value_parser = parse_task)]
    pub task: String,
    /// Profile from brig.toml.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Image name or sha256 digest (default: the profile's, usually `host`).
    #[arg(long, value_name = "NAME")]
    pub image: Option<String>,
    /// native, gvisor, or oci:/path/to/runtime.
    #[arg(long, value_name = "RUNTIME", value_parser = parse_runtime)]
    pub runtime: Option<String>,
    /// CPU quota in cores, e.g. 1.5.
    #[arg(long, value_name = "N", value_parser = parse_cpus)]
    pub cpus: Option<f64>,
    /// Memory limit, e.g. 2G.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<String>,
    /// Process limit.
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// Size cap of /workspace, e.g. 10G.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub disk: Option<String>,
    /// Destroy after this long without activity, e.g. 15m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle: Option<String>,
    /// Destroy this long after start, e.g. 20m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timebox: Option<String>,
    /// Local directory snapshotted into /workspace (honours .gitignore, size-capped).
    #[arg(long, value_name = "DIR")]
    pub upload: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct ExecOpts {
    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Forward stdin even when it is a terminal.
    #[arg(short, long)]
    pub interactive: bool,
    /// Kill the command after this long, e.g. 30s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<String>,
    /// Extra environment variable (repeatable).
    #[arg(short, long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox (default /workspace).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    pub id: String,
    #[command(flatten)]
    pub opts: ExecOpts,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    #[command(flatten)]
    pub opts: ExecOpts,
    /// Run this coding agent non-interactively on the task text instead of
    /// a command: claude-code, codex or aider (docs/AGENTS.md).
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// The model (a name or alias of brig's model gateway) the agent uses.
    #[arg(long, value_name = "NAME", requires = "agent")]
    pub model: Option<String>,
    /// With --agent: what the agent is to do.
    #[arg(value_name = "TASK_TEXT", requires = "agent")]
    pub prompt: Option<String>,
    /// The command and its arguments (after `--`); with --agent, extra
    /// arguments for the agent.
    #[arg(last = true, required_unless_present = "agent", value_name = "CMD")]
    pub cmd: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// List images.
    #[command(alias = "ls")]
    List,
    /// Import an OCI image layout directory or a `docker save` tarball.
    Import {
        path: PathBuf,
        /// Name to use with --image.
        #[arg(long, value_name = "NAME")]
        name: String,
    },
    /// Build an image from a recipe directory (its steps run in a brig
    /// session that reaches only the package registries), or the image an
    /// agent preset pins (docs/AGENTS.md#image-recipes).
    Build {
        /// A recipe directory (recipe.toml and the files it pins).
        #[arg(required_unless_present = "agent", conflicts_with = "agent")]
        dir: Option<PathBuf>,
        /// The recipe shipped with this brig for an agent preset:
        /// claude-code, codex or aider.
        #[arg(long, value_name = "NAME")]
        agent: Option<String>,
        /// The build session's profile (default `image-build`; its egress
        /// must allow only the package registries).
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
        /// Build again even if the image exists.
        #[arg(long)]
        rebuild: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ArtifactCmd {
    /// Issue a signed, time-bounded, single-use upload URL for NAME on
    /// brig's own artifact endpoint; inside the session: `curl -T FILE URL`.
    Url {
        /// The session that may upload.
        #[arg(long, value_name = "ID")]
        session: String,
        /// How long the URL is valid.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10m")]
        ttl: String,
        /// The artifact's file name (no '/', no '..').
        name: String,
    },
    /// List a session's artifacts.
    #[command(alias = "ls")]
    List {
        #[arg(long, value_name = "ID")]
        session: String,
    },
    /// Fetch an artifact (to stdout, or to -o FILE), checking its SHA-256.
    Get {
        #[arg(long, value_name = "ID")]
        session: String,
        name: String,
        /// Write to FILE instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Runtime to run the demo on.
    #[arg(long, value_name = "RUNTIME", value_parser = parse_runtime, default_value = "native")]
    pub runtime: String,
    /// Keep the demo's data directory (printed at the end) for inspection.
    #[arg(long)]
    pub keep: bool,
}

// Validators: they keep the user's spelling (the server parses it again,
// authoritatively) but refuse what can never be valid.

fn parse_size(s: &str) -> Result<String, String> {
    brig_core::units::parse_size(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<String, String> {
    match brig_core::units::parse_duration(s) {
        Ok(d) if d.is_zero() => Err(format!("duration {s:?} must be greater than zero")),
        Ok(_) => Ok(s.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_runtime(s: &str) -> Result<String, String> {
    brig_core::session::RuntimeKind::parse(s)
        .map(|r| r.name())
        .map_err(|e| e.to_string())
}

fn parse_task(s: &str) -> Result<String, String> {
    s.parse::<brig_core::TaskId>()
        .map(String::from)
        .map_err(|e| e.to_string())
}

fn parse_cpus(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "cpus {s:?} is not valid (hint: a positive number of cores, e.g. 1 or 0.5)"
        )),
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "{s:?} is not K=V (hint: e.g. --env RUST_LOG=debug)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_create_and_exec_flags() {
        let cli = Cli::try_parse_from([
            "brig", "run", "--task", "T-1", "--memory", "1G", "--env", "A=b", "--", "sh", "-c",
            "exit 3",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.create.memory.as_deref(), Some("1G"));
        assert_eq!(r.opts.env, vec![("A".into(), "b".into())]);
        assert_eq!(r.cmd, vec!["sh", "-c", "exit 3"]);
    }

    #[test]
    fn run_takes_an_agent_and_its_task_text() {
        let cli = Cli::try_parse_from([
            "brig",
            "run",
            "--agent",
            "claude-code",
            "--task",
            "T-1",
            "--model",
            "coder",
            "fix the bug",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.agent.as_deref(), Some("claude-code"));
        assert_eq!(r.model.as_deref(), Some("coder"));
        assert_eq!(r.prompt.as_deref(), Some("fix the bug"));
        assert!(r.cmd.is_empty());
        // After `--`: the agent's own extra arguments.
        let cli = Cli::try_parse_from([
            "brig",
            "run",
            "--agent",
            "aider",
            "--task",
            "T",
            "x",
            "--",
            "--auto-test",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.prompt.as_deref(), Some("x"));
        assert_eq!(r.cmd, vec!["--auto-test"]);
        // Task text without an agent, or neither: refused.
        for args in [
            &["brig", "run", "--task", "T", "fix it"][..],
            &["brig", "run", "--task", "T"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            &[
                "brig", "session", "create", "--task", "T", "--memory", "lots",
            ][..],
            &["brig", "session", "create", "--task", "T", "--idle", "soon"],
            &[
                "brig",
                "session",
                "create",
                "--task",
                "T",
                "--runtime",
                "docker",
            ],
            &["brig", "session", "create", "--task", "a b"],
            &["brig", "session", "create", "--task", "T", "--cpus", "-1"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}

//! Every command: parse, call the API (or the host, for `doctor`), print.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use brig_core::exec::{ExecRequest, ExecResult};
use brig_core::session::{CreateSession, SessionInfo, SessionSummary};
use brig_core::units::{format_duration, format_size, parse_duration};
use brig_core::{Error, ErrorKind, Result};
use clap::Parser;
use hyper::Method;

use crate::attach::{self, AttachOpts, Outcome};
use crate::cli::{
    self, ArtifactCmd, Cli, Command, CreateArgs, DrillCmd, ExecOpts, ImageCmd, SessionCmd,
};
use crate::client::{decode, Client, Endpoint};
use crate::output::Out;
use crate::term::{self, age, short_digest, RawMode, Spinner};

/// Docker's convention for `exec`/`run` when brig itself failed, so the
/// command's own exit codes stay unambiguous.
pub const EXIT_BRIG_FAILED: i32 = 125;
/// `kill` without `--all`, and other usage errors clap does not catch.
const EXIT_USAGE: i32 = 2;

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap's own message, with its exit code (2 for usage errors, 0
            // for --help/--version); `--json` is honoured if it was given.
            let code = e.exit_code();
            if code != 0 && std::env::args().any(|a| a == "--json") {
                let msg = e.kind().to_string();
                let detail = e.render().to_string();
                let err = Error::invalid(format!("{msg}: {}", first_line(&detail)))
                    .hint("see `brig --help` or `brig <command> --help`");
                Out {
                    json: true,
                    quiet: false,
                }
                .error(&err);
            } else {
                let _ = e.print();
            }
            return code;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("brig: error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    // The process exits right after: a stdin reader still blocked in a
    // worker thread must not hold the exit up, so the runtime is leaked.
    let code = rt.block_on(run(cli));
    std::mem::forget(rt);
    code
}

fn first_line(s: &str) -> String {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .trim_start_matches("error: ")
        .to_string()
}

async fn run(cli: Cli) -> i32 {
    let out = Out {
        json: cli.json,
        quiet: cli.quiet,
    };
    let is_exec = matches!(
        cli.command,
        Command::Run(_)
            | Command::Session(SessionCmd::Exec(_))
            | Command::Session(SessionCmd::Shell { .. })
    );
    match dispatch(cli, out).await {
        Ok(code) => code,
        Err(e) => {
            out.error(&e);
            if is_exec {
                EXIT_BRIG_FAILED
            } else {
                e.kind.exit_code()
            }
        }
    }
}

/// The brig.toml to use: `--config`/BRIG_CONFIG, else /etc/brig/brig.toml if present.
fn config_path(cli: &Cli) -> Result<Option<PathBuf>> {
    match &cli.config {
        Some(p) if !p.exists() => Err(Error::invalid(format!(
            "config file {} does not exist",
            p.display()
        ))
        .hint("pass an existing brig.toml with --config or BRIG_CONFIG, or leave it out to use the defaults")),
        Some(p) => Ok(Some(p.clone())),
        None => {
            let p = PathBuf::from(cli::DEFAULT_CONFIG);
            Ok(p.exists().then_some(p))
        }
    }
}

fn client(cli: &Cli) -> Result<Client> {
    // Without --socket, the socket brig.toml names, so that `brig serve` and
    // the client agree on one file.
    // An explicit --config that does not exist is an error even when unused.
    let config = config_path(cli)?;
    let socket = match (&cli.socket, &cli.url) {
        (None, None) => config
            .map(|p| crate::server::configured_socket(&p))
            .transpose()?,
        _ => cli.socket.clone(),
    };
    let endpoint = match &cli.url {
        Some(url) => Endpoint::from_url(
            url,
            std::env::var("BRIG_TOKEN").ok().filter(|t| !t.is_empty()),
        )?,
        None => Endpoint::Unix(socket.unwrap_or_else(|| PathBuf::from(cli::DEFAULT_SOCKET))),
    };
    Ok(Client::new(endpoint))
}

async fn dispatch(cli: Cli, out: Out) -> Result<i32> {
    match &cli.command {
        Command::Serve(a) => {
            let config = config_path(&cli)?;
            crate::server::serve(
                config.as_deref(),
                a.data_dir.clone(),
                cli.socket.clone(),
                a.log_format,
            )
            .await?;
            Ok(0)
        }
        Command::Doctor => doctor(out).await,
        Command::Version => {
            let v = env!("CARGO_PKG_VERSION");
            if out.json {
                out.json_value(&serde_json::json!({ "version": v }));
            } else {
                out.text(&format!("brig {v}"));
            }
            Ok(0)
        }
        Command::Demo(a) => crate::demo::run(a, out).await,
        Command::Kill(a) => {
            let body = match (&a.session, &a.user, &a.task, a.all) {
                (Some(id), ..) => serde_json::json!({ "session": id }),
                (_, Some(u), ..) => serde_json::json!({ "user": u }),
                (_, _, Some(t), _) => serde_json::json!({ "task": t }),
                (.., true) => serde_json::json!({ "all": true }),
                _ => {
                    let e = Error::invalid("`brig kill` needs SESSION, --user, --task or --all")
                        .hint(
                        "e.g. `brig kill --user ada`, or every live session with `brig kill --all`",
                    );
                    out.error(&e);
                    return Ok(EXIT_USAGE);
                }
            };
            kill(&client(&cli)?, body, out).await
        }
        Command::Drill(DrillCmd::Kill { profile }) => {
            drill_kill(&client(&cli)?, profile.clone(), out).await
        }
        Command::Image(cmd) => image(&client(&cli)?, cmd, out).await,
        Command::Artifact(cmd) => artifact(&client(&cli)?, cmd, out).await,
        Command::Journal(cmd) => {
            let config = config_path(&cli)?;
            crate::journal::run(|| client(&cli), config.as_deref(), cmd, out).await
        }
        Command::Creds(cmd) => crate::creds::run(&client(&cli)?, cmd, out).await,
        Command::Model(cmd) => crate::model::run(&client(&cli)?, cmd, out).await,
        Command::Approvals(cmd) => crate::human::approvals(&client(&cli)?, cmd, out).await,
        Command::Approve { id, for_, note } => {
            crate::human::approve(&client(&cli)?, id, for_.as_deref(), note.as_deref(), out).await
        }
        Command::Deny { id, reason } => crate::human::deny(&client(&cli)?, id, reason, out).await,
        Command::Plan(cmd) => crate::human::plan(&client(&cli)?, cmd, out).await,
        Command::Policy(cmd) => crate::human::policy(config_path(&cli)?.as_deref(), cmd, out),
        Command::Report(cmd) => crate::model::report(&client(&cli)?, cmd, out).await,
        Command::Pr(cmd) => crate::pr::run(&client(&cli)?, cmd, out).await,
        Command::Scan(a) => crate::scan::run(a, config_path(&cli)?.as_deref(), out),
        Command::Login(a) => crate::login::login(&client(&cli)?, a, out).await,
        Command::Logout => crate::login::logout(out),
        Command::Whoami => crate::login::whoami(&client(&cli)?, out).await,
        Command::Token(cmd) => crate::token::run(&client(&cli)?, cmd, out).await,
        Command::Session(cmd) => session(&client(&cli)?, cmd, out).await,
        Command::Run(a) if a.agent.is_some() => {
            crate::agents::run_agent(&client(&cli)?, a, out).await
        }
        Command::Run(a) => run_cmd(&client(&cli)?, &a.create, &a.opts, &a.cmd, out).await,
        Command::Mcp(a) => crate::mcp::run(client(&cli)?, cli.url.as_deref(), a, out).await,
    }
}

// ---------------------------------------------------------------- sessions

async fn session(c: &Client, cmd: &SessionCmd, out: Out) -> Result<i32> {
    match cmd {
        SessionCmd::Create(a) => {
            let body = create_body(a)?;
            let (info, raw) = create(c, &body, out).await?;
            if out.json {
                out.json_value(&raw);
            } else {
                out.text(info.id.as_str());
            }
            Ok(0)
        }
        SessionCmd::List { all } => {
            let path = if *all {
                "/v1/sessions?all=true"
            } else {
                "/v1/sessions"
            };
            let (list, raw) = c.get::<Vec<SessionInfo>>(path).await?;
            if out.json {
                out.json_value(&raw);
            } else if list.is_empty() {
                out.note(if *all {
                    "no sessions"
                } else {
                    "no live sessions (see all with `brig session list --all`)"
                });
            } else {
                out.text(&sessions_table(&list, *all));
            }
            Ok(0)
        }
        SessionCmd::Show { id } => {
            let id = session_id(id)?;
            let (info, raw) = c.get::<SessionInfo>(&format!("/v1/sessions/{id}")).await?;
            if out.json {
                out.json_value(&raw);
            } else {
                out.text(&session_details(&info));
                if let Some(g) = raw["git"].as_object() {
                    let s = |k: &str| g.get(k).and_then(|v| v.as_str()).unwrap_or("-");
                    out.text(&format!(
                        "git        {} at {} ({}), origin {}, pushes to {}…",
                        s("source"),
                        s("commit"),
                        s("base_branch"),
                        s("origin"),
                        s("bot_prefix")
                    ));
                }
                out.text(&denials_text(&raw["egress_denials"]));
            }
            Ok(0)
        }
        SessionCmd::Destroy { id } | SessionCmd::Kill { id } => {
            let id = session_id(id)?;
            let kill = matches!(cmd, SessionCmd::Kill { .. });
            let (method, path, verb) = if kill {
                (Method::POST, format!("/v1/sessions/{id}/kill"), "killing")
            } else {
                (Method::DELETE, format!("/v1/sessions/{id}"), "destroying")
            };
            let spin = Spinner::start(format!("{verb} {id}"), !out.json && !out.quiet);
            let r = c.call::<SessionSummary, ()>(method, &path, None).await;
            spin.stop().await;
            let (summary, raw) = r?;
            if out.json {
                out.json_value(&raw);
            } else {
                out.text(&summary_text(&summary));
            }
            Ok(0)
        }
        SessionCmd::Exec(a) => {
            let id = session_id(&a.id)?;
            let req = exec_request(&a.opts, a.cmd.clone())?;
            if out.json {
                let (res, raw) = exec_buffered(c, &id, req, &a.opts).await?;
                out.json_value(&raw);
                return Ok(res.status.shell_code());
            }
            exec_attached(c, &id, req, &a.opts, out).await
        }
        SessionCmd::Shell { id } => {
            let id = session_id(id)?;
            shell(c, &id, out).await
        }
    }
}

fn session_id(s: &str) -> Result<String> {
    s.parse::<brig_core::SessionId>().map(String::from)
}

/// The create request, with local paths made absolute (the server resolves
/// nothing relative to its own working directory).
pub(crate) fn create_body(a: &CreateArgs) -> Result<CreateSession> {
    Ok(CreateSession {
        task: a.task.clone(),
        repo: a.repo.as_deref().map(repo_arg).transpose()?,
        upload: a
            .upload
            .as_deref()
            .map(|p| local_dir("--upload", p))
            .transpose()?,
        profile: a.profile.clone(),
        image: a.image.clone(),
        runtime: a.runtime.clone(),
        cpus: a.cpus,
        memory: a.memory.clone(),
        pids: a.pids,
        disk: a.disk.clone(),
        idle: a.idle.clone(),
        timebox: a.timebox.clone(),
        human: Some(local_human()),
        git_ref: a.git_ref.clone(),
        sparse: a.sparse.clone(),
        depth: a.depth,
        drill: false,
    })
}

/// `--repo`: a path (made absolute, it must exist) or a `[repos.NAME]`
/// of brig.toml (a bare name: no '/', and no such directory here).
fn repo_arg(p: &Path) -> Result<String> {
    let is_name = p
        .to_str()
        .is_some_and(|r| !r.is_empty() && !r.contains('/') && r != "." && r != ".." && !p.exists());
    if is_name {
        return Ok(p.to_string_lossy().into_owned());
    }
    local_dir("--repo", p)
}

fn local_dir(flag: &str, p: &Path) -> Result<String> {
    let abs = std::fs::canonicalize(p).map_err(|e| {
        Error::invalid(format!("{flag} {}: {e}", p.display())).hint(format!(
            "{flag} takes a local directory, copied into /workspace"
        ))
    })?;
    if !abs.is_dir() {
        return Err(
            Error::invalid(format!("{flag} {} is not a directory", p.display())).hint(format!(
                "{flag} takes a local directory, copied into /workspace"
            )),
        );
    }
    abs.into_os_string().into_string().map_err(|p| {
        Error::invalid(format!(
            "{flag} {} is not valid UTF-8",
            Path::new(&p).display()
        ))
        .hint("rename the directory, or pass a parent whose path is UTF-8")
    })
}

/// The human behind the session until OIDC lands: the local user (the one
/// who ran sudo, if any).
pub fn local_human() -> String {
    for var in ["SUDO_USER", "USER", "LOGNAME"] {
        if let Ok(v) = std::env::var(var) {
            if !v.is_empty() {
                return v;
            }
        }
    }
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => u.name,
        _ => format!("uid:{uid}"),
    }
}

pub async fn create(
    c: &Client,
    body: &CreateSession,
    out: Out,
) -> Result<(SessionInfo, serde_json::Value)> {
    // Over TCP the session is the caller's own: only the local
    // administrator on the socket names a human (the server refuses others).
    let mut body = body.clone();
    if !c.is_local() {
        body.human = None;
    }
    let body = &body;
    let shown = !out.json && !out.quiet && std::io::stderr().is_terminal();
    if !shown {
        return c
            .call::<SessionInfo, _>(Method::POST, "/v1/sessions", Some(body))
            .await;
    }
    // On a terminal: what it is doing (a checkout's git progress among it).
    let message = std::sync::Arc::new(std::sync::Mutex::new("starting sandbox".to_string()));
    let spin = Spinner::start_shared(message.clone(), true);
    let r = c
        .call_lines(
            Method::POST,
            "/v1/sessions?progress=true",
            Some(body),
            |v| {
                if let (Some(p), Ok(mut m)) = (v["progress"].as_str(), message.lock()) {
                    *m = p.chars().take(100).collect();
                }
            },
        )
        .await;
    spin.stop().await;
    let last = r?;
    if last["status"].as_u64() == Some(201) {
        let raw = last["session"].clone();
        return Ok((crate::client::decode("/v1/sessions", &raw)?, raw));
    }
    Err(serde_json::from_value::<Error>(last["error"].clone())
        .unwrap_or_else(|_| Error::internal(format!("unexpected answer from brig: {last}"))))
}

fn exec_request(o: &ExecOpts, argv: Vec<String>) -> Result<ExecRequest> {
    let req = ExecRequest {
        argv,
        env: o.env.clone(),
        cwd: o.cwd.clone(),
        tty: None,
        timeout_ms: o
            .timeout
            .as_deref()
            .map(parse_duration)
            .transpose()?
            .map(|d| d.as_millis() as u64),
        stdin: None,
    };
    req.validate()?;
    Ok(req)
}

/// Whether to forward our stdin: when it is piped/redirected, or with -i.
fn forward_stdin(o: &ExecOpts) -> bool {
    o.interactive || !std::io::stdin().is_terminal()
}

/// `--json`: the buffered API, so stdout is exactly one JSON document.
async fn exec_buffered(
    c: &Client,
    id: &str,
    mut req: ExecRequest,
    o: &ExecOpts,
) -> Result<(ExecResult, serde_json::Value)> {
    if o.tty {
        return Err(Error::invalid("--tty cannot be combined with --json")
            .hint("a terminal session has no machine-readable output; drop one of them"));
    }
    if forward_stdin(o) {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        req.stdin = Some(String::from_utf8(buf).map_err(|_| {
            Error::invalid("stdin is not UTF-8; --json exec takes text on stdin")
                .hint("drop --json to stream binary stdin")
        })?);
    }
    c.call::<ExecResult, _>(Method::POST, &format!("/v1/sessions/{id}/exec"), Some(&req))
        .await
}

/// Attached exec for humans: live output, stdin, signals, optional PTY.
async fn exec_attached(
    c: &Client,
    id: &str,
    mut req: ExecRequest,
    o: &ExecOpts,
    out: Out,
) -> Result<i32> {
    let size = if o.tty {
        Some(term::window_size().unwrap_or((24, 80)))
    } else {
        None
    };
    req.tty = size;
    if o.tty {
        if let Ok(t) = std::env::var("TERM") {
            if !req.env.iter().any(|(k, _)| k == "TERM") {
                req.env.push(("TERM".into(), t));
            }
        }
    }
    let stream = c.attach(id, &req).await?;
    // Raw mode only with a PTY: then ^C is a byte for the remote terminal.
    let raw = if o.tty { RawMode::enable()? } else { None };
    let outcome = attach::run(
        stream,
        AttachOpts {
            stdin: o.tty || forward_stdin(o),
            signals: true,
            tty: o.tty,
        },
    )
    .await;
    drop(raw);
    let outcome = outcome?;
    report_outcome(&outcome, o, out);
    Ok(outcome.exit_code())
}

fn report_outcome(outcome: &Outcome, o: &ExecOpts, out: Out) {
    match outcome {
        Outcome::SpawnFailed { layer, error } => out.error(
            &Error::new(
                ErrorKind::Runtime,
                format!("the command could not start ({layer}): {error}"),
            )
            .hint("check the command's path and that it exists in the session's image"),
        ),
        Outcome::Exited(s) if s.timed_out => out.note(&format!(
            "brig: the command timed out after {} and was killed",
            o.timeout.as_deref().unwrap_or("its timeout")
        )),
        _ => {}
    }
}

async fn shell(c: &Client, id: &str, out: Out) -> Result<i32> {
    let opts = ExecOpts {
        tty: true,
        interactive: true,
        timeout: None,
        env: vec![],
        cwd: None,
    };
    // bash as a login shell when the image has it, else sh.
    let argv = vec![
        "/bin/sh".into(),
        "-c".into(),
        "if [ -x /bin/bash ]; then exec /bin/bash -l; else exec /bin/sh -l; fi".into(),
    ];
    let req = exec_request(&opts, argv)?;
    exec_attached(c, id, req, &opts, out).await
}

// ---------------------------------------------------------------- run

/// `brig run`: create, exec attached, always destroy (also on Ctrl-C), then
/// a summary; the exit code is the command's.
async fn run_cmd(
    c: &Client,
    create_args: &CreateArgs,
    opts: &ExecOpts,
    argv: &[String],
    out: Out,
) -> Result<i32> {
    let body = create_body(create_args)?;
    let req = exec_request(opts, argv.to_vec())?;
    let started = Instant::now();

    // A Ctrl-C while the sandbox starts must not leave it behind: let the
    // create finish, then destroy what it made.
    let create_fut = create(c, &body, out);
    tokio::pin!(create_fut);
    let mut interrupted = false;
    let created = loop {
        tokio::select! {
            r = &mut create_fut => break r,
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                out.note("brig: interrupted; destroying the session as soon as it exists");
            }
        }
    };
    let (info, _) = created?;
    let id = info.id.to_string();
    if interrupted {
        let _ = destroy_quietly(c, &id).await;
        return Ok(130);
    }

    let result: Result<(i32, Option<serde_json::Value>)> = if out.json {
        // Ctrl-C ends the wait; the destroy below kills the command.
        tokio::select! {
            r = exec_buffered(c, &id, req, opts) => r.map(|(res, raw)| (res.status.shell_code(), Some(raw))),
            _ = tokio::signal::ctrl_c() => Ok((130, None)),
        }
    } else {
        exec_attached(c, &id, req, opts, out)
            .await
            .map(|code| (code, None))
    };

    let summary = destroy_quietly(c, &id).await;
    let (code, exec_raw) = match result {
        Ok(r) => r,
        Err(e) => {
            out.error(&e);
            (EXIT_BRIG_FAILED, None)
        }
    };
    let duration = started.elapsed();
    if out.json {
        let mut v = serde_json::json!({
            "session": id,
            "image": info.image,
            "image_digest": info.image_digest,
            "runtime": info.runtime,
            "exit_code": code,
            "duration_ms": duration.as_millis() as u64,
            "exec": exec_raw,
        });
        match &summary {
            Ok((_, raw)) => v["summary"] = raw.clone(),
            Err(e) => v["destroy_error"] = serde_json::to_value(e).unwrap_or_default(),
        }
        out.json_value(&v);
    } else if !out.quiet {
        eprintln!(
            "brig: session {id} · image {}@{} · runtime {} · exit {code} · {}{}",
            info.image,
            short_digest(&info.image_digest),
            info.runtime,
            format_duration(duration),
            match &summary {
                Ok((s, _)) if s.workspace_shredded => " · workspace shredded".to_string(),
                Ok(_) => " · workspace NOT verified shredded".to_string(),
                Err(_) => String::new(),
            }
        );
    }
    if let Err(e) = &summary {
        if !out.json {
            out.error(&e.clone().context(format!("destroying session {id}")));
        }
        // The command's exit code would hide a session left running.
        return Ok(EXIT_BRIG_FAILED);
    }
    Ok(code)
}

/// Destroy gracefully, falling back to kill.
pub(crate) async fn destroy_quietly(
    c: &Client,
    id: &str,
) -> Result<(SessionSummary, serde_json::Value)> {
    match c
        .call::<SessionSummary, ()>(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await
    {
        Ok(s) => Ok(s),
        Err(e) if e.kind == ErrorKind::NotFound || e.kind == ErrorKind::Conflict => Err(e),
        Err(_) => {
            c.call::<SessionSummary, ()>(Method::POST, &format!("/v1/sessions/{id}/kill"), None)
                .await
        }
    }
}

// ---------------------------------------------------------------- others

async fn drill_kill(c: &Client, profile: Option<String>, out: Out) -> Result<i32> {
    #[derive(serde::Deserialize)]
    struct Part {
        part: String,
        live_before: usize,
        dead_ms: Option<f64>,
    }
    #[derive(serde::Deserialize)]
    struct Report {
        session: String,
        parts: Vec<Part>,
        target_ms: u64,
        passed: bool,
    }
    let spin = Spinner::start(
        "kill drill: starting a test session with live parts",
        !out.json && !out.quiet,
    );
    let body = serde_json::json!({ "profile": profile, "human": local_human() });
    let res = c
        .call::<Report, _>(Method::POST, "/v1/drill/kill", Some(&body))
        .await;
    drop(spin);
    let (r, raw) = res?;
    if out.json {
        out.json_value(&raw);
    } else {
        let mut t = format!(
            "kill drill on session {} (target: every part dead within {} ms)\n",
            r.session, r.target_ms
        );
        for p in &r.parts {
            let dead = match p.dead_ms {
                Some(ms) => format!("dead in {ms:.1} ms"),
                None => "NOT DEAD after 10 s".to_string(),
            };
            let flag = if p.dead_ms.is_some_and(|ms| ms <= r.target_ms as f64) {
                "ok"
            } else {
                "FAIL"
            };
            t.push_str(&format!(
                "  {:<12} {:>3} live  {dead:<24} {flag}\n",
                p.part, p.live_before
            ));
        }
        t.push_str(if r.passed {
            "passed"
        } else {
            "FAILED: a part outlived the target"
        });
        out.text(&t);
    }
    Ok(if r.passed { 0 } else { 1 })
}

async fn kill(c: &Client, body: serde_json::Value, out: Out) -> Result<i32> {
    #[derive(serde::Deserialize)]
    struct Killed {
        killed: Vec<String>,
        duration_ms: u64,
    }
    let (k, raw) = c
        .call::<Killed, _>(Method::POST, "/v1/kill", Some(&body))
        .await?;
    if out.json {
        out.json_value(&raw);
    } else {
        out.text(&format!(
            "killed {} session{} in {} ms{}",
            k.killed.len(),
            if k.killed.len() == 1 { "" } else { "s" },
            k.duration_ms,
            if k.killed.is_empty() {
                String::new()
            } else {
                format!(": {}", k.killed.join(" "))
            }
        ));
    }
    Ok(0)
}

async fn image(c: &Client, cmd: &ImageCmd, out: Out) -> Result<i32> {
    match cmd {
        ImageCmd::List => {
            let (_, raw) = c.get::<Vec<serde_json::Value>>("/v1/images").await?;
            if out.json {
                out.json_value(&raw);
                return Ok(0);
            }
            let list: Vec<brig_sandbox::Image> = decode("/v1/images", &raw)?;
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|i| vec![i.name.clone(), i.digest.clone()])
                .collect();
            out.text(&term::table(&["NAME", "DIGEST"], &rows));
            Ok(0)
        }
        ImageCmd::Import { path, name } => {
            let abs = std::fs::canonicalize(path).map_err(|e| {
                Error::invalid(format!("image {}: {e}", path.display()))
                    .hint("pass an OCI image layout directory or a `docker save` tarball")
            })?;
            let abs = abs.to_str().ok_or_else(|| {
                Error::invalid(format!("image path {} is not valid UTF-8", abs.display()))
            })?;
            let body = serde_json::json!({ "path": abs, "name": name });
            let spin = Spinner::start(format!("importing {name}"), !out.json && !out.quiet);
            let r = c
                .call::<brig_sandbox::Image, _>(Method::POST, "/v1/images/import", Some(&body))
                .await;
            spin.stop().await;
            let (img, raw) = r?;
            if out.json {
                out.json_value(&raw);
            } else {
                out.text(&format!("{} {}", img.name, img.digest));
            }
            Ok(0)
        }
        ImageCmd::Build {
            dir,
            agent,
            profile,
            rebuild,
        } => {
            crate::recipes::build(
                c,
                dir.as_deref(),
                agent.as_deref(),
                profile.clone(),
                *rebuild,
                out,
            )
            .await
        }
    }
}

// --------------------------------------------------------------- artifacts

/// A path segment, percent-encoded (everything but RFC 3986 unreserved).
pub(crate) fn path_segment(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

async fn artifact(c: &Client, cmd: &ArtifactCmd, out: Out) -> Result<i32> {
    match cmd {
        ArtifactCmd::Url { session, ttl, name } => {
            let id = session_id(session)?;
            brig_server::artifacts::check_name(name)?;
            let body = serde_json::json!({ "name": name, "ttl": ttl });
            let raw = c
                .call_value(
                    Method::POST,
                    &format!("/v1/sessions/{id}/artifacts"),
                    Some(&body),
                )
                .await?;
            if out.json {
                out.json_value(&raw);
            } else {
                out.text(raw["url"].as_str().unwrap_or_default());
                out.note(&format!(
                    "single use, until {}; inside the session: curl -fsS -T FILE URL",
                    raw["expires_at"].as_str().unwrap_or("?")
                ));
            }
            Ok(0)
        }
        ArtifactCmd::List { session } => {
            let id = session_id(session)?;
            let (list, raw) = c
                .get::<Vec<serde_json::Value>>(&format!("/v1/sessions/{id}/artifacts"))
                .await?;
            if out.json {
                out.json_value(&raw);
            } else if list.is_empty() {
                out.note(&format!("session {id} has no artifacts"));
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|a| {
                        vec![
                            a["name"].as_str().unwrap_or_default().to_string(),
                            format_size(a["size"].as_u64().unwrap_or(0)),
                            a["sha256"].as_str().unwrap_or_default().to_string(),
                            a["uploaded_at"].as_str().unwrap_or_default().to_string(),
                        ]
                    })
                    .collect();
                out.text(&term::table(&["NAME", "SIZE", "SHA256", "UPLOADED"], &rows));
            }
            Ok(0)
        }
        ArtifactCmd::Get {
            session,
            name,
            output,
        } => {
            let id = session_id(session)?;
            brig_server::artifacts::check_name(name)?;
            let path = format!("/v1/sessions/{id}/artifacts/{}", path_segment(name));
            let mut hash = brig_server::artifacts::Sha256Hex::default();
            let (headers, n, written) = match output {
                Some(p) => {
                    let dir = p
                        .parent()
                        .filter(|d| !d.as_os_str().is_empty())
                        .unwrap_or(Path::new("."));
                    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| {
                        Error::invalid(format!("cannot write in {}: {e}", dir.display()))
                    })?;
                    let mut f =
                        tokio::fs::File::from_std(tmp.reopen().map_err(|e| {
                            Error::internal(format!("{}: {e}", tmp.path().display()))
                        })?);
                    let (h, n) = c.download(&path, &mut f, |b| hash.update(b)).await?;
                    (h, n, Some(tmp))
                }
                None => {
                    let mut so = tokio::io::stdout();
                    let (h, n) = c.download(&path, &mut so, |b| hash.update(b)).await?;
                    (h, n, None)
                }
            };
            let got = hash.finish();
            let want = headers
                .get("x-brig-sha256")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            if got != want {
                return Err(Error::internal(format!(
                    "artifact {name:?}: received {n} bytes with SHA-256 {got}, brig recorded {want}"
                ))
                .hint("nothing was written; fetch it again"));
            }
            if let (Some(tmp), Some(p)) = (written, output) {
                tmp.persist(p).map_err(|e| {
                    Error::internal(format!("cannot write {}: {}", p.display(), e.error))
                })?;
                if out.json {
                    out.json_value(&serde_json::json!({
                        "name": name, "size": n, "sha256": got, "path": p,
                    }));
                } else {
                    out.note(&format!(
                        "{} ({}, sha256 {got})",
                        p.display(),
                        format_size(n)
                    ));
                }
            }
            Ok(0)
        }
    }
}

async fn doctor(out: Out) -> Result<i32> {
    // Probing forks and reads /proc: keep it off the async workers.
    let report = tokio::task::spawn_blocking(brig_sandbox::doctor::probe)
        .await
        .map_err(|e| Error::internal(format!("the host probe failed: {e}")))?;
    let native = report
        .runtimes
        .iter()
        .any(|r| r.runtime == "native" && r.works);
    if out.json {
        out.json_value(&serde_json::to_value(&report).map_err(|e| Error::internal(e.to_string()))?);
    } else {
        let mut s = String::from("Host checks\n");
        let rows: Vec<Vec<String>> = report
            .checks
            .iter()
            .map(|c| vec![mark(c.ok), c.name.clone(), c.detail.clone()])
            .collect();
        s.push_str(&indent(&term::table(&["", "CHECK", "DETAIL"], &rows)));
        s.push_str("\nRuntimes\n");
        let rows: Vec<Vec<String>> = report
            .runtimes
            .iter()
            .map(|r| vec![mark(r.works), r.runtime.clone(), r.detail.clone()])
            .collect();
        s.push_str(&indent(&term::table(&["", "RUNTIME", "DETAIL"], &rows)));
        s.push('\n');
        s.push_str(if native {
            "The native runtime works on this host."
        } else {
            "The native runtime cannot run here: brig will refuse to start sessions on it (fail closed)."
        });
        out.text(&s);
    }
    Ok(if native {
        0
    } else {
        ErrorKind::GuardUnavailable.exit_code()
    })
}

fn mark(ok: bool) -> String {
    if ok { "✓" } else { "✗" }.to_string()
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

// ---------------------------------------------------------------- rendering

fn sessions_table(list: &[SessionInfo], all: bool) -> String {
    let mut headers = vec![
        "ID", "STATE", "TASK", "HUMAN", "RUNTIME", "IMAGE", "EXECS", "AGE",
    ];
    if all {
        headers.push("ENDED");
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let mut r = vec![
                s.id.to_string(),
                s.state.as_str().to_string(),
                s.task.to_string(),
                s.human.clone(),
                s.runtime.clone(),
                s.image.clone(),
                s.exec_count.to_string(),
                age(&s.created_at),
            ];
            if all {
                r.push(s.end_reason.clone().unwrap_or_default());
            }
            r
        })
        .collect();
    term::table(&headers, &rows)
}

fn session_details(s: &SessionInfo) -> String {
    let l = &s.limits;
    let mut rows: Vec<(&str, String)> = vec![
        ("id", s.id.to_string()),
        ("state", s.state.as_str().to_string()),
        ("task", s.task.to_string()),
        ("human", s.human.clone()),
        ("principal", s.principal.clone()),
        ("profile", s.profile.clone()),
        ("runtime", s.runtime.clone()),
        ("image", format!("{} ({})", s.image, s.image_digest)),
    ];
    if let Some(r) = &s.repo {
        rows.push(("repo", r.clone()));
    }
    rows.push((
        "limits",
        format!(
            "cpus {}, memory {}, pids {}, disk {}, tmp {}, idle {}, timebox {}",
            l.cpu_millis as f64 / 1000.0,
            format_size(l.memory_bytes),
            l.pids,
            format_size(l.disk_bytes),
            format_size(l.tmp_bytes),
            format_duration(std::time::Duration::from_secs(l.idle_secs)),
            format_duration(std::time::Duration::from_secs(l.timebox_secs)),
        ),
    ));
    rows.push(("layers", s.layers.join(", ")));
    rows.push(("execs", s.exec_count.to_string()));
    rows.push((
        "created",
        format!("{} ({} ago)", s.created_at, age(&s.created_at)),
    ));
    if let Some(t) = &s.started_at {
        rows.push(("started", t.clone()));
    }
    if let Some(t) = &s.last_activity_at {
        rows.push(("active", format!("{t} ({} ago)", age(t))));
    }
    if let Some(t) = &s.ended_at {
        rows.push((
            "ended",
            match &s.end_reason {
                Some(r) => format!("{t} ({r})"),
                None => t.clone(),
            },
        ));
    }
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<w$}  {v}\n"))
        .collect()
}

/// The session's recent egress denials, as the agent was told them.
fn denials_text(denials: &serde_json::Value) -> String {
    let Some(list) = denials.as_array().filter(|l| !l.is_empty()) else {
        return String::new();
    };
    let mut t = format!("\negress denied ({}, newest first):\n", list.len());
    for d in list {
        let s = |k: &str| d[k].as_str().unwrap_or("").to_string();
        let what = match (s("method"), s("path")) {
            (m, p) if !m.is_empty() && !p.is_empty() => {
                format!("{m} {}:{}{p}", s("host"), d["port"])
            }
            _ => format!("{}:{}", s("host"), d["port"]),
        };
        t.push_str(&format!(
            "  {}  {}  {what}  rule={}\n",
            s("time"),
            s("action"),
            s("rule")
        ));
        if !s("reason").is_empty() {
            t.push_str(&format!("      {}\n", s("reason")));
        }
        for line in s("how_to_request_access").lines() {
            t.push_str(&format!("      {line}\n"));
        }
    }
    t
}

pub fn summary_text(s: &SessionSummary) -> String {
    let i = &s.session;
    let mut t = format!(
        "session {} {} after {}: {} exec{} ({} failed), workspace {}",
        i.id,
        i.state.as_str(),
        format_duration(std::time::Duration::from_millis(s.duration_ms)),
        s.execs,
        if s.execs == 1 { "" } else { "s" },
        s.failed_execs,
        if s.workspace_shredded {
            "shredded"
        } else {
            "NOT verified shredded"
        }
    );
    if !s.blocked.is_empty() {
        t.push_str(&format!("\nblocked: {}", s.blocked.join(", ")));
    }
    t
}

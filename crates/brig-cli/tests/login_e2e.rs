//! `brig login` end to end (issue 7): the real `brig` binary runs the
//! device flow against a real OpenID provider on loopback (brig-identity's
//! TestIdp), the test approves the user code while the CLI polls, and the
//! stored login then authenticates `brig whoami`, `brig session create`
//! and `brig token` over TCP to a real `brig serve`.

mod server_support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use brig_identity::testing::{TestIdp, TestUser};
use serde_json::Value;
use server_support::Srv;

struct Cli<'a> {
    url: String,
    config_home: &'a Path,
}

impl Cli<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_brig"));
        c.args(args)
            .arg("--url")
            .arg(&self.url)
            .env("XDG_CONFIG_HOME", self.config_home)
            .env_remove("BRIG_TOKEN")
            .env_remove("BRIG_OIDC_ISSUER")
            .env_remove("BRIG_OIDC_CLIENT_ID")
            .env_remove("BRIG_OIDC_CA_FILE")
            .env_remove("BRIG_SOCKET")
            .env_remove("BRIG_CONFIG");
        c
    }
    /// Exit code, stdout, stderr.
    fn run(&self, args: &[&str], token: Option<&str>) -> (i32, String, String) {
        let mut c = self.cmd(args);
        if let Some(t) = token {
            c.env("BRIG_TOKEN", t);
        }
        let o = c.output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
    fn json(&self, args: &[&str], token: Option<&str>) -> Value {
        let (code, out, err) = self.run(args, token);
        assert_eq!(code, 0, "brig {args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_the_device_flow_then_whoami_sessions_and_tokens_over_tcp() {
    require_root!();
    let idp = TestIdp::start().await;
    let oidc = idp.config();
    let srv = Srv::start_with(|cfg| {
        cfg.tcp = Some(brig_server::config::TcpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token_file: None,
        });
        cfg.identity.oidc = Some(oidc);
    })
    .await;
    let addr = srv.server.as_ref().unwrap().tcp_addr().unwrap();
    let home = tempfile::tempdir().unwrap();
    let cli = Cli {
        url: format!("http://{addr}"),
        config_home: home.path(),
    };
    let alice = TestUser::new("alice").with_groups(&["team-a"]);
    let alice_id = format!("oidc:{}#alice", idp.issuer());

    // Not logged in: the server refuses, and says how to authenticate.
    let (code, _, err) = cli.run(&["whoami"], None);
    assert_eq!(code, 8, "unauthorized: {err}");
    assert!(err.contains("bearer token"), "{err}");

    // brig login: issuer and client id from the server, the IdP's CA given.
    let ca = idp.ca_file().to_str().unwrap().to_string();
    let mut child = cli
        .cmd(&["login", "--ca-file", &ca])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if let Some(code) = line.split("enter the code ").nth(1) {
                let _ = tx.send(code.trim().to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let user_code =
        tokio::task::spawn_blocking(move || rx.recv_timeout(std::time::Duration::from_secs(30)))
            .await
            .unwrap()
            .expect("brig login prints the user code");
    // The CLI is polling now; the human approves at the IdP.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        idp.approve(&user_code, &alice),
        "unknown user code {user_code}"
    );
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let err = reader.join().unwrap();
    assert!(out.status.success(), "brig login: {err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("logged in as alice@example.test ({alice_id})")),
        "{stdout}"
    );
    let polls = idp.device_polls(&user_code).unwrap();
    assert!(polls.polls >= 1 && polls.too_early == 0, "{polls:?}");

    // Kept private, with the ID and refresh tokens.
    let creds_path = home.path().join("brig/credentials.json");
    let mode = std::fs::metadata(&creds_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let creds: Value =
        serde_json::from_str(&std::fs::read_to_string(&creds_path).unwrap()).unwrap();
    assert_eq!(creds["principal"], alice_id);
    assert!(creds["refresh_token"].is_string());
    let first_id_token = creds["id_token"].as_str().unwrap().to_string();

    // whoami over TCP with the stored login.
    let me = cli.json(&["whoami", "--json"], None);
    assert_eq!(
        (&me["id"], &me["via"], &me["groups"]),
        (
            &Value::from(alice_id.clone()),
            &Value::from("oidc"),
            &serde_json::json!(["team-a"])
        )
    );
    let (code, text, _) = cli.run(&["whoami"], None);
    assert_eq!(code, 0);
    assert!(
        text.starts_with(&format!("{alice_id} (alice@example.test, via oidc)")),
        "{text}"
    );

    // A session created over TCP is alice's, whatever the local user is.
    let s = cli.json(&["session", "create", "--task", "IDN-1", "--json"], None);
    assert_eq!(s["human"], alice_id, "{s}");
    let id = s["id"].as_str().unwrap().to_string();
    let (code, _, err) = cli.run(&["session", "destroy", &id], None);
    assert_eq!(code, 0, "{err}");

    // An expired login is refreshed with the refresh token, then used.
    let mut c = creds.clone();
    c["expires_at"] = Value::from(0);
    std::fs::write(&creds_path, serde_json::to_vec(&c).unwrap()).unwrap();
    let me = cli.json(&["whoami", "--json"], None);
    assert_eq!(me["id"], alice_id);
    let refreshed: Value =
        serde_json::from_str(&std::fs::read_to_string(&creds_path).unwrap()).unwrap();
    // The refresh grant was used: the IdP rotates the refresh token. (The
    // ID token itself can be byte-identical when both were minted in the
    // same second: RS256 signatures are deterministic.)
    assert_ne!(refreshed["refresh_token"], creds["refresh_token"]);
    assert!(refreshed["id_token"].is_string() && !first_id_token.is_empty());
    assert!(refreshed["expires_at"].as_i64().unwrap() > 0);
    assert_eq!(
        std::fs::metadata(&creds_path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A credentials file others can read is refused, not used.
    std::fs::set_permissions(&creds_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = cli.run(&["whoami"], None);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("readable by other users"), "{err}");
    std::fs::set_permissions(&creds_path, std::fs::Permissions::from_mode(0o600)).unwrap();

    // API tokens: created with the login, shown once, used as BRIG_TOKEN.
    let (code, pat, err) = cli.run(&["token", "create", "ci-nightly", "--ttl", "1h"], None);
    assert_eq!(code, 0, "{err}");
    let pat = pat.trim().to_string();
    assert!(pat.starts_with("brig_pat_") && pat.len() == 52, "{pat}");
    assert!(err.contains("shown only now"), "{err}");
    let me = cli.json(&["whoami", "--json"], Some(&pat));
    assert_eq!(
        (&me["id"], &me["via"]),
        (&Value::from(alice_id.clone()), &Value::from("token"))
    );
    let list = cli.json(&["token", "list", "--json"], None);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert!(!serde_json::to_string(&list).unwrap().contains(&pat));
    let tid = list[0]["id"].as_str().unwrap().to_string();
    // A token cannot mint tokens (denied: exit 9).
    let (code, _, err) = cli.run(&["token", "create", "more"], Some(&pat));
    assert_eq!(code, 9, "{err}");
    let r = cli.json(&["token", "revoke", &tid, "--json"], None);
    assert_eq!(r["state"], "revoked");
    let (code, _, err) = cli.run(&["whoami"], Some(&pat));
    assert_eq!(code, 8, "{err}");

    // Logged out: nothing is sent, the server refuses.
    let (code, out, _) = cli.run(&["logout"], None);
    assert_eq!((code, out.trim()), (0, "logged out"));
    assert!(!creds_path.exists());
    let (code, _, _) = cli.run(&["whoami"], None);
    assert_eq!(code, 8);
    srv.stop().await;
}

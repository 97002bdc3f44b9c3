//! Upload URLs end to end (issue 4): the human issues a URL through the
//! API, the agent inside a real `native` session uploads with `curl -T`
//! through the session's egress proxy (HTTP_PROXY), and the human gets the
//! identical bytes back. Single use, expiry, the session binding, names,
//! the size cap, and the token's absence from the journal and the logs.

mod server_support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use server_support::*;

/// 1 MiB cap in these tests.
const CAP: u64 = 1 << 20;

/// Deterministic content the test can rebuild: `seq 1 N` (N = 60000 is
/// about 350 KB).
fn seq_bytes(n: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.extend_from_slice(format!("{i}\n").as_bytes());
    }
    v
}

async fn issue(srv: &Srv, id: &str, name: &str, ttl: &str) -> (u16, Value) {
    srv.call(
        "POST",
        &format!("/v1/sessions/{id}/artifacts"),
        Some(json!({ "name": name, "ttl": ttl })),
    )
    .await
}

/// Run `curl -T FILE URL` in the session; (HTTP status, body).
async fn upload(srv: &Srv, id: &str, file: &str, url: &str) -> (u16, String) {
    let r = srv
        .exec(
            id,
            &[
                "curl",
                "-sS",
                "-o",
                "/tmp/resp",
                "-w",
                "%{http_code}",
                "-T",
                file,
                url,
            ],
        )
        .await;
    let code: u16 = r["stdout"]
        .as_str()
        .unwrap_or("")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl: {r}"));
    let body = srv.exec(id, &["cat", "/tmp/resp"]).await;
    (code, body["stdout"].as_str().unwrap_or("").to_string())
}

fn token_of(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_string()
}

fn sha256_hex(b: &[u8]) -> String {
    let mut h = brig_server::artifacts::Sha256Hex::default();
    h.update(b);
    h.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_hands_over_an_artifact_once_and_only_through_its_own_session() {
    require_root!();
    let srv = Srv::start_with(|c| c.artifacts.max_size = CAP).await;
    let a = srv.create(json!({ "task": "ART-1" })).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = srv.create(json!({ "task": "ART-2" })).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = srv
        .exec(
            &a,
            &[
                "sh",
                "-c",
                "seq 1 60000 > /workspace/out.txt && head -c 2000000 /dev/zero > /workspace/big.bin",
            ],
        )
        .await;
    assert_eq!(r["status"]["code"], 0, "{r}");
    srv.exec(&b, &["sh", "-c", "echo other > /workspace/b.txt"])
        .await;
    let want = seq_bytes(60000);

    // A bad name is refused when the URL is asked for.
    for bad in ["../x", "a/b", ".hidden", ""] {
        let (s, v) = issue(&srv, &a, bad, "10m").await;
        assert_eq!(s, 400, "{bad:?}: {v}");
    }
    let (s, v) = issue(&srv, &a, "x", "forever").await;
    assert_eq!(s, 400, "{v}");

    // Issue, upload from inside A through the proxy, fetch back.
    let (s, v) = issue(&srv, &a, "out.txt", "10m").await;
    assert_eq!(s, 201, "{v}");
    let url = v["url"].as_str().unwrap().to_string();
    assert!(url.starts_with("http://artifacts.brig/v1/upload/"), "{url}");
    assert_eq!(v["max_size"], CAP);
    let token = token_of(&url);
    let (code, body) = upload(&srv, &a, "/workspace/out.txt", &url).await;
    assert_eq!(code, 201, "{body}");
    let rc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rc["sha256"], sha256_hex(&want), "{rc}");
    assert_eq!(rc["size"], want.len());

    let (s, got) = brig_server::client::request_raw(
        &srv.sock,
        "GET",
        &format!("/v1/sessions/{a}/artifacts/out.txt"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, 200);
    assert!(
        got == want,
        "the bytes differ ({} vs {})",
        got.len(),
        want.len()
    );
    let (s, list) = srv
        .call("GET", &format!("/v1/sessions/{a}/artifacts"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["name"], "out.txt");
    assert_eq!(list[0]["sha256"], sha256_hex(&want));
    assert_eq!(list[0]["size"], want.len());

    // A program that ignores HTTP_PROXY: brig's resolver answers the
    // artifact host, the connection is caught on port 80 and served the same.
    let (_, v) = issue(&srv, &a, "direct.txt", "10m").await;
    let url_direct = v["url"].as_str().unwrap().to_string();
    let r = srv
        .exec(
            &a,
            &[
                "curl",
                "--noproxy",
                "*",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-T",
                "/workspace/out.txt",
                &url_direct,
            ],
        )
        .await;
    assert_eq!(r["stdout"], "201", "{r}");

    // Single use.
    let (code, body) = upload(&srv, &a, "/workspace/out.txt", &url).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("already used"), "{body}");

    // Session B cannot use A's URL (a fresh one, never used).
    let (_, v) = issue(&srv, &a, "from-b.txt", "10m").await;
    let url_ab = v["url"].as_str().unwrap().to_string();
    let (code, body) = upload(&srv, &b, "/workspace/b.txt", &url_ab).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("another session"), "{body}");
    // A forged token (its MAC's last digit changed): 403.
    let last = if token.ends_with('0') { '1' } else { '0' };
    let forged = format!(
        "http://artifacts.brig/v1/upload/{}{last}",
        &token[..token.len() - 1]
    );
    let (code, _) = upload(&srv, &a, "/workspace/out.txt", &forged).await;
    assert_eq!(code, 403);

    // Expired.
    let (_, v) = issue(&srv, &a, "late.txt", "1s").await;
    let url_late = v["url"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (code, body) = upload(&srv, &a, "/workspace/out.txt", &url_late).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("expired"), "{body}");

    // Over the cap: 413, nothing kept (no file, no temp file, no record).
    let (_, v) = issue(&srv, &a, "big.bin", "10m").await;
    let url_big = v["url"].as_str().unwrap().to_string();
    let (code, body) = upload(&srv, &a, "/workspace/big.bin", &url_big).await;
    assert_eq!(code, 413, "{body}");
    let dir = srv.data().join("artifacts").join(&a);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, vec!["direct.txt".to_string(), "out.txt".to_string()]);
    let (_, list) = srv
        .call("GET", &format!("/v1/sessions/{a}/artifacts"), None)
        .await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let (s, _) = srv
        .call("GET", &format!("/v1/sessions/{a}/artifacts/big.bin"), None)
        .await;
    assert_eq!(s, 404);

    // Journaled: the URL, the upload with its hash, the proxy's request,
    // the refusals; and no token anywhere in the journal.
    // (The proxy's events reach the journal through a queue: wait for them.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let evs = loop {
        let (_, evs) = srv
            .call("GET", &format!("/v1/sessions/{a}/events"), None)
            .await;
        let n = evs
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "net.request" && e["details"]["host"] == "artifacts.brig")
            .count();
        if n >= 6 || tokio::time::Instant::now() > deadline {
            break evs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let evs = evs.as_array().unwrap();
    let of =
        |action: &str| -> Vec<&Value> { evs.iter().filter(|e| e["action"] == action).collect() };
    assert_eq!(of("artifact.url").len(), 5, "{evs:?}");
    let stored: Vec<_> = of("artifact.upload")
        .into_iter()
        .filter(|e| e["outcome"] == "success")
        .collect();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0]["details"]["sha256"], sha256_hex(&want));
    assert_eq!(stored[0]["details"]["name"], "out.txt");
    assert_eq!(stored[1]["details"]["name"], "direct.txt");
    assert!(
        of("net.request")
            .iter()
            .any(|e| e["details"]["via"] == "transparent" && e["rule"] == "artifact:upload"),
        "the transparent upload is not journaled"
    );
    assert!(
        of("net.dns")
            .iter()
            .any(|e| e["details"]["host"] == "artifacts.brig" && e["outcome"] == "success"),
        "the artifact host's DNS answer is not journaled"
    );
    let refused: Vec<_> = of("artifact.upload")
        .into_iter()
        .filter(|e| e["outcome"] == "denied")
        .map(|e| e["rule"].as_str().unwrap().to_string())
        .collect();
    for rule in ["artifact:used", "artifact:token", "artifact:size"] {
        assert!(refused.iter().any(|r| r == rule), "{rule}: {refused:?}");
    }
    let reqs: Vec<_> = of("net.request")
        .into_iter()
        .filter(|e| e["details"]["host"] == "artifacts.brig")
        .collect();
    assert!(reqs.len() >= 6, "{reqs:?}");
    assert!(reqs
        .iter()
        .all(|e| e["details"]["path"] == "/v1/upload/[token]"));
    assert!(reqs
        .iter()
        .any(|e| e["rule"] == "artifact:upload" && e["details"]["status"] == 201));
    let (_, b_evs) = srv
        .call("GET", &format!("/v1/sessions/{b}/events"), None)
        .await;
    let (_, all) = srv.call("GET", "/v1/journal", None).await;
    for (what, text) in [
        ("A's events", Value::Array(evs.clone()).to_string()),
        ("B's events", b_evs.to_string()),
        ("the journal", all.to_string()),
    ] {
        for t in [
            &token,
            &token_of(&url_ab),
            &token_of(&url_late),
            &token_of(&url_big),
            &token_of(&url_direct),
        ] {
            let mac = t.rsplit('.').next().unwrap();
            assert!(!text.contains(mac), "a token is in {what}");
        }
    }
    // The command lines that carried the URLs were journaled, masked.
    assert!(
        Value::Array(evs.clone())
            .to_string()
            .contains("[REDACTED:secret:artifact-url]"),
        "process events do not show the masked URL"
    );
    srv.stop().await;
}

/// The same through the `brig` binary: `brig serve` (its logs at debug
/// level kept), `brig artifact url|list|get`; the token is in none of
/// brig's logs.
#[test]
fn the_cli_issues_lists_and_fetches_and_brig_logs_no_token() {
    require_root!();
    let brig = env!("CARGO_BIN_EXE_brig");
    let dir = data_dir();
    let sock = dir.path().join("brig.sock");
    let cfg = dir.path().join("brig.toml");
    std::fs::write(&cfg, "[artifacts]\nmax_size = \"1M\"\n").unwrap();
    let log = dir.path().join("serve.log");
    let mut serve = std::process::Command::new(brig)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .arg("--socket")
        .arg(&sock)
        .arg("--config")
        .arg(&cfg)
        .env("BRIG_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "brig serve did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = |args: &[&str]| -> std::process::Output {
        std::process::Command::new(brig)
            .arg("--socket")
            .arg(&sock)
            .args(args)
            .output()
            .unwrap()
    };
    let ok = |o: &std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout.clone()).unwrap()
    };
    let id = ok(&run(&["session", "create", "--task", "ART-3"]))
        .trim()
        .to_string();
    // A bad name: usage error before any request (exit 2).
    assert_eq!(
        run(&["artifact", "url", "--session", &id, "../x"])
            .status
            .code(),
        Some(2)
    );
    let out = ok(&run(&[
        "--json",
        "artifact",
        "url",
        "--session",
        &id,
        "--ttl",
        "5m",
        "report.txt",
    ]));
    let v: Value = serde_json::from_str(&out).unwrap();
    let url = v["url"].as_str().unwrap().to_string();
    let token = token_of(&url);
    let script = format!(
        "seq 1 20000 > /workspace/report.txt && curl -fsS -o /dev/null -T /workspace/report.txt '{url}'"
    );
    let o = run(&["session", "exec", &id, "--", "sh", "-c", &script]);
    ok(&o);
    let list = ok(&run(&["artifact", "list", "--session", &id]));
    assert!(list.contains("report.txt"), "{list}");
    let got = dir.path().join("got.txt");
    ok(&run(&[
        "artifact",
        "get",
        "--session",
        &id,
        "report.txt",
        "-o",
        got.to_str().unwrap(),
    ]));
    assert!(std::fs::read(&got).unwrap() == seq_bytes(20000));
    let o = run(&["artifact", "get", "--session", &id, "missing.txt"]);
    assert_eq!(o.status.code(), Some(3), "not found: exit 3");
    ok(&run(&["session", "destroy", &id]));
    // The artifact outlives its session.
    let again = run(&["artifact", "get", "--session", &id, "report.txt"]);
    assert!(ok(&again).starts_with("1\n2\n3\n"));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    let _ = serve.wait();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("brig serve ready"), "{logs}");
    let mac = token.rsplit('.').next().unwrap();
    assert!(!logs.contains(mac), "the token is in brig's logs");
    assert!(!logs.contains(&token[..40]), "the token is in brig's logs");
}

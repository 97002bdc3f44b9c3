//! `brig journal` end to end (as root): a real session whose exec carries
//! an AWS-key-shaped argument is stored masked; show/export read it back
//! through the API; verify works offline on the data dir, catches
//! tampering with exit 4 and names the break; a corrupt database is a
//! clear error.

mod server_support;

use std::process::{Command, Output};

use serde_json::{json, Value};
use server_support::*;

const BRIG: &str = env!("CARGO_BIN_EXE_brig");
const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const EMAIL: &str = "alice.doe@example.com";
const CARD: &str = "4111 1111 1111 1111";

fn brig(args: &[&str]) -> Output {
    Command::new(BRIG)
        .args(args)
        .env_remove("BRIG_SOCKET")
        .env_remove("BRIG_URL")
        .env_remove("BRIG_CONFIG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_masked_show_export_and_offline_verify() {
    require_root!();
    let mut srv = Srv::start().await;
    let info = srv.create(json!({"task": "SEC-1", "human": "ada"})).await;
    let id = info["id"].as_str().unwrap().to_string();
    let r = srv.exec(&id, &["echo", AWS_KEY]).await;
    // The command itself sees the real argument; only the record is masked.
    assert_eq!(r["stdout"], format!("{AWS_KEY}\n"));
    // PII in argv ([journal.pii], on by default): masked in the exec's
    // record and in the process a shell starts inside, the human kept.
    let r = srv
        .exec(
            &id,
            &["sh", "-c", &format!("/bin/echo mail {EMAIL} card {CARD}")],
        )
        .await;
    assert_eq!(r["stdout"], format!("mail {EMAIL} card {CARD}\n"));
    let sock = srv.sock.to_str().unwrap().to_string();

    // Process capture journals the command's process.exec/exit a little
    // after the exec returns (batched): wait for them (at most 5 s; a
    // host without capture never sends any) so show and export agree.
    let show = || {
        let o = brig(&[
            "--socket",
            &sock,
            "--json",
            "journal",
            "show",
            "--session",
            &id,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut evs = show();
    let echoed = |evs: &[Value]| {
        evs.iter()
            .any(|e| e["action"] == "process.exec" && e["details"]["argv"][0] == "/bin/echo")
    };
    // The processes are on the journal and nothing more arrived for a
    // while (so show and export below read the same events).
    let mut seen = 0;
    while !(echoed(&evs) && evs.iter().any(|e| e["action"] == "process.exit") && evs.len() == seen)
        && std::time::Instant::now() < deadline
    {
        seen = evs.len();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        evs = show();
    }
    let start = evs
        .iter()
        .find(|e| e["action"] == "exec.start")
        .expect("exec.start recorded");
    assert_eq!(start["details"]["argv"][1], "[REDACTED:aws_access_key_id]");
    assert!(evs.iter().all(|e| e["session"] == id.as_str()));
    assert!(!serde_json::to_string(&evs).unwrap().contains(AWS_KEY));
    let pii = |e: &Value| {
        let argv = e["details"]["argv"].to_string();
        argv.contains("[REDACTED:pii:email]") && argv.contains("[REDACTED:pii:card]")
    };
    assert!(
        evs.iter()
            .any(|e| e["action"] == "exec.start" && e["details"]["argv"][0] == "sh" && pii(e)),
        "{evs:?}"
    );
    if echoed(&evs) {
        let p = evs
            .iter()
            .find(|e| e["action"] == "process.exec" && e["details"]["argv"][0] == "/bin/echo")
            .unwrap();
        assert!(pii(p), "{p}");
    }
    let text = serde_json::to_string(&evs).unwrap();
    assert!(!text.contains(EMAIL) && !text.contains(CARD), "{text}");
    assert!(evs.iter().all(|e| e["human"] == "ada"), "attribution kept");

    let o = brig(&[
        "--socket", &sock, "journal", "show", "--user", "ada", "--limit", "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 3, "{}", stdout(&o));

    for (format, check) in [
        ("ocsf", "class_uid"),
        ("ecs", "@timestamp"),
        ("jsonl", "hash"),
    ] {
        let o = brig(&[
            "--socket",
            &sock,
            "journal",
            "export",
            "--format",
            format,
            "--session",
            &id,
        ]);
        assert!(o.status.success(), "{format}: {}", stderr(&o));
        let lines: Vec<Value> = stdout(&o)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), evs.len(), "{format}");
        assert!(
            lines.iter().all(|l| !l[check].is_null()),
            "{format}: {lines:?}"
        );
        if format == "ocsf" {
            assert!(lines.iter().any(|l| l["class_uid"] == 1007));
            assert!(lines.iter().any(|l| l["class_uid"] == 6003));
        }
    }

    let (s, v) = srv
        .call("DELETE", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    srv.server.take().unwrap().shutdown().await.unwrap();

    // The raw database never held the key.
    let db = std::fs::read(srv.data().join("brig.db")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(AWS_KEY));

    // Offline: no server is running any more.
    let dd = srv.data().to_str().unwrap().to_string();
    let o = brig(&["journal", "verify", "--data-dir", &dd]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("intact"), "{}", stdout(&o));

    // A copy of the checkpoint file kept elsewhere, then the journal edited.
    let outside = tempfile::tempdir().unwrap();
    let copy = outside.path().join("checkpoints.jsonl");
    std::fs::copy(srv.data().join("journal/checkpoints.jsonl"), &copy).unwrap();
    let c = rusqlite::Connection::open(srv.data().join("brig.db")).unwrap();
    let (seq, eid): (i64, String) = c
        .query_row(
            "SELECT seq, id FROM events WHERE action = 'exec.start'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    c.execute(
        "UPDATE events SET details = '{\"argv\":[\"true\"]}' WHERE seq = ?1",
        [seq],
    )
    .unwrap();
    drop(c);
    let o = brig(&[
        "--json",
        "journal",
        "verify",
        "--data-dir",
        &dd,
        "--checkpoint",
        copy.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(4), "{}{}", stdout(&o), stderr(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["problems"][0]["kind"], "modified");
    assert_eq!(report["problems"][0]["seq"], seq);
    assert_eq!(report["problems"][0]["event_id"], eid.as_str());
    let o = brig(&["journal", "verify", "--data-dir", &dd]);
    assert_eq!(o.status.code(), Some(4));
    assert!(
        stdout(&o).contains(&format!("first breaks at seq {seq} (event {eid})")),
        "{}",
        stdout(&o)
    );
}

#[test]
fn verify_bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let dd = dir.path().to_str().unwrap();
    // No database at all.
    let o = brig(&["journal", "verify", "--data-dir", dd]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("no database at"), "{}", stderr(&o));
    // A corrupt one.
    std::fs::write(dir.path().join("brig.db"), vec![0x42; 4096]).unwrap();
    let o = brig(&["--json", "journal", "verify", "--data-dir", dd]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e: Value = serde_json::from_slice(&o.stderr).unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a readable brig database"),
        "{e}"
    );
    assert!(e["error"]["hint"].is_string());
    // Bad --since is refused before anything is contacted.
    let o = brig(&["journal", "show", "--since", "last tuesday"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

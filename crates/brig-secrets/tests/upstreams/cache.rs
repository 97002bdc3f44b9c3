//! The TTL cache over a real (fake Vault) upstream: hits within the TTL
//! stay in memory, expiry fetches again, concurrent fetches coalesce,
//! failures are not cached, leased secrets are refused and revoked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use brig_secrets::SecretError;
use serde_json::json;

use crate::common::{json, Req, Server};

const TOKEN: &str = "hvs.cache-token";

fn vault(down: Arc<AtomicBool>) -> crate::common::Handler {
    Arc::new(move |r: &Req| {
        if down.load(Ordering::SeqCst) {
            return json(503, json!({"errors": ["Vault is sealed"]}));
        }
        match r.path.as_str() {
            "/v1/secret/data/a" => json(
                200,
                json!({"data": {"data": {"v": "value-a"}, "metadata": {"version": 1}}}),
            ),
            "/v1/db/creds/ro" => json(
                200,
                json!({"lease_id": "db/creds/ro/1", "lease_duration": 600, "renewable": true, "data": {"password": "p"}}),
            ),
            "/v1/sys/leases/revoke" => crate::common::raw(204, "application/json", String::new()),
            _ => json(404, json!({"errors": []})),
        }
    })
}

fn section(url: &str) -> String {
    format!(
        r#"
[cache]
max_ttl = "300ms"
[sources.kv]
kind = "vault"
address = "{url}"
http = {{ allow_http = true }}
auth = {{ method = "token", token = {{ env = "BRIG_CACHE_TEST_TOKEN" }} }}
[sources.db]
kind = "vault"
address = "{url}"
engine = "dynamic"
mount = "db"
http = {{ allow_http = true }}
auth = {{ method = "token", token = {{ env = "BRIG_CACHE_TEST_TOKEN" }} }}
"#
    )
}

#[tokio::test]
async fn ttl_coalescing_and_failures() {
    // nextest runs each test in its own process.
    std::env::set_var("BRIG_CACHE_TEST_TOKEN", TOKEN);
    let down = Arc::new(AtomicBool::new(false));
    let s = Server::http_slow(vault(down.clone()), Duration::from_millis(50)).await;
    let sec = crate::secrets(&section(&s.url));
    let cache = Arc::new(sec.cache);

    // Ten concurrent callers, one upstream request.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let c = cache.clone();
        tasks.push(tokio::spawn(async move {
            c.get("kv", "a#v").await.map(|v| v.expose().to_vec())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), b"value-a");
    }
    assert_eq!(s.hits("/v1/secret/"), 1);
    // Within the TTL: from memory.
    cache.get("kv", "a#v").await.unwrap();
    assert_eq!(s.hits("/v1/secret/"), 1);
    assert_eq!(cache.len(), 1);
    // After it: dropped, and fetched again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(cache.len(), 0, "an expired value is not kept");
    cache.get("kv", "a#v").await.unwrap();
    assert_eq!(s.hits("/v1/secret/"), 2);

    // Upstream down after expiry: an error, never the stale value.
    tokio::time::sleep(Duration::from_millis(350)).await;
    down.store(true, Ordering::SeqCst);
    let e = cache.get("kv", "a#v").await.unwrap_err();
    assert!(matches!(e, SecretError::Unavailable { .. }), "{e}");
    down.store(false, Ordering::SeqCst);
    cache.get("kv", "a#v").await.unwrap();
    assert_eq!(s.hits("/v1/secret/"), 4, "the failure was not cached");

    cache.invalidate("kv", "a#v");
    cache.get("kv", "a#v").await.unwrap();
    assert_eq!(s.hits("/v1/secret/"), 5);

    let e = cache.get("nosuch", "a").await.unwrap_err().to_string();
    assert!(
        e.contains("no secret source `nosuch` (configured: db, kv)"),
        "{e}"
    );

    // A leased secret through the cache: refused, and its lease revoked.
    let e = cache.get("db", "ro").await.unwrap_err().to_string();
    assert!(
        e.contains("cannot be cached") && e.contains("the lease was revoked"),
        "{e}"
    );
    let revoke = s
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/sys/leases/revoke")
        .unwrap();
    assert_eq!(revoke.json(), json!({"lease_id": "db/creds/ro/1"}));
    cache.clear();
    assert!(cache.is_empty());
}

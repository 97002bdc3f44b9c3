//! brig.toml `[[journal.sinks]]`: parsing and the errors for bad config.

mod common;

use std::sync::Arc;

use brig_sinks::{
    MemoryCursors, MemorySource, RunnerOptions, SinkConfig, SinkKind, SinkRunner, Wakeup,
};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    journal: Journal,
}
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Journal {
    sinks: Vec<SinkConfig>,
}

fn parse(toml_text: &str) -> Result<Vec<SinkConfig>, String> {
    toml::from_str::<Doc>(toml_text)
        .map(|d| d.journal.sinks)
        .map_err(|e| e.to_string())
}

fn validate(toml_text: &str) -> String {
    let sinks = parse(toml_text).expect("parses");
    sinks[0].validate().expect_err("invalid").to_string()
}

#[test]
fn the_documented_example_parses_with_every_kind() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tok"), "t").unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/SINKS.md"))
        .unwrap();
    // The first ```toml block of docs/SINKS.md is the full example.
    let block = text
        .split("```toml\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let sinks = parse(block).unwrap();
    let kinds: Vec<&str> = sinks.iter().map(|s| s.kind.type_name()).collect();
    assert_eq!(
        kinds,
        [
            "file",
            "syslog",
            "splunk_hec",
            "datadog",
            "cloudwatch",
            "otlp"
        ]
    );
    assert_eq!(sinks[2].batch_size, 200);
    assert_eq!(sinks[2].retry.max, std::time::Duration::from_secs(30));
}

#[test]
fn unknown_key_names_the_sink_and_the_key() {
    let e = parse(
        r#"
[[journal.sinks]]
name = "splunk"
type = "splunk_hec"
url = "http://127.0.0.1:8088"
tokn_file = "/etc/brig/hec"
"#,
    )
    .unwrap_err();
    assert!(
        e.contains("sink 'splunk'") && e.contains("unknown field `tokn_file`"),
        "{e}"
    );
    assert!(e.contains("token_file"), "lists the valid keys: {e}");
}

#[test]
fn unknown_type_and_missing_name_are_clear() {
    let e = parse("[[journal.sinks]]\nname = \"x\"\ntype = \"kafka\"\n").unwrap_err();
    assert!(e.contains("sink 'x'") && e.contains("kafka"), "{e}");
    let e = parse("[[journal.sinks]]\ntype = \"file\"\npath = \"/tmp/x\"\n").unwrap_err();
    assert!(e.contains("missing the key `name`"), "{e}");
    let e = parse("[[journal.sinks]]\nname = \"a b\"\ntype = \"file\"\npath = \"/tmp/x\"\n")
        .unwrap_err();
    assert!(e.contains("key `name`"), "{e}");
    let e = parse(
        "[[journal.sinks]]\nname = \"f\"\ntype = \"file\"\npath = \"/tmp/x\"\nbatch_size = 0\n",
    )
    .unwrap_err();
    assert!(e.contains("sink 'f'") && e.contains("batch_size"), "{e}");
}

#[test]
fn missing_token_file_names_the_sink_key_and_path_but_no_secret() {
    let e = validate(
        r#"
[[journal.sinks]]
name = "splunk"
type = "splunk_hec"
url = "http://127.0.0.1:8088"
token_file = "/nonexistent/hec-token"
"#,
    );
    assert!(
        e.contains("journal sink 'splunk'")
            && e.contains("`token_file`")
            && e.contains("/nonexistent/hec-token"),
        "{e}"
    );
    let e = validate(
        "[[journal.sinks]]\nname = \"dd\"\ntype = \"datadog\"\nurl = \"http://127.0.0.1:1\"\n",
    );
    assert!(
        e.contains("'dd'") && e.contains("api_key_file") && e.contains("api_key_env"),
        "{e}"
    );
}

#[test]
fn missing_aws_env_names_the_variable() {
    let e = validate(
        r#"
[[journal.sinks]]
name = "cw"
type = "cloudwatch"
endpoint = "http://127.0.0.1:4566"
region = "us-east-1"
log_group = "g"
log_stream = "s"
access_key_id_env = "BRIG_TEST_SURELY_UNSET_AKID"
secret_access_key_env = "BRIG_TEST_SURELY_UNSET_SECRET"
"#,
    );
    assert!(
        e.contains("'cw'")
            && e.contains("access_key_id_env")
            && e.contains("BRIG_TEST_SURELY_UNSET_AKID"),
        "{e}"
    );
}

#[test]
fn https_is_refused_rather_than_sent_in_clear() {
    let e = validate(
        "[[journal.sinks]]\nname = \"otel\"\ntype = \"otlp\"\nurl = \"https://collector:4318\"\n",
    );
    assert!(
        e.contains("'otel'") && e.contains("`url`") && e.contains("https") && e.contains("no TLS"),
        "{e}"
    );
    // CloudWatch's default endpoint is https: the same clear refusal, naming `endpoint`.
    std::env::set_var("BRIG_TEST_CFG_A", "a");
    let e = validate(
        "[[journal.sinks]]\nname = \"cw\"\ntype = \"cloudwatch\"\nregion = \"eu-west-1\"\nlog_group = \"g\"\nlog_stream = \"s\"\naccess_key_id_env = \"BRIG_TEST_CFG_A\"\nsecret_access_key_env = \"BRIG_TEST_CFG_A\"\n",
    );
    assert!(
        e.contains("`endpoint`") && e.contains("https://logs.eu-west-1.amazonaws.com"),
        "{e}"
    );
}

#[test]
fn malformed_urls_and_addresses_are_refused() {
    for (url, want) in [
        ("not a url", "not a valid URL"),
        ("ftp://host/x", "scheme `ftp`"),
        ("127.0.0.1:4318", "`url`"),
        ("http://user:pw@host:4318", "credentials"),
    ] {
        let e = validate(&format!(
            "[[journal.sinks]]\nname = \"otel\"\ntype = \"otlp\"\nurl = \"{url}\"\n"
        ));
        assert!(e.contains("'otel'") && e.contains(want), "{url}: {e}");
        assert!(!e.contains("pw@"), "{e}");
    }
    let e = validate("[[journal.sinks]]\nname = \"sl\"\ntype = \"syslog\"\ntransport = \"tcp\"\naddr = \"localhost\"\n");
    assert!(e.contains("'sl'") && e.contains("`addr`"), "{e}");
    let e = validate("[[journal.sinks]]\nname = \"sl\"\ntype = \"syslog\"\ntransport = \"udp\"\naddr = \"127.0.0.1:514\"\nfacility = \"local9\"\n");
    assert!(e.contains("`facility`"), "{e}");
    let e = parse("[[journal.sinks]]\nname = \"sl\"\ntype = \"syslog\"\ntransport = \"quic\"\naddr = \"127.0.0.1:514\"\n").unwrap_err();
    assert!(e.contains("sink 'sl'") && e.contains("quic"), "{e}");
}

#[test]
fn debug_output_never_contains_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tok");
    std::fs::write(&tok, "super-secret-token").unwrap();
    let cfg = SinkConfig::new(
        "splunk",
        SinkKind::SplunkHec {
            url: "http://127.0.0.1:1".into(),
            token_file: Some(tok),
            token_env: None,
            index: None,
            sourcetype: "s".into(),
            source: "brig".into(),
        },
    );
    cfg.validate().unwrap();
    assert!(!format!("{cfg:?}").contains("super-secret-token"));
}

#[tokio::test]
async fn runner_refuses_duplicate_names_and_bad_sinks_at_start() {
    let src = Arc::new(MemorySource::new());
    let cur = Arc::new(MemoryCursors::new());
    let f = |n: &str| {
        SinkConfig::new(
            n,
            SinkKind::File {
                path: std::env::temp_dir().join("brig-sinks-dup.jsonl"),
            },
        )
    };
    let e = SinkRunner::start(
        vec![f("a"), f("a")],
        src.clone(),
        cur.clone(),
        &Wakeup::new(),
        RunnerOptions::default(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("'a' is used twice"), "{e}");
    let bad = SinkConfig::new(
        "f",
        SinkKind::File {
            path: "/nonexistent-dir/x.jsonl".into(),
        },
    );
    let e = SinkRunner::start(
        vec![bad],
        src,
        cur,
        &Wakeup::new(),
        RunnerOptions::default(),
    )
    .err()
    .unwrap();
    assert!(
        e.to_string().contains("'f'") && e.to_string().contains("`path`"),
        "{e}"
    );
}

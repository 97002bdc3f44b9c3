//! Export mappings of brig's event schema: OCSF 1.1 and ECS 8.
//!
//! OCSF class by action prefix: `exec.*`/`process.*` → Process Activity
//! (1007), `net.*`/`network.*`/`egress.*`/`dns.*` → Network Activity (4001),
//! `auth.*`/`login`/`logout` → Authentication (3002), anything else → API
//! Activity (6003). The original event is kept whole under `unmapped.brig`
//! (OCSF) and `brig` (ECS), so no field is lost in translation.

use brig_core::event::{Event, Outcome};
use serde_json::{json, Map, Value};

pub const OCSF_VERSION: &str = "1.1.0";
pub const ECS_VERSION: &str = "8.11.0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OcsfClass {
    ProcessActivity,
    NetworkActivity,
    Authentication,
    ApiActivity,
}

impl OcsfClass {
    pub fn of(action: &str) -> OcsfClass {
        let head = action.split('.').next().unwrap_or("");
        match head {
            "exec" | "process" => OcsfClass::ProcessActivity,
            "net" | "network" | "egress" | "dns" => OcsfClass::NetworkActivity,
            "auth" | "login" | "logout" => OcsfClass::Authentication,
            _ => OcsfClass::ApiActivity,
        }
    }
    pub fn uid(self) -> u32 {
        match self {
            OcsfClass::ProcessActivity => 1007,
            OcsfClass::NetworkActivity => 4001,
            OcsfClass::Authentication => 3002,
            OcsfClass::ApiActivity => 6003,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            OcsfClass::ProcessActivity => "Process Activity",
            OcsfClass::NetworkActivity => "Network Activity",
            OcsfClass::Authentication => "Authentication",
            OcsfClass::ApiActivity => "API Activity",
        }
    }
    fn category(self) -> (u32, &'static str) {
        match self {
            OcsfClass::ProcessActivity => (1, "System Activity"),
            OcsfClass::NetworkActivity => (4, "Network Activity"),
            OcsfClass::Authentication => (3, "Identity & Access Management"),
            OcsfClass::ApiActivity => (6, "Application Activity"),
        }
    }
    /// (activity_id, activity_name) for an action's verb.
    fn activity(self, action: &str) -> (u32, &'static str) {
        let verb = action.rsplit('.').next().unwrap_or("");
        match self {
            OcsfClass::ProcessActivity => match verb {
                "start" | "launch" | "spawn" => (1, "Launch"),
                "exit" | "end" | "kill" | "terminate" => (2, "Terminate"),
                _ => (99, "Other"),
            },
            OcsfClass::NetworkActivity => match verb {
                "open" | "connect" | "allow" | "request" => (1, "Open"),
                "close" => (2, "Close"),
                "refuse" | "deny" | "block" | "blocked" => (5, "Refuse"),
                _ => (99, "Other"),
            },
            OcsfClass::Authentication => match verb {
                "logout" | "logoff" => (2, "Logoff"),
                _ => (1, "Logon"),
            },
            OcsfClass::ApiActivity => match verb {
                "create" | "import" | "start" => (1, "Create"),
                "get" | "list" | "show" | "read" => (2, "Read"),
                "update" | "state" | "reconcile" => (3, "Update"),
                "destroy" | "delete" | "kill" => (4, "Delete"),
                _ => (99, "Other"),
            },
        }
    }
}

/// Milliseconds since the epoch of an RFC 3339 time (0 if unparsable, which
/// brig never writes).
pub fn epoch_ms(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or(0)
}

fn outcome_status(o: Outcome) -> (u32, &'static str) {
    match o {
        Outcome::Success | Outcome::Info => (1, "Success"),
        Outcome::Failure | Outcome::Denied => (2, "Failure"),
    }
}

fn original(ev: &Event) -> Value {
    serde_json::to_value(ev).unwrap_or(Value::Null)
}

fn detail<'a>(ev: &'a Event, key: &str) -> Option<&'a Value> {
    ev.details.get(key).filter(|v| !v.is_null())
}

/// The OCSF form of an event.
pub fn to_ocsf(ev: &Event) -> Value {
    let class = OcsfClass::of(&ev.action);
    let (category_uid, category_name) = class.category();
    let (activity_id, activity_name) = class.activity(&ev.action);
    let (status_id, status) = outcome_status(ev.outcome);
    let severity_id = match ev.outcome {
        Outcome::Denied => 3, // Medium: something tried and was stopped
        Outcome::Failure => 2,
        _ => 1,
    };
    let actor_user = json!({
        "name": ev.human,
        "type": "User",
        "type_id": 1,
    });
    let mut o = json!({
        "class_uid": class.uid(),
        "class_name": class.name(),
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class.uid() * 100 + activity_id,
        "time": epoch_ms(&ev.time),
        "severity_id": severity_id,
        "status_id": status_id,
        "status": status,
        "message": ev.action,
        "metadata": {
            "version": OCSF_VERSION,
            "uid": ev.id,
            "sequence": ev.seq,
            "product": {"name": "brig", "vendor_name": "brig", "version": env!("CARGO_PKG_VERSION")},
            "labels": labels(ev),
        },
        "actor": {
            "user": actor_user,
            "session": {"uid": ev.session},
            "app_name": ev.agent,
        },
        "device": {"type_id": 0, "type": "Unknown", "hostname": "brig-sandbox"},
        "unmapped": {"brig": original(ev)},
    });
    if let Some(rule) = &ev.rule {
        o["enrichments"] = json!([{"name": "rule", "value": rule, "data": {"rule": rule}}]);
    }
    if ev.outcome == Outcome::Denied {
        o["status_detail"] = json!(format!(
            "denied by {}",
            ev.rule.as_deref().unwrap_or("policy")
        ));
    }
    let m = o.as_object_mut().expect("object");
    match class {
        OcsfClass::ProcessActivity => {
            let argv: Vec<String> = detail(ev, "argv")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default();
            let mut p = Map::new();
            p.insert("cmd_line".into(), json!(argv.join(" ")));
            p.insert(
                "name".into(),
                json!(argv.first().map(|a| a.rsplit('/').next().unwrap_or(a))),
            );
            if let Some(v) = detail(ev, "pid") {
                p.insert("pid".into(), v.clone());
            }
            if let Some(v) = detail(ev, "cwd") {
                p.insert("file".into(), json!({"path": v, "type_id": 2, "name": v}));
            }
            if let Some(v) = detail(ev, "exec_id") {
                p.insert("uid".into(), v.clone());
            }
            if let Some(v) = detail(ev, "ppid") {
                p.insert("parent_process".into(), json!({"pid": v}));
            }
            m.insert("process".into(), Value::Object(p));
            if let Some(code) = detail(ev, "exit_code").or_else(|| detail(ev, "code")) {
                m.insert("exit_code".into(), code.clone());
            }
        }
        OcsfClass::NetworkActivity => {
            let host = detail(ev, "host").or_else(|| detail(ev, "dst_host"));
            let port = detail(ev, "port").or_else(|| detail(ev, "dst_port"));
            m.insert(
                "src_endpoint".into(),
                json!({"uid": ev.session, "name": ev.agent}),
            );
            m.insert(
                "dst_endpoint".into(),
                json!({"hostname": host, "port": port, "ip": detail(ev, "ip")}),
            );
            m.insert("connection_info".into(), json!({"protocol_name": detail(ev, "protocol").cloned().unwrap_or(json!("tcp")), "direction_id": 2, "direction": "Outbound"}));
        }
        OcsfClass::Authentication => {
            m.insert("user".into(), json!({"name": ev.human, "type_id": 1}));
            m.insert(
                "auth_protocol".into(),
                json!(detail(ev, "protocol").cloned().unwrap_or(json!("OIDC"))),
            );
            m.insert("dst_endpoint".into(), json!({"name": "brig"}));
            m.insert(
                "is_mfa".into(),
                json!(detail(ev, "mfa").cloned().unwrap_or(Value::Null)),
            );
        }
        OcsfClass::ApiActivity => {
            m.insert(
                "api".into(),
                json!({"operation": ev.action, "service": {"name": "brig"}, "request": {"uid": ev.id}}),
            );
            m.insert(
                "src_endpoint".into(),
                json!({"uid": ev.session, "name": ev.agent.clone().or(ev.human.clone())}),
            );
            m.insert(
                "resources".into(),
                json!([{"uid": ev.session, "type": "session", "name": ev.task}]),
            );
        }
    }
    o
}

fn labels(ev: &Event) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in [
        ("session", &ev.session),
        ("task", &ev.task),
        ("repo", &ev.repo),
        ("branch", &ev.branch),
    ] {
        if let Some(v) = v {
            out.push(format!("{k}:{v}"));
        }
    }
    out
}

/// The ECS form of an event (nested objects, as ECS documents are indexed).
pub fn to_ecs(ev: &Event) -> Value {
    let class = OcsfClass::of(&ev.action);
    let (category, etype) = match (class, ev.action.rsplit('.').next().unwrap_or("")) {
        (OcsfClass::ProcessActivity, "start") => ("process", "start"),
        (OcsfClass::ProcessActivity, "exit") => ("process", "end"),
        (OcsfClass::ProcessActivity, _) => ("process", "info"),
        (OcsfClass::NetworkActivity, _) => (
            "network",
            if ev.outcome == Outcome::Denied {
                "denied"
            } else {
                "connection"
            },
        ),
        (OcsfClass::Authentication, _) => ("authentication", "start"),
        (OcsfClass::ApiActivity, "create") => ("session", "start"),
        (OcsfClass::ApiActivity, "destroy" | "kill") => ("session", "end"),
        (OcsfClass::ApiActivity, _) => ("configuration", "info"),
    };
    let outcome = match ev.outcome {
        Outcome::Success => "success",
        Outcome::Failure | Outcome::Denied => "failure",
        Outcome::Info => "unknown",
    };
    let mut labels = Map::new();
    for (k, v) in [
        ("session", &ev.session),
        ("task", &ev.task),
        ("agent", &ev.agent),
        ("repo", &ev.repo),
        ("branch", &ev.branch),
    ] {
        if let Some(v) = v {
            labels.insert(k.into(), json!(v));
        }
    }
    let mut o = json!({
        "@timestamp": ev.time,
        "ecs": {"version": ECS_VERSION},
        "event": {
            "id": ev.id,
            "kind": "event",
            "action": ev.action,
            "outcome": outcome,
            "category": [category],
            "type": [etype],
            "sequence": ev.seq,
            "dataset": "brig.journal",
            "module": "brig",
            "provider": "brig",
        },
        "labels": labels,
        "brig": original(ev),
    });
    if let Some(h) = &ev.hash {
        o["event"]["hash"] = json!(h);
    }
    if let Some(human) = &ev.human {
        o["user"] = json!({"name": human});
    }
    if let Some(rule) = &ev.rule {
        o["rule"] = json!({"name": rule});
    }
    if let Some(s) = &ev.session {
        o["service"] = json!({"name": "brig"});
        o["labels"]["session"] = json!(s);
    }
    if class == OcsfClass::ProcessActivity {
        let mut p = Map::new();
        if let Some(argv) = detail(ev, "argv") {
            p.insert("args".into(), argv.clone());
            if let Some(first) = argv.get(0).and_then(Value::as_str) {
                p.insert("executable".into(), json!(first));
                p.insert(
                    "name".into(),
                    json!(first.rsplit('/').next().unwrap_or(first)),
                );
            }
            if let Some(a) = argv.as_array() {
                p.insert("args_count".into(), json!(a.len()));
                let line: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
                p.insert("command_line".into(), json!(line.join(" ")));
            }
        }
        for (from, to) in [
            ("cwd", "working_directory"),
            ("pid", "pid"),
            ("exec_id", "entity_id"),
            ("exit_code", "exit_code"),
            ("code", "exit_code"),
        ] {
            if let Some(v) = detail(ev, from) {
                p.insert(to.into(), v.clone());
            }
        }
        if let Some(v) = detail(ev, "ppid") {
            p.insert("parent".into(), json!({"pid": v}));
        }
        o["process"] = Value::Object(p);
    }
    if class == OcsfClass::NetworkActivity {
        o["destination"] = json!({"domain": detail(ev, "host"), "port": detail(ev, "port"), "ip": detail(ev, "ip")});
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_start() -> Event {
        let mut e = Event::new("exec.start", Outcome::Info).details(json!({
            "exec_id": "x-1", "argv": ["/usr/bin/make", "test"], "cwd": "/workspace", "pid": 42
        }));
        e.seq = 9;
        e.time = "2026-01-02T03:04:05.678Z".into();
        e.session = Some("s-abc".into());
        e.human = Some("ada".into());
        e.agent = Some("agent:s-abc".into());
        e.task = Some("JIRA-1".into());
        e
    }

    /// The attributes OCSF 1.1 marks required for every class (base event).
    const OCSF_BASE_REQUIRED: &[&str] = &[
        "activity_id",
        "category_uid",
        "class_uid",
        "metadata",
        "severity_id",
        "time",
        "type_uid",
    ];

    fn has_all(o: &Value, keys: &[&str]) {
        for k in keys {
            assert!(!o[k].is_null(), "missing required {k} in {o:#}");
        }
    }

    #[test]
    fn ocsf_process_activity() {
        let o = to_ocsf(&exec_start());
        has_all(&o, OCSF_BASE_REQUIRED);
        has_all(&o, &["actor", "device", "process"]); // class 1007 required
        assert_eq!(o["class_uid"], 1007);
        assert_eq!(o["category_uid"], 1);
        assert_eq!(o["activity_id"], 1);
        assert_eq!(o["type_uid"], 100701);
        assert_eq!(o["time"], 1767323045678i64);
        assert_eq!(o["metadata"]["version"], OCSF_VERSION);
        assert_eq!(o["metadata"]["product"]["name"], "brig");
        assert!(o["metadata"]["uid"].as_str().unwrap().starts_with("e-"));
        assert_eq!(o["process"]["cmd_line"], "/usr/bin/make test");
        assert_eq!(o["process"]["name"], "make");
        assert_eq!(o["process"]["pid"], 42);
        assert_eq!(o["actor"]["user"]["name"], "ada");
        assert_eq!(o["unmapped"]["brig"]["seq"], 9);
        let mut exit = exec_start();
        exit.action = "exec.exit".into();
        exit.outcome = Outcome::Failure;
        exit.details["exit_code"] = json!(2);
        let o = to_ocsf(&exit);
        assert_eq!(o["activity_id"], 2);
        assert_eq!(o["status_id"], 2);
        assert_eq!(o["exit_code"], 2);
    }

    #[test]
    fn ocsf_network_auth_api_classes() {
        let mut n = Event::new("egress.blocked", Outcome::Denied)
            .rule("deny-default")
            .details(json!({"host": "1.1.1.1", "port": 443}));
        n.session = Some("s-1".into());
        let o = to_ocsf(&n);
        has_all(&o, OCSF_BASE_REQUIRED);
        has_all(&o, &["src_endpoint", "dst_endpoint"]);
        assert_eq!(o["class_uid"], 4001);
        assert_eq!(o["activity_id"], 5);
        assert_eq!(o["dst_endpoint"]["port"], 443);
        assert_eq!(o["status_detail"], "denied by deny-default");

        let mut a = Event::new("auth.login", Outcome::Success);
        a.human = Some("ada".into());
        let o = to_ocsf(&a);
        has_all(&o, OCSF_BASE_REQUIRED);
        has_all(&o, &["user", "dst_endpoint"]);
        assert_eq!(o["class_uid"], 3002);
        assert_eq!(o["category_uid"], 3);
        assert_eq!(o["type_uid"], 300201);

        let s = Event::new("session.destroy", Outcome::Success);
        let o = to_ocsf(&s);
        has_all(&o, OCSF_BASE_REQUIRED);
        has_all(&o, &["actor", "api", "src_endpoint"]);
        assert_eq!(o["class_uid"], 6003);
        assert_eq!(o["activity_id"], 4);
        assert_eq!(o["api"]["operation"], "session.destroy");
    }

    #[test]
    fn ecs_fields() {
        let o = to_ecs(&exec_start());
        assert_eq!(o["@timestamp"], "2026-01-02T03:04:05.678Z");
        assert_eq!(o["event"]["action"], "exec.start");
        assert_eq!(o["event"]["outcome"], "unknown");
        assert_eq!(o["event"]["kind"], "event");
        assert_eq!(o["event"]["category"][0], "process");
        assert_eq!(o["event"]["type"][0], "start");
        assert_eq!(o["event"]["sequence"], 9);
        assert_eq!(o["user"]["name"], "ada");
        assert_eq!(o["process"]["args"], json!(["/usr/bin/make", "test"]));
        assert_eq!(o["process"]["args_count"], 2);
        assert_eq!(o["process"]["working_directory"], "/workspace");
        assert_eq!(o["process"]["pid"], 42);
        assert_eq!(o["labels"]["session"], "s-abc");
        assert_eq!(o["labels"]["task"], "JIRA-1");
        assert_eq!(o["ecs"]["version"], ECS_VERSION);
        let d = Event::new("egress.blocked", Outcome::Denied).rule("r1");
        let o = to_ecs(&d);
        assert_eq!(o["event"]["outcome"], "failure");
        assert_eq!(o["rule"]["name"], "r1");
        assert_eq!(o["event"]["category"][0], "network");
        assert!(o.get("user").is_none());
    }
}

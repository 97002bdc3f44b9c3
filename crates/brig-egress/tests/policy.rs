//! The policy end to end through the public API: TOML in, decisions with
//! rules and explanations out.

use brig_egress::dns::qtype;
use brig_egress::lists;
use brig_egress::{
    DnsAnswer, EgressConfig, Host, Mode, Policy, PolicyError, Reason, Request, RuleId, Unseen,
};

fn host(s: &str) -> Host {
    Host::parse(s).unwrap()
}

fn policy(toml: &str) -> Policy {
    Policy::from_toml(toml).unwrap_or_else(|e| panic!("{e}"))
}

fn decide<'p>(p: &'p Policy, h: &str, port: u16) -> brig_egress::Decision<'p> {
    p.decide(&Request::new(&host(h), port))
}

const BASIC: &str = r#"
presets = ["registries"]

[[allow]]
name = "github"
domains = ["github.com", "*.ghcdn.example.com"]
ports = [443]

[[allow]]
name = "example-api"
domains = ["api.example.com"]
methods = ["get", "HEAD"]
paths = ["/v1/", "/health"]

[[allow]]
name = "wide"
domains = ["*.amazonaws.com", "*.google.com"]

[[deny]]
name = "no-uploads"
domains = ["uploads.github.com"]

[[deny]]
name = "no-admin"
domains = ["api.example.com"]
paths = ["/v1/admin"]
"#;

#[test]
fn embeds_under_egress_in_brig_toml() {
    #[derive(serde::Deserialize)]
    struct BrigToml {
        egress: EgressConfig,
    }
    let doc = format!(
        "[egress]\nmode = \"report\"\n{}",
        BASIC.replace("[[", "[[egress.").replace("presets", "#")
    );
    let cfg: BrigToml = toml::from_str(&doc).unwrap();
    assert_eq!(cfg.egress.mode, Mode::Report);
    assert_eq!(cfg.egress.allow.len(), 3);
    assert_eq!(cfg.egress.default_ports, vec![80, 443]);
    assert!(cfg.egress.default_deny_list);
    Policy::compile(&cfg.egress).unwrap();
    // Unknown keys are errors, not silently ignored.
    let e = Policy::from_toml("mdoe = \"report\"").unwrap_err();
    assert!(matches!(e, PolicyError::Toml(_)), "{e}");
    let e = Policy::from_toml("[[allow]]\nname = \"x\"\ndomains = [\"a.com\"]\nport = [22]")
        .unwrap_err();
    assert!(e.to_string().contains("port"), "{e}");
}

#[test]
fn default_deny_names_itself_and_says_how() {
    let p = policy(BASIC);
    let d = decide(&p, "evil.example.net", 443);
    assert!(d.denied());
    assert_eq!(d.rule, RuleId::Builtin("default-deny"));
    let e = d.explain("evil.example.net", 443, None);
    assert_eq!(e.rule, "default-deny");
    assert_eq!(e.reason, "no egress rule allows evil.example.net");
    let how = e.how_to_request_access.unwrap();
    assert!(
        how.contains("[[egress.allow]]") && how.contains("domains = [\"evil.example.net\"]"),
        "{how}"
    );
    assert!(!how.contains("ports"), "{how}");
    let how = decide(&p, "evil.example.net", 8443)
        .how_to_request_access("evil.example.net", 8443, None)
        .unwrap();
    assert!(how.contains("ports = [8443]"), "{how}");
    // The 403 body.
    let body = decide(&p, "evil.example.net", 443)
        .explain("evil.example.net", 443, None)
        .to_text();
    assert!(
        body.starts_with(
            "brig egress: no egress rule allows evil.example.net (rule: default-deny)\n"
        ),
        "{body}"
    );
    // JSON for the journal.
    let json = serde_json::to_value(decide(&p, "evil.example.net", 443).explain(
        "evil.example.net",
        443,
        None,
    ))
    .unwrap();
    assert_eq!(json["rule"], "default-deny");
    assert_eq!(json["allowed"], false);
    assert!(json["how_to_request_access"].is_string());
    let ok = serde_json::to_value(decide(&p, "github.com", 443).explain("github.com", 443, None))
        .unwrap();
    assert_eq!(ok["rule"], "github");
    assert!(ok.get("how_to_request_access").is_none());
}

#[test]
fn exact_and_wildcard() {
    let p = policy(BASIC);
    assert_eq!(decide(&p, "github.com", 443).rule, RuleId::Allow("github"));
    assert!(
        decide(&p, "www.github.com", 443).denied(),
        "exact does not cover subdomains"
    );
    assert!(decide(&p, "raw.ghcdn.example.com", 443).allowed);
    assert!(decide(&p, "a.b.c.ghcdn.example.com", 443).allowed);
    assert!(
        decide(&p, "ghcdn.example.com", 443).denied(),
        "*. does not cover the apex"
    );
    assert!(decide(&p, "evilghcdn.example.com", 443).denied());
    assert!(decide(&p, "ghcdn.example.com.evil.net", 443).denied());
    // Normalized input only: case and trailing dot are folded by Host.
    assert!(decide(&p, "RAW.GhCdn.Example.com.", 443).allowed);
}

#[test]
fn ports() {
    let p = policy(BASIC);
    let d = decide(&p, "github.com", 22);
    assert!(d.denied());
    assert_eq!(d.rule, RuleId::Allow("github"));
    assert_eq!(d.reason, Reason::PortNotAllowed);
    assert_eq!(
        d.reason_text("github.com", 22, None),
        "rule \"github\" allows github.com on ports [443], not on port 22"
    );
    let how = d.how_to_request_access("github.com", 22, None).unwrap();
    assert!(
        how.contains("ports = [443, 22]") && how.contains("\"github\""),
        "{how}"
    );
    // Default ports are 80 and 443.
    assert!(decide(&p, "s3-website.example.amazonaws.com", 80).allowed);
    assert!(decide(&p, "ec2.us-east-1.amazonaws.com", 443).allowed);
    assert!(decide(&p, "ec2.us-east-1.amazonaws.com", 8080).denied());
    let p2 =
        policy("default_ports = [443]\n[[allow]]\nname = \"a\"\ndomains = [\"a.example.com\"]");
    assert!(decide(&p2, "a.example.com", 80).denied());
    assert!(decide(&p2, "a.example.com", 443).allowed);
}

#[test]
fn methods_paths_and_visibility() {
    let p = policy(BASIC);
    let h = host("api.example.com");
    let r = |m: &'static str, path: &'static str| Request::http(&h, 443, m, path);
    assert!(p.decide(&r("GET", "/v1/things?x=1")).allowed);
    assert!(p.decide(&r("HEAD", "/health")).allowed);
    assert!(p.decide(&r("GET", "/health/deep")).allowed);
    assert_eq!(
        p.decide(&r("GET", "/healthz")).reason,
        Reason::PathNotAllowed
    );
    assert_eq!(p.decide(&r("GET", "/v2/x")).reason, Reason::PathNotAllowed);
    assert_eq!(
        p.decide(&r("POST", "/v1/things")).reason,
        Reason::MethodNotAllowed
    );
    assert_eq!(
        p.decide(&r("get", "/v1/things")).reason,
        Reason::MethodNotAllowed,
        "methods are case-sensitive on the wire"
    );
    let how = p
        .decide(&r("POST", "/v1/x"))
        .how_to_request_access("api.example.com", 443, Some("POST"))
        .unwrap();
    assert!(
        how.contains("methods = [\"GET\", \"HEAD\", \"POST\"]"),
        "{how}"
    );
    // Dot segments and encoded slashes are refused, not normalized past a
    // prefix.
    for bad in [
        "/v1/../admin",
        "/v1/./x",
        "/v1/%2e%2e/admin",
        "/v1%2fadmin",
        "/v1/..;/admin",
        "v1/x",
        "/v1\\x",
    ] {
        let d = p.decide(&r("GET", bad));
        assert!(d.denied(), "{bad}");
    }
    // Escapes of unreserved characters are decoded before matching.
    assert!(p.decide(&r("GET", "/%76%31/things")).allowed);
    // The deny rule's path wins, case-insensitively and through escapes.
    for denied in [
        "/v1/admin",
        "/v1/admin/users",
        "/V1/ADMIN",
        "/v1/%61dmin",
        "/v1/admin;jsessionid=1",
    ] {
        let d = p.decide(&r("GET", denied));
        assert_eq!(d.rule, RuleId::Deny("no-admin"), "{denied}");
    }
    assert!(p.decide(&r("GET", "/v1/administrator")).allowed);
    // An opaque tunnel cannot satisfy a rule that restricts methods or
    // paths, and a deny rule with a path denies it.
    let d = p.decide(&Request::new(&h, 443));
    assert!(d.denied());
    assert!(d.needs_inspection);
    assert!(p.needs_inspection(&h, 443));
    assert!(!p.needs_inspection(&host("github.com"), 443));
    assert_eq!(d.rule, RuleId::Deny("no-admin"));
    let p2 = policy("[[allow]]\nname = \"m\"\ndomains = [\"m.example.com\"]\nmethods = [\"GET\"]");
    let d = p2.decide(&Request::new(&host("m.example.com"), 443));
    assert_eq!(d.reason, Reason::NotVisible(Unseen::Method));
    assert!(d.needs_inspection);
}

#[test]
fn deny_always_wins() {
    let p = policy(BASIC);
    let d = decide(&p, "uploads.github.com", 443);
    assert_eq!(d.rule, RuleId::Deny("no-uploads"));
    assert_eq!(d.reason, Reason::DenyListed);
    // The shipped deny-list beats a wide allow rule.
    for (h, rule) in [
        ("mybucket.s3.amazonaws.com", "exfil/object-storage"),
        ("s3.amazonaws.com", "exfil/object-storage"),
        (
            "mybucket.s3.eu-west-1.amazonaws.com",
            "exfil/object-storage",
        ),
        (
            "s3.dualstack.us-east-2.amazonaws.com",
            "exfil/object-storage",
        ),
        (
            "mybucket.s3-us-west-2.amazonaws.com",
            "exfil/object-storage",
        ),
        ("storage.googleapis.com", "exfil/object-storage"),
        ("x.blob.core.windows.net", "exfil/object-storage"),
        ("pastebin.com", "exfil/pastebins"),
        ("abc.ngrok-free.app", "exfil/tunnels"),
        ("x.trycloudflare.com", "exfil/tunnels"),
        ("webhook.site", "exfil/request-bins"),
        ("transfer.sh", "exfil/file-drops"),
        ("hooks.slack.com", "exfil/chat-webhooks"),
    ] {
        let d = decide(&p, h, 443);
        assert_eq!(d.rule, RuleId::Deny(rule), "{h}");
        let e = d.explain(h, 443, None);
        assert!(e.reason.contains("default deny-list"), "{}", e.reason);
        assert!(e
            .how_to_request_access
            .unwrap()
            .contains("disable_default_deny"));
    }
    // Wide allow still works for what is not listed.
    assert!(decide(&p, "sts.amazonaws.com", 443).allowed);
    // Lifting one shipped class, by name.
    let p2 = policy(
        "disable_default_deny = [\"exfil/object-storage\"]\n[[allow]]\nname = \"gcs\"\ndomains = [\"storage.googleapis.com\"]",
    );
    assert!(decide(&p2, "storage.googleapis.com", 443).allowed);
    assert_eq!(
        decide(&p2, "pastebin.com", 443).rule,
        RuleId::Deny("exfil/pastebins")
    );
    let e = Policy::from_toml("disable_default_deny = [\"exfil/nope\"]").unwrap_err();
    assert_eq!(e, PolicyError::UnknownDefaultDeny("exfil/nope".into()));
    // Or all of it (documented as not recommended).
    let p3 =
        policy("default_deny_list = false\n[[allow]]\nname = \"p\"\ndomains = [\"pastebin.com\"]");
    assert!(decide(&p3, "pastebin.com", 443).allowed);
}

#[test]
fn public_suffix_wildcards_need_the_flag() {
    for (domain, suffix) in [
        ("*.com", "com"),
        ("*.co.uk", "co.uk"),
        ("*.github.io", "github.io"),
        ("*.s3.amazonaws.com", "s3.amazonaws.com"),
        ("*.blob.core.windows.net", "blob.core.windows.net"),
        ("*.internal", "internal"),
        ("*.herokuapp.com", "herokuapp.com"),
        ("*.pages.dev", "pages.dev"),
        ("*.githubusercontent.com", "githubusercontent.com"),
        ("*.vercel.app", "vercel.app"),
    ] {
        let toml = format!("[[allow]]\nname = \"wide-one\"\ndomains = [\"{domain}\"]");
        let e = Policy::from_toml(&toml).unwrap_err();
        assert_eq!(
            e,
            PolicyError::PublicSuffixWildcard {
                rule: "wide-one".into(),
                domain: domain.into(),
                suffix: suffix.into()
            },
            "{domain}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("\"wide-one\"") && msg.contains("allow_public_suffix = true"),
            "{msg}"
        );
        let flagged = format!("{toml}\nallow_public_suffix = true");
        Policy::from_toml(&flagged).unwrap_or_else(|e| panic!("{domain}: {e}"));
    }
    for ok in [
        "*.example.com",
        "*.example.co.uk",
        "*.rust-lang.github.io",
        "*.corp.internal",
        "*.amazonaws.com",
    ] {
        Policy::from_toml(&format!("[[allow]]\nname = \"ok\"\ndomains = [\"{ok}\"]"))
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    // Exact hosts that are public suffixes are fine (github.io is a site).
    Policy::from_toml("[[allow]]\nname = \"gh\"\ndomains = [\"github.io\"]").unwrap();
    // Deny rules may span a suffix: denying more is always safe.
    Policy::from_toml("[[deny]]\nname = \"d\"\ndomains = [\"*.github.io\"]").unwrap();
}

#[test]
fn presets() {
    let p = policy("presets = [\"registries\"]");
    for (h, port, rule) in [
        ("index.crates.io", 443, "registries/crates-io"),
        ("static.crates.io", 443, "registries/crates-io"),
        ("pypi.org", 443, "registries/pypi"),
        ("files.pythonhosted.org", 443, "registries/pypi"),
        ("registry.npmjs.org", 443, "registries/npm"),
        ("deb.debian.org", 80, "registries/debian"),
        ("security.debian.org", 443, "registries/debian"),
        ("proxy.golang.org", 443, "registries/go"),
        ("sum.golang.org", 443, "registries/go"),
        ("repo.maven.apache.org", 443, "registries/maven-central"),
        ("repo1.maven.org", 443, "registries/maven-central"),
        ("rubygems.org", 443, "registries/rubygems"),
        ("index.rubygems.org", 443, "registries/rubygems"),
    ] {
        let d = decide(&p, h, port);
        assert!(d.allowed, "{h}");
        assert_eq!(d.rule, RuleId::Allow(rule), "{h}");
    }
    assert!(decide(&p, "registry.npmjs.org", 80).denied());
    let how = decide(&p, "registry.npmjs.org", 80)
        .how_to_request_access("registry.npmjs.org", 80, None)
        .unwrap();
    assert!(how.contains("preset \"registries\""), "{how}");
    assert!(decide(&p, "upload.pypi.org", 443).denied());
    assert_eq!(
        Policy::from_toml("presets = [\"nope\"]").unwrap_err(),
        PolicyError::UnknownPreset("nope".into())
    );
    // A user rule cannot take a preset rule's name.
    let e = Policy::from_toml(
        "presets = [\"registries\"]\n[[allow]]\nname = \"registries/npm\"\ndomains = [\"a.com\"]",
    )
    .unwrap_err();
    assert!(matches!(e, PolicyError::BadName { .. }), "{e}");
}

#[test]
fn report_mode() {
    let p = policy(&format!("mode = \"report\"\n{BASIC}"));
    let d = decide(&p, "unknown.example.org", 443);
    assert!(d.allowed && d.would_deny);
    assert_eq!(d.rule, RuleId::Builtin("default-deny"));
    assert!(d
        .how_to_request_access("unknown.example.org", 443, None)
        .is_some());
    let d = decide(&p, "github.com", 22);
    assert!(d.allowed && d.would_deny);
    let d = p.decide(&Request::new(&host("127.0.0.1"), 443));
    assert!(d.allowed && d.would_deny);
    assert_eq!(d.rule, RuleId::Builtin("ip-literal"));
    // Never relaxed: the deny-list and invalid hosts.
    let d = decide(&p, "pastebin.com", 443);
    assert!(d.denied() && !d.would_deny);
    let d = decide(&p, "uploads.github.com", 443);
    assert!(d.denied());
    let (_, d) = p.decide_raw("exa%6dple.com", 443, None, None);
    assert!(d.denied());
    assert_eq!(d.rule, RuleId::Builtin("invalid-host"));
    // Allowed stays plain allowed.
    let d = decide(&p, "github.com", 443);
    assert!(d.allowed && !d.would_deny);
}

#[test]
fn ip_literals_and_raw_hosts() {
    let p = policy(BASIC);
    for raw in [
        "127.0.0.1",
        "2130706433",
        "0177.0.0.1",
        "0x7f.1",
        "127.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "169.254.169.254",
    ] {
        let (h, d) = p.decide_raw(raw, 443, None, None);
        assert!(h.unwrap().ip().is_some(), "{raw}");
        assert_eq!(d.rule, RuleId::Builtin("ip-literal"), "{raw}");
        assert!(d
            .explain(raw, 443, None)
            .how_to_request_access
            .unwrap()
            .contains("name the host"));
    }
    for raw in [
        "[fe80::1%25eth0]",
        "a..b",
        "exa mple.com",
        "1.2.3.256",
        "xn--a.com",
        "",
    ] {
        let (h, d) = p.decide_raw(raw, 443, None, None);
        assert!(h.is_none(), "{raw}");
        assert_eq!(d.rule, RuleId::Builtin("invalid-host"), "{raw}");
    }
    let (h, d) = p.decide_raw("GitHub.COM.", 443, None, None);
    assert_eq!(h.unwrap().domain(), Some("github.com"));
    assert!(d.allowed);
}

#[test]
fn dns_decisions() {
    let p = policy(&format!("{BASIC}\n[dns]\nmax_label_len = 48\n"));
    let q = p.decide_dns("index.crates.io", qtype::A);
    assert_eq!(q.answer, DnsAnswer::Resolve);
    assert_eq!(q.decision.rule, RuleId::Allow("registries/crates-io"));
    assert_eq!(
        p.decide_dns("Index.Crates.IO.", qtype::AAAA).answer,
        DnsAnswer::Resolve
    );
    // Port-scoped rules still make the name resolvable.
    assert_eq!(
        p.decide_dns("github.com", qtype::A).answer,
        DnsAnswer::Resolve
    );
    let q = p.decide_dns("index.crates.io", qtype::TXT);
    assert_eq!(q.answer, DnsAnswer::Refused);
    assert_eq!(q.decision.rule, RuleId::Builtin("dns-qtype"));
    assert_eq!(
        p.decide_dns("index.crates.io", qtype::HTTPS).answer,
        DnsAnswer::NoData
    );
    let q = p.decide_dns("evil.example.net", qtype::A);
    assert_eq!(q.answer, DnsAnswer::NxDomain);
    assert_eq!(q.decision.rule, RuleId::Builtin("default-deny"));
    let q = p.decide_dns("pastebin.com", qtype::A);
    assert_eq!(q.answer, DnsAnswer::NxDomain);
    assert_eq!(q.decision.rule, RuleId::Deny("exfil/pastebins"));
    // A deny rule scoped to paths does not hide the name.
    assert_eq!(
        p.decide_dns("api.example.com", qtype::A).answer,
        DnsAnswer::Resolve
    );
    // Encoded data under an allowed wildcard.
    let q = p.decide_dns(
        "mfrggzdfmztwq2lknnwg23tpobyxe43u.s3-tunnel.amazonaws.com",
        qtype::A,
    );
    assert_eq!(q.answer, DnsAnswer::Refused);
    assert_eq!(q.decision.rule, RuleId::Builtin("dns-label-entropy"));
    let e = q.decision.explain(
        "mfrggzdfmztwq2lknnwg23tpobyxe43u.s3-tunnel.amazonaws.com",
        53,
        None,
    );
    assert!(e.reason.contains("looks like encoded data"), "{}", e.reason);
    assert!(e.how_to_request_access.unwrap().contains("[egress.dns]"));
    let q = p.decide_dns(&format!("{}.amazonaws.com", "a".repeat(49)), qtype::A);
    assert_eq!(q.decision.rule, RuleId::Builtin("dns-label-length"));
    assert_eq!(
        p.decide_dns("127.0.0.1", qtype::A).answer,
        DnsAnswer::NxDomain
    );
    assert_eq!(p.decide_dns("a..b", qtype::A).answer, DnsAnswer::Refused);
    // Report mode relaxes the name heuristics, never the query type.
    let r = policy(&format!("mode = \"report\"\n{BASIC}"));
    let q = r.decide_dns(
        "mfrggzdfmztwq2lknnwg23tpobyxe43u.s3-tunnel.amazonaws.com",
        qtype::A,
    );
    assert_eq!(q.answer, DnsAnswer::Resolve);
    assert!(q.decision.would_deny);
    assert_eq!(
        r.decide_dns("index.crates.io", qtype::TXT).answer,
        DnsAnswer::Refused
    );
    assert_eq!(
        r.decide_dns("evil.example.net", qtype::A).answer,
        DnsAnswer::Resolve
    );
    assert_eq!(
        r.decide_dns("pastebin.com", qtype::A).answer,
        DnsAnswer::NxDomain
    );
}

#[test]
fn load_errors_name_the_rule() {
    let cases: &[(&str, &str)] = &[
        ("[[allow]]\nname = \"a\"\ndomains = []", "`domains` is empty"),
        ("[[allow]]\nname = \"a\"\ndomains = [\"x.com\"]\nports = []", "`ports` is empty"),
        ("[[allow]]\nname = \"a\"\ndomains = [\"x.com\"]\nports = [0]", "port 0"),
        ("[[allow]]\nname = \"a\"\ndomains = [\"x.com\"]\nmethods = [\"GE T\"]", "HTTP method"),
        ("[[allow]]\nname = \"a\"\ndomains = [\"x.com\"]\npaths = [\"v1\"]", "path prefix"),
        ("[[allow]]\nname = \"a\"\ndomains = [\"x.com\"]\npaths = [\"/a/../b\"]", "path prefix"),
        ("[[allow]]\nname = \"a\"\ndomains = [\"x.com\"]\npaths = [\"/a?b\"]", "path prefix"),
        ("[[allow]]\nname = \"a\"\ndomains = [\"x*.com\"]", "wildcard"),
        ("[[allow]]\nname = \"a\"\ndomains = [\"*.*.x.com\"]", "wildcard"),
        ("[[allow]]\nname = \"a\"\ndomains = [\"*\"]", "wildcard"),
        ("[[allow]]\nname = \"a\"\ndomains = [\"10.0.0.1\"]", "IP address"),
        ("[[allow]]\nname = \"a\"\ndomains = [\"0x7f.1\"]", "IP address"),
        ("[[allow]]\nname = \"a\"\ndomains = [\"[::1]\"]", "IP address"),
        ("[[allow]]\nname = \"a\"\ndomains = [\"a..com\"]", "not a valid domain"),
        ("[[allow]]\nname = \"a\"\ndomains = [\"x.com\"]\n[[deny]]\nname = \"a\"\ndomains = [\"y.com\"]", "more than one"),
        ("[[allow]]\nname = \"Bad Name\"\ndomains = [\"x.com\"]", "a-z"),
        ("[[allow]]\nname = \"default-deny\"\ndomains = [\"x.com\"]", "built-in"),
        ("[[allow]]\nname = \"\"\ndomains = [\"x.com\"]", "a-z"),
        ("default_ports = []", "default_ports"),
        ("[ssrf]\ntrusted_cidrs = [\"10.0.0.1/8\"]", "CIDR"),
        ("mode = \"block\"", "unknown variant"),
        ("default_ports = [0]", "default_ports"),
        ("[dns]\nmax_label_len = 64", "max_label_len"),
        ("[dns]\nmax_name_len = 0", "max_name_len"),
        ("[dns]\nentropy_min_len = 0", "entropy_min_len"),
        ("[dns]\nentropy_threshold = -1.0", "entropy_threshold"),
        ("[dns]\nentropy_threshold = nan", "entropy_threshold"),
    ];
    for (toml, want) in cases {
        let e = Policy::from_toml(toml).unwrap_err().to_string();
        assert!(e.contains(want), "{toml:?}: {e}");
        if toml.contains("name = \"a\"") && !toml.contains("[[deny]]") {
            assert!(e.contains("rule \"a\""), "{toml:?}: {e}");
        }
    }
    // A Unicode domain in a rule is stored as its A-label.
    let p = policy("[[allow]]\nname = \"idn\"\ndomains = [\"bücher.example\"]");
    assert!(decide(&p, "xn--bcher-kva.example", 443).allowed);
    assert!(decide(&p, "BÜCHER.example", 443).allowed);
}

#[test]
fn ssrf_from_policy() {
    let p = policy("[ssrf]\ntrusted_cidrs = [\"203.0.113.0/24\"]\nown_addresses = [\"192.0.2.1\"]");
    let ip = |s: &str| s.parse().unwrap();
    assert_eq!(
        p.ssrf().check_resolved(&[ip("203.0.113.7")]),
        Ok(vec![ip("203.0.113.7")])
    );
    let denial = p
        .ssrf()
        .check_resolved(&[ip("203.0.113.7"), ip("169.254.169.254")])
        .unwrap_err();
    let d = p.ssrf_decision(denial);
    assert_eq!(d.rule.as_str(), "ssrf:cloud-metadata");
    let e = d.explain("metadata.example.com", 80, None);
    assert_eq!(e.reason, "metadata.example.com resolves to a refused address: 169.254.169.254 is in 169.254.169.254/32 (cloud-metadata)");
    assert!(e.how_to_request_access.unwrap().contains("trusted_cidrs"));
    assert_eq!(
        p.ssrf()
            .check_resolved(&[ip("192.0.2.1")])
            .unwrap_err()
            .rule(),
        "ssrf:brig-own"
    );
}

#[test]
fn random_hosts_property() {
    // Hosts under an allowed wildcard are allowed; hosts beside it are not;
    // the answer does not depend on case or a trailing dot.
    let p = policy("[[allow]]\nname = \"w\"\ndomains = [\"*.svc.example.com\"]\n[[allow]]\nname = \"e\"\ndomains = [\"one.example.org\"]");
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-";
    for _ in 0..3000 {
        let labels = 1 + (next() % 4) as usize;
        let mut parts = Vec::new();
        for _ in 0..labels {
            let len = 1 + (next() % 12) as usize;
            let mut l: String = (0..len)
                .map(|_| ALPHA[(next() % 26) as usize] as char)
                .collect();
            if next() % 3 == 0 {
                l = l.to_ascii_uppercase();
            }
            parts.push(l);
        }
        let sub = parts.join(".");
        let under = format!(
            "{sub}.svc.example.com{}",
            if next() % 2 == 0 { "." } else { "" }
        );
        assert!(decide(&p, &under, 443).allowed, "{under}");
        assert_eq!(decide(&p, &under, 443).rule, RuleId::Allow("w"));
        let beside = format!("{sub}.svc.example.net");
        assert_eq!(
            decide(&p, &beside, 443).rule,
            RuleId::Builtin("default-deny"),
            "{beside}"
        );
        let prefix = format!("{sub}svc.example.com");
        assert!(decide(&p, &prefix, 443).denied(), "{prefix}");
        let under_exact = format!("{sub}.one.example.org");
        assert!(decide(&p, &under_exact, 443).denied(), "{under_exact}");
    }
}

#[test]
fn shipped_lists_load_and_are_documented() {
    let docs = include_str!("../../../docs/EGRESS.md");
    for s in lists::DEFAULT_DENY {
        assert!(
            docs.contains(s.name),
            "docs/EGRESS.md does not mention {}",
            s.name
        );
        for d in s.domains {
            assert!(Host::parse(d.trim_start_matches("*.")).is_ok(), "{d}");
            assert!(
                docs.contains(d),
                "docs/EGRESS.md does not list {d} ({})",
                s.name
            );
        }
    }
    for preset in lists::PRESETS {
        assert!(docs.contains(preset.name));
        for r in preset.rules {
            assert!(
                docs.contains(r.name),
                "docs/EGRESS.md does not mention {}",
                r.name
            );
            for d in r.domains {
                assert!(docs.contains(d), "docs/EGRESS.md does not list {d}");
            }
        }
    }
    for d in lists::regional_object_storage() {
        assert!(Host::parse(d.trim_start_matches("*.")).is_ok(), "{d}");
    }
    let p = Policy::compile(&EgressConfig {
        presets: vec!["registries".into()],
        ..Default::default()
    })
    .unwrap();
    assert!(p.rule_names().count() >= lists::DEFAULT_DENY.len() + 7);
}

#[test]
fn decide_is_cheap() {
    // Not a benchmark (the machine is shared): a sanity bound that a
    // decision is a trie walk, not a scan. 200k decisions over a policy with
    // a thousand rules must take well under a few seconds even in debug.
    let mut toml = String::from("presets = [\"registries\"]\n");
    for i in 0..1000 {
        toml.push_str(&format!("[[allow]]\nname = \"r{i}\"\ndomains = [\"h{i}.example{i}.com\", \"*.svc{i}.example.net\"]\n"));
    }
    let p = policy(&toml);
    let hosts: Vec<Host> = [
        "a.svc500.example.net",
        "index.crates.io",
        "nope.example.org",
        "h999.example999.com",
    ]
    .iter()
    .map(|h| host(h))
    .collect();
    let t = std::time::Instant::now();
    let mut allowed = 0;
    for i in 0..200_000 {
        if p.decide(&Request::new(&hosts[i % hosts.len()], 443))
            .allowed
        {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 150_000);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn sni_and_host_must_match_the_target() {
    use brig_egress::NameSource;
    let p = policy(&format!("mode = \"report\"\n{BASIC}"));
    let target = host("github.com");
    assert!(p
        .check_same_host(&target, 443, "GitHub.com.", NameSource::Sni)
        .is_ok());
    assert!(p
        .check_same_host(&target, 443, "github.com", NameSource::HostHeader)
        .is_ok());
    assert!(p
        .check_same_host(&target, 443, "github.com:443", NameSource::HostHeader)
        .is_ok());
    // Domain fronting: enforced even in report mode.
    let d = p
        .check_same_host(&target, 443, "pastebin.com", NameSource::Sni)
        .unwrap_err();
    assert!(d.denied() && !d.would_deny);
    assert_eq!(d.rule, RuleId::Builtin("sni-mismatch"));
    let e = d.explain("github.com", 443, None);
    assert_eq!(e.reason, "the TLS server name (SNI) names \"pastebin.com\" but the connection was opened to github.com:443");
    let d = p
        .check_same_host(&target, 443, "github.com:8443", NameSource::HostHeader)
        .unwrap_err();
    assert_eq!(d.rule, RuleId::Builtin("host-mismatch"));
    let d = p
        .check_same_host(&target, 443, "evil.example", NameSource::HostHeader)
        .unwrap_err();
    assert_eq!(d.rule, RuleId::Builtin("host-mismatch"));
    let d = p.check_same_host(&host("127.0.0.1"), 443, "0x7f.1", NameSource::HostHeader);
    assert!(
        d.is_ok(),
        "numeric forms of the same address are the same host"
    );
    let d = p
        .check_same_host(&target, 443, "git%68ub.com", NameSource::Sni)
        .unwrap_err();
    assert_eq!(d.rule, RuleId::Builtin("invalid-host"));
    assert!(d.denied());
}

#[test]
fn inspection_only_when_it_can_change_the_answer() {
    let p = policy(
        "[[allow]]\nname = \"wide\"\ndomains = [\"api.example.com\"]\n\
         [[allow]]\nname = \"narrow\"\ndomains = [\"api.example.com\"]\nports = [8443]\npaths = [\"/v1/\"]\n\
         [[allow]]\nname = \"only-narrow\"\ndomains = [\"files.example.com\"]\npaths = [\"/pub/\"]",
    );
    // A host-wide rule already allows the tunnel: nothing to inspect.
    assert!(!p.needs_inspection(&host("api.example.com"), 443));
    // Only a narrowing rule covers this port: inspect.
    assert!(p.needs_inspection(&host("api.example.com"), 8443));
    assert!(p.needs_inspection(&host("files.example.com"), 443));
    assert!(!p.needs_inspection(&host("nothing.example.com"), 443));
}

#[test]
fn logs_never_see_queries() {
    use brig_egress::path_for_log;
    assert_eq!(
        path_for_log("/simple/requests/?token=abc"),
        "/simple/requests/"
    );
    assert_eq!(path_for_log("/a#frag"), "/a");
    assert_eq!(path_for_log("/a"), "/a");
}

#[test]
fn policy_is_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Policy>();
    assert_send_sync::<brig_egress::SsrfGuard>();
}

#[test]
fn uuid_labels_are_refused_as_documented() {
    let p = policy("[[allow]]\nname = \"w\"\ndomains = [\"*.svc.example.com\"]");
    let q = p.decide_dns(
        "3fa85f64-5717-4562-b3fc-2c963f66afa6.svc.example.com",
        qtype::A,
    );
    assert_eq!(q.decision.rule, RuleId::Builtin("dns-label-entropy"));
    assert_eq!(
        p.decide_dns("d3h8f9abc12xyz.svc.example.com", qtype::A)
            .answer,
        DnsAnswer::Resolve
    );
}

#[test]
fn config_round_trips_through_toml() {
    let cfg = EgressConfig::from_toml(&format!(
        "{BASIC}\n[ssrf]\ntrusted_cidrs = [\"203.0.113.0/24\"]\n"
    ))
    .unwrap();
    let text = toml::to_string(&cfg).unwrap();
    assert_eq!(EgressConfig::from_toml(&text).unwrap(), cfg, "{text}");
    assert!(text.contains("203.0.113.0/24"));
}

#[test]
fn proxy_rule_names_are_reserved() {
    for name in [
        "upstream",
        "tls-no-sni",
        "transparent-ip-mismatch",
        "default-deny",
    ] {
        let toml = format!("[[allow]]\nname = \"{name}\"\ndomains = [\"a.example\"]\n");
        assert!(Policy::from_toml(&toml).is_err(), "{name}");
    }
    assert!(Policy::from_toml(
        "[[allow]]\nname = \"upstream-mirror\"\ndomains = [\"a.example\"]\n"
    )
    .is_ok());
}

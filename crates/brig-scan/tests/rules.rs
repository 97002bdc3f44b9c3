//! The rule engine: gitleaks' format, every built-in rule (a positive and a
//! negative each), allowlists, errors, and what a finding may hold.

use brig_scan::{FindingKind, ScanConfig, ScanError, Scanner};

/// Deterministic random-looking text (an LCG; no secrets in the source).
fn rnd(seed: u64, n: usize, chars: &str) -> String {
    let chars: Vec<char> = chars.chars().collect();
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            chars[((x >> 33) % chars.len() as u64) as usize]
        })
        .collect()
}
const AN: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const B64: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/";
const URL: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
const HEX: &str = "0123456789abcdef";
const UP: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn pem(kind: &str, seed: u64) -> String {
    let body: Vec<String> = (0..6).map(|i| rnd(seed + i, 64, B64)).collect();
    format!(
        "-----BEGIN {kind}-----\n{}\n-----END {kind}-----\n",
        body.join("\n")
    )
}

/// (rule, file, positive content, negative content)
fn table() -> Vec<(&'static str, &'static str, String, String)> {
    vec![
        ("aws-access-key-id", "a.py", format!("key = \"AKIA{}\"\n", rnd(1, 16, UP)), "key = \"AKIAIOSFODNN7EXAMPLE\"\n".into()),
        ("aws-secret-access-key", "a.ini", format!("aws_secret_access_key = {}\n", rnd(2, 40, B64)), "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n".into()),
        ("google-api-key", "m.js", format!("const k = 'AIza{}';\n", rnd(3, 35, URL)), "const k = 'AIzaXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX';\n".into()),
        ("google-oauth-client-secret", "o.py", format!("s = 'GOCSPX-{}'\n", rnd(4, 28, URL)), "s = 'GOCSPX-short'\n".into()),
        ("azure-storage-account-key", "a.cfg", format!("c=AccountName=x;AccountKey={}==;\n", rnd(5, 86, B64)), "c=AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;\n".into()),
        ("digitalocean-token", "d.tf", format!("t = \"dop_v1_{}\"\n", rnd(6, 64, HEX)), "t = \"dop_v1_short\"\n".into()),
        ("hashicorp-vault-token", "v.sh", format!("VAULT=hvs.{}\n", rnd(7, 95, URL)), "VAULT=hvs.CAESIshort\n".into()),
        ("terraform-cloud-token", "t.hcl", format!("token = \"{}.atlasv1.{}\"\n", rnd(8, 14, AN), rnd(9, 67, URL)), "atlasv1 is the API version\n".into()),
        ("databricks-token", "d.py", format!("T = \"dapi{}\"\n", rnd(10, 32, HEX)), "T = \"dapi\" + suffix\n".into()),
        ("github-token", "g.sh", format!("GH=ghp_{}\n", rnd(11, 36, AN)), "GH=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n".into()),
        ("github-fine-grained-pat", "g.md", format!("github_pat_{}\n", rnd(12, 82, AN)), "github_pat_ prefix docs\n".into()),
        ("gitlab-token", "g.yml", format!("t: glpat-{}\n", rnd(13, 20, URL)), "t: glpat-xxxxxxxxxxxxxxxxxxxx\n".into()),
        ("npm-access-token", "p.sh", format!("NPM=npm_{}\n", rnd(14, 36, AN)), "npm_config_cache=/tmp/npm\n".into()),
        ("npmrc-auth", ".npmrc", format!("//registry.npmjs.org/:_authToken={}\n", rnd(15, 36, AN)), "//registry.npmjs.org/:_authToken=${NPM_TOKEN}\n".into()),
        ("pypi-token", "u.sh", format!("-p pypi-AgEIcHlwaS5vcmc{}\n", rnd(16, 60, URL)), "pypi-AgEI is the prefix\n".into()),
        ("shopify-token", "s.rb", format!("t = 'shpat_{}'\n", rnd(17, 32, HEX)), "t = 'shpat_'\n".into()),
        ("slack-token", "s.go", format!("t := \"xoxb-{}-{}\"\n", rnd(18, 12, "0123456789"), rnd(19, 24, AN)), "t := \"xoxb-your-token-here\"\n".into()),
        ("slack-webhook-url", "n.py", format!("U='https://hooks.slack.com/services/T{}/B{}/{}'\n", rnd(20, 8, UP), rnd(21, 10, UP), rnd(22, 24, AN)), "U='https://hooks.slack.com/services/XXXXXXXXXXXXXXXXXXXXXXXX'\n".into()),
        ("discord-webhook-url", "d.py", format!("U='https://discord.com/api/webhooks/123456789012345678/{}'\n", rnd(23, 68, URL)), "U='https://discord.com/api/webhooks/ID/TOKEN'\n".into()),
        ("stripe-key", "s.ts", format!("k = 'sk_live_{}'\n", rnd(24, 24, AN)), "k = 'sk_live_xxxxxxxxxxxxxxxxxxxxxxxx'\n".into()),
        ("sendgrid-api-key", "m.py", format!("k = 'SG.{}.{}'\n", rnd(25, 22, URL), rnd(26, 43, URL)), "msg.send(k)\n".into()),
        ("telegram-bot-token", "b.js", format!("t = '1234567890:AA{}'\n", rnd(27, 33, URL)), "ratio 16:AA\n".into()),
        ("huggingface-token", "h.py", format!("login(token='hf_{}')\n", rnd(28, 34, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")), "login(token='hf_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa')\n".into()),
        ("openai-api-key", "o.py", format!("k = 'sk-proj-{}'\n", rnd(29, 60, URL)), "k = 'sk-proj-'\n".into()),
        ("anthropic-api-key", "a.py", format!("k = 'sk-ant-api03-{}'\n", rnd(30, 93, URL)), "k = 'sk-ant-api03-...'\n".into()),
        ("jwt", "t.go", format!("t := \"eyJhbGciOiJIUzI1NiJ9.eyJ{}.{}\"\n", rnd(31, 30, URL), rnd(32, 43, URL)), "t := \"eyJhbGciOiJIUzI1NiIs...\"\n".into()),
        ("database-url-credentials", "d.ini", format!("url = postgresql://app:{}@db:5432/x\n", rnd(33, 14, AN)), "url = postgresql://user:password@localhost/x\n".into()),
        ("url-credentials", "pip.conf", format!("index-url = https://deploy:{}@pypi.corp.net/simple\n", rnd(34, 18, AN)), "index-url = https://pypi.org/simple\n".into()),
        ("http-basic-auth", "c.py", format!("h = {{'Authorization': 'Basic {}'}}\n", rnd(35, 24, B64)), "basic usage: see docs\n".into()),
        ("http-bearer-token", "c.http", format!("Authorization: Bearer {}\n", rnd(36, 40, AN)), "Authorization: Bearer $TOKEN\n".into()),
        ("private-key", "k.txt", pem("RSA PRIVATE KEY", 37), pem("PUBLIC KEY", 38)),
        ("putty-private-key", "k.txt", format!("PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nPublic-Lines: 2\n{}\nPrivate-Lines: 1\n{}\n", rnd(39, 64, B64), rnd(40, 64, B64)), "PuTTY-User-Key-File-3 is the format name\n".into()),
        ("age-secret-key", "k.txt", format!("AGE-SECRET-KEY-1{}\n", rnd(41, 58, "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L")), "AGE-SECRET-KEY-1 prefix\n".into()),
        ("generic-password", "db.py", format!("db_password = \"{}\"\n", rnd(42, 12, AN)), "db_password = \"${DB_PASSWORD}\"\n".into()),
        ("generic-secret-assignment", "s.go", format!("var jwtSecret = \"{}\"\n", rnd(43, 20, AN)), "var jwtSecretName = \"jwt_secret_name\"\n".into()),
        ("generic-env-secret", "run.sh", format!("SERVICE_TOKEN={}\n", rnd(44, 20, AN)), "SERVICE_TOKEN=$SERVICE_TOKEN\n".into()),
        ("generic-config-secret", "app.yaml", format!("db:\n  password: {}\n", rnd(45, 14, AN)), "db:\n  password: changeme\n".into()),
        ("high-entropy-string", "f.ts", format!("headers['X-Auth'] = '{}'\n", rnd(46, 44, B64)), format!("commit_hash_for_auth = '{}'\n", rnd(47, 40, HEX))),
        ("dotenv-file", ".env", "A=1\n".into(), "A=1\n".into()),
        ("ssh-private-key-file", "id_ed25519", "x\n".into(), "x\n".into()),
        ("key-material-file", "tls/server.key", "x\n".into(), "x\n".into()),
        ("credentials-file", "config/credentials.json", "{}\n".into(), "{}\n".into()),
    ]
}

/// The file a negative uses: path rules are negative on a neighbour's name.
fn negative_file(rule: &str, file: &'static str) -> &'static str {
    match rule {
        "dotenv-file" => ".env.example",
        "ssh-private-key-file" => "id_ed25519.pub",
        "key-material-file" => "tls/server.crt",
        "credentials-file" => "config/credentials.md",
        _ => file,
    }
}

#[test]
fn every_builtin_rule_has_a_positive_and_a_negative_case() {
    let sc = Scanner::builtin();
    let table = table();
    for id in sc.rule_ids() {
        assert!(
            table.iter().any(|(r, ..)| *r == id),
            "built-in rule `{id}` has no test case here"
        );
    }
    for (rule, file, pos, neg) in &table {
        let found = sc.scan_blob(file, pos.as_bytes());
        assert!(
            found.iter().any(|f| f.rule == *rule),
            "{rule}: positive not found in {pos:?}: {found:#?}"
        );
        let nf = negative_file(rule, file);
        let found = sc.scan_blob(nf, neg.as_bytes());
        assert!(
            found.is_empty(),
            "{rule}: negative {neg:?} ({nf}) flagged: {found:#?}"
        );
    }
}

#[test]
fn no_finding_holds_the_secret() {
    let sc = Scanner::builtin();
    for (rule, file, pos, _) in table() {
        // The longest random run in the case is its secret.
        let secret = pos
            .split(|c: char| !(c.is_ascii_alphanumeric() || "+/_-".contains(c)))
            .max_by_key(|s| s.len())
            .unwrap()
            .to_string();
        for f in sc.scan_blob(file, pos.as_bytes()) {
            let json = serde_json::to_string(&f).unwrap();
            if secret.len() >= 12 && f.kind != FindingKind::DeniedFileName {
                assert!(
                    !json.contains(&secret),
                    "{rule}: finding holds the secret: {json}"
                );
                assert!(
                    !json.contains(&secret[secret.len() - 12..]),
                    "{rule}: finding holds part of the secret: {json}"
                );
            }
            assert_eq!(f.fingerprint.len(), 16);
        }
    }
}

#[test]
fn findings_report_line_column_excerpt_and_stable_fingerprints() {
    let sc = Scanner::builtin();
    let tok = format!("ghp_{}", rnd(100, 36, AN));
    let text = format!("// a\n// b\n    let t = \"{tok}\"; let u = 1;\n");
    let f = sc.scan_blob("src/x.rs", text.as_bytes());
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].line, f[0].column), (3, 14));
    assert_eq!(f[0].excerpt, "let t = \"[REDACTED]\"; let u = 1;");
    assert_eq!(f[0].kind, FindingKind::Secret);
    let again = sc.scan_blob("other.rs", tok.as_bytes());
    assert_eq!(
        again[0].fingerprint, f[0].fingerprint,
        "same rule and secret, same fingerprint"
    );
    let other = sc.scan_blob("src/x.rs", format!("ghp_{}", rnd(101, 36, AN)).as_bytes());
    assert_ne!(other[0].fingerprint, f[0].fingerprint);
}

#[test]
fn two_secrets_on_one_line_are_both_masked_in_both_excerpts() {
    let sc = Scanner::builtin();
    let a = format!("ghp_{}", rnd(102, 36, AN));
    let b = format!("glpat-{}", rnd(103, 20, URL));
    let f = sc.scan_blob("x.sh", format!("X={a} Y={b}\n").as_bytes());
    assert_eq!(f.len(), 2, "{f:#?}");
    for x in &f {
        assert!(
            !x.excerpt.contains(&a) && !x.excerpt.contains(&b),
            "{}",
            x.excerpt
        );
        assert_eq!(x.excerpt.matches("[REDACTED]").count(), 2);
    }
}

#[test]
fn a_specific_rule_wins_over_generic_and_high_entropy_on_the_same_text() {
    let sc = Scanner::builtin();
    let f = sc.scan_blob(
        "a.py",
        format!("aws_secret_access_key = \"{}\"\n", rnd(104, 40, B64)).as_bytes(),
    );
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].rule, "aws-secret-access-key");
}

#[test]
fn lockfiles_git_shas_uuids_and_base64_blobs_are_quiet() {
    let sc = Scanner::builtin();
    let cases = [
        (
            "Cargo.lock",
            format!("checksum = \"{}\"\n", rnd(1, 64, HEX)),
        ),
        (
            "package-lock.json",
            format!("\"integrity\": \"sha512-{}==\"\n", rnd(2, 86, B64)),
        ),
        (
            "go.sum",
            format!("golang.org/x/oauth2 v0.1.0 h1:{}=\n", rnd(3, 43, B64)),
        ),
        (
            "a.rs",
            format!("let commit_token_rev = \"{}\";\n", rnd(4, 40, HEX)),
        ),
        (
            "a.rs",
            "let secret_id = \"0b7c5d8e-4f8a-4c1e-9b2a-6d3e1f0a9c7b\";\n".to_string(),
        ),
        (
            "a.txt",
            format!("key material follows\n{}\n", rnd(5, 2000, B64)),
        ),
        (
            "a.css",
            format!(
                ".key {{ background: url(data:image/png;base64,{}) }}\n",
                rnd(6, 100, B64)
            ),
        ),
    ];
    for (file, text) in cases {
        let f = sc.scan_blob(file, text.as_bytes());
        assert!(f.is_empty(), "{file}: {text:?}: {f:#?}");
    }
}

#[test]
fn binary_large_and_denied_files() {
    let sc = Scanner::builtin();
    let mut elf = b"\x7fELF\x02\x01\x01\0".to_vec();
    elf.extend_from_slice(format!("ghp_{}", rnd(1, 36, AN)).as_bytes());
    let f = sc.scan_blob("bin/tool", &elf);
    assert_eq!(
        f.iter().map(|f| f.kind).collect::<Vec<_>>(),
        vec![FindingKind::BinaryFile],
        "binary content is sniffed, not searched"
    );
    // Small non-executable binary data (an icon) is fine; large is not.
    let mut png = b"\x89PNG\r\n\x1a\n\0\0".to_vec();
    png.resize(10_000, 7);
    assert!(sc.scan_blob("icon.png", &png).is_empty());
    png.resize(300 * 1024, 7);
    assert_eq!(
        sc.scan_blob("photo.png", &png)[0].kind,
        FindingKind::BinaryFile
    );
    let big = vec![b'a'; 2 << 20];
    let f = sc.scan_blob("big.txt", &big);
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].kind, f[0].line), (FindingKind::LargeFile, 0));
    for name in [
        ".env",
        "app/.env.local",
        "home/.ssh/id_rsa",
        "certs/tls.pem",
        "a.p12",
        "b.pfx",
        "c.key",
        "credentials.json",
        ".git-credentials",
    ] {
        let f = sc.scan_blob(name, b"x\n");
        assert!(
            f.iter().any(|f| f.kind == FindingKind::DeniedFileName),
            "{name} not denied"
        );
    }
    for name in [
        ".env.example",
        "id_rsa.pub",
        "src/keyboard.rs",
        "credentials.rs",
        "environment.md",
    ] {
        assert!(sc.scan_blob(name, b"x\n").is_empty(), "{name} denied");
    }
}

#[test]
fn config_settings_take_effect() {
    let cfg = ScanConfig {
        large_file_bytes: 10,
        denied_files: vec!["*.sqlite".into(), "config/prod/*.yaml".into()],
        allow_paths: vec!["fixtures/**".into()],
        disabled_rules: vec!["jwt".into()],
        entropy_threshold: 0.0,
        sniff_binary: false,
        ..ScanConfig::default()
    };
    let sc = Scanner::new(&cfg).unwrap();
    assert!(!sc.rule_ids().contains(&"jwt".to_string()));
    assert!(
        !sc.rule_ids().contains(&"high-entropy-string".to_string()),
        "entropy 0 turns it off"
    );
    assert_eq!(
        sc.scan_blob("a.txt", b"0123456789ab")[0].kind,
        FindingKind::LargeFile
    );
    assert_eq!(
        sc.scan_blob("db/app.sqlite", b"x")[0].rule,
        "denied-file-name"
    );
    assert!(sc.scan_blob("config/prod/db.yaml", b"x")[0]
        .description
        .contains("config/prod/*.yaml"));
    assert!(sc.scan_blob("config/dev/db.yaml", b"x").is_empty());
    assert!(
        sc.scan_blob("fixtures/keys/.env", b"x").is_empty(),
        "allow_paths wins"
    );
    // Sniffing off: binary content is searched like text.
    let mut elf = b"\x7fELF\0".to_vec();
    elf.extend_from_slice(format!(" ghp_{} ", rnd(1, 36, AN)).as_bytes());
    assert_eq!(
        sc.scan_blob("t", &elf)
            .iter()
            .filter(|f| f.rule == "github-token")
            .count(),
        1
    );

    let bad = ScanConfig {
        disabled_rules: vec!["no-such-rule".into()],
        ..ScanConfig::default()
    };
    let e = Scanner::new(&bad).err().unwrap().to_string();
    assert!(
        e.contains("no-such-rule") && e.contains("no rule has this id"),
        "{e}"
    );
    let bad = ScanConfig {
        denied_files: vec!["[".into()],
        ..ScanConfig::default()
    };
    assert!(Scanner::new(&bad)
        .err()
        .unwrap()
        .to_string()
        .contains("bad glob"));
    let missing = ScanConfig {
        rules_file: Some("/nonexistent/rules.toml".into()),
        ..ScanConfig::default()
    };
    assert!(matches!(Scanner::new(&missing), Err(ScanError::Io { .. })));
}

#[test]
fn scan_config_parses_from_brig_toml_and_rejects_unknown_keys() {
    let cfg = ScanConfig::from_brig_toml(
        "[server]\nx = 1\n[scan]\nlarge_file_bytes = 5\ndenied_files = [\"*.db\"]\n",
        "brig.toml",
    )
    .unwrap();
    assert_eq!(cfg.large_file_bytes, 5);
    assert_eq!(cfg.denied_files, vec!["*.db".to_string()]);
    assert!(cfg.sniff_binary, "unset fields keep their defaults");
    assert_eq!(
        ScanConfig::from_brig_toml("", "brig.toml").unwrap(),
        ScanConfig::default()
    );
    let e = ScanConfig::from_brig_toml("[scan]\nlarge_file = 5\n", "brig.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("large_file") && e.contains("[scan]"), "{e}");
}

/// A config shaped like real teams' .gitleaks.toml files.
const TEAM_RULES: &str = r#"
title = "acme gitleaks config"

[extend]
useDefault = true
disabledRules = ["jwt"]

[[rules]]
id = "acme-internal-token"
description = "Acme internal service token"
regex = '''\b(acme_(?:live|test)_[a-z0-9]{32})\b'''
secretGroup = 1
entropy = 3.0
keywords = ["acme_live_", "acme_test_"]
tags = ["acme", "internal"]

    [[rules.allowlists]]
    description = "the public test fixture token"
    regexTarget = "secret"
    regexes = ['''^acme_test_0{32}$''']

    [[rules.allowlists]]
    description = "generated docs"
    condition = "AND"
    paths = ['''^docs/''']
    stopwords = ["sample"]

[[rules]]
id = "acme-legacy-key"
description = "Acme legacy key (old allowlist syntax)"
regex = '''LEGACY-[A-Z0-9]{20}'''
keywords = ["legacy-"]
path = '''\.(?:conf|ini)$'''
    [rules.allowlist]
    regexTarget = "line"
    regexes = ['''#\s*nosecret''']

[[rules]]
id = "terraform-state"
description = "Terraform state files"
path = '''(?:^|/)[^/]*\.tfstate$'''

[allowlist]
description = "vendored code"
paths = ['''(?:^|/)vendor/''']

[[allowlists]]
targetRules = ["github-token"]
commits = ["0123456789abcdef0123456789abcdef01234567"]
regexes = ['''^ghp_0{36}$''']
"#;

#[test]
fn a_real_world_shaped_gitleaks_config_works() {
    let sc = Scanner::from_gitleaks_toml(TEAM_RULES, false).unwrap();
    let ids = sc.rule_ids();
    assert!(
        ids.contains(&"acme-internal-token".into()) && ids.contains(&"github-token".into()),
        "useDefault keeps the built-in rules"
    );
    assert!(!ids.contains(&"jwt".into()), "disabledRules drops one");
    let live = format!(
        "acme_live_{}",
        rnd(1, 32, "abcdefghijklmnopqrstuvwxyz0123456789")
    );
    let f = sc.scan_blob("src/a.py", format!("T = '{live}'\n").as_bytes());
    assert_eq!(
        f.iter().map(|f| f.rule.as_str()).collect::<Vec<_>>(),
        vec!["acme-internal-token"]
    );
    // Allowlist by secret regex.
    assert!(sc
        .scan_blob(
            "src/a.py",
            format!("T = 'acme_test_{}'\n", "0".repeat(32)).as_bytes()
        )
        .is_empty());
    // AND condition: both the path and the stopword must hold.
    let sample = format!(
        "acme_live_sample{}",
        rnd(2, 26, "abcdefghijklmnopqrstuvwxyz0123456789")
    );
    assert!(sc
        .scan_blob("docs/a.md", format!("{sample}\n").as_bytes())
        .is_empty());
    assert_eq!(
        sc.scan_blob("src/a.md", format!("{sample}\n").as_bytes())
            .len(),
        1
    );
    assert_eq!(
        sc.scan_blob("docs/a.md", format!("{live}\n").as_bytes())
            .len(),
        1
    );
    // Path-scoped rule and a line-target allowlist (older [rules.allowlist]).
    let legacy = format!(
        "LEGACY-{}",
        rnd(3, 20, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    );
    assert_eq!(
        sc.scan_blob("app.conf", format!("k={legacy}\n").as_bytes())[0].rule,
        "acme-legacy-key"
    );
    assert!(
        sc.scan_blob("app.rs", format!("k={legacy}\n").as_bytes())
            .is_empty(),
        "path regex scopes the rule"
    );
    assert!(sc
        .scan_blob("app.conf", format!("k={legacy} # nosecret\n").as_bytes())
        .is_empty());
    // Path-only rule.
    assert_eq!(
        sc.scan_blob("infra/prod.tfstate", b"{}")[0].kind,
        FindingKind::DeniedFileName
    );
    // Global allowlist by path.
    assert!(sc
        .scan_blob("vendor/x/a.py", format!("T = '{live}'\n").as_bytes())
        .is_empty());
    // Replacing the built-in rules: only the file's rules remain.
    let only = Scanner::from_gitleaks_toml(
        &TEAM_RULES
            .replace(
                "useDefault = true\ndisabledRules = [\"jwt\"]",
                "useDefault = false",
            )
            .replace("targetRules = [\"github-token\"]\n", ""),
        false,
    )
    .unwrap();
    assert_eq!(
        only.rule_ids(),
        vec!["acme-internal-token", "acme-legacy-key", "terraform-state"]
    );
    assert_eq!(
        only.patterns().len(),
        2,
        "patterns() are the content rules' regexes"
    );
}

#[test]
fn bad_rules_are_clear_errors_naming_the_rule() {
    let cases: &[(&str, &[&str])] = &[
        ("[[rules]]\nid = \"r1\"\nregex = '''(unclosed'''\n", &["r1", "regex", "not a valid regex"]),
        ("[[rules]]\nid = \"r2\"\nregex = '''a(b)'''\nsecretGroup = 3\n", &["r2", "secretGroup = 3", "1 capture group"]),
        ("[[rules]]\nid = \"r3\"\nregex = '''x'''\nfrobnicate = true\n", &["frobnicate"]),
        ("[[rules]]\nid = \"r4\"\ndescription = \"nothing to match\"\n", &["r4", "needs a regex, a path"]),
        ("[[rules]]\nid = \"r5\"\nregex = '''x'''\n[[rules.required]]\nid = \"r1\"\n", &["r5", "composite"]),
        ("[[rules]]\nid = \"r6\"\nregex = '''x'''\n[[rules.allowlists]]\ncondition = \"XOR\"\nregexes = ['''y''']\n", &["r6", "XOR"]),
        ("[[rules]]\nid = \"r7\"\nregex = '''x'''\n[[rules.allowlists]]\nregexTarget = \"file\"\nregexes = ['''y''']\n", &["r7", "regexTarget"]),
        ("[[rules]]\nid = \"dup\"\nregex = '''x'''\n[[rules]]\nid = \"dup\"\nregex = '''y'''\n", &["dup", "unique"]),
        ("[extend]\npath = \"other.toml\"\n", &["[extend] path"]),
        ("[[allowlists]]\ntargetRules = [\"ghost\"]\nregexes = ['''x''']\n", &["ghost", "targetRules"]),
        ("[[rules]]\nid = \"r8\"\nregex = '''x'''\nentropy = 9.5\n", &["r8", "entropy"]),
        ("not toml [[[", &["not a valid gitleaks rules file"]),
    ];
    for (text, needles) in cases {
        let e = Scanner::from_gitleaks_toml(text, true)
            .err()
            .unwrap_or_else(|| panic!("accepted: {text}"))
            .to_string();
        for n in *needles {
            assert!(e.contains(n), "error for {text:?} lacks {n:?}: {e}");
        }
    }
}

#[test]
fn a_rule_without_keywords_runs_on_the_whole_file_and_multiline_regexes_span_lines() {
    let rules = "[[rules]]\nid = \"nokw\"\nregex = '''zz-[0-9]{6}'''\n\n[[rules]]\nid = \"block\"\nregex = '''(?s)BEGIN-X(.{10,}?)END-X'''\nkeywords = [\"begin-x\"]\n";
    let sc = Scanner::from_gitleaks_toml(rules, false).unwrap();
    let f = sc.scan_blob("a", b"one\ntwo zz-123456\n");
    assert_eq!((f[0].rule.as_str(), f[0].line), ("nokw", 2));
    let f = sc.scan_blob("a", b"x\nBEGIN-X\nabcdefghijkl\nmnop\nEND-X\n");
    assert_eq!((f[0].rule.as_str(), f[0].line), ("block", 2));
}

#[test]
fn a_key_after_a_large_certificate_bundle_is_found_once_and_quickly() {
    let sc = Scanner::builtin();
    let mut text = String::new();
    for i in 0..2000 {
        text.push_str(&pem("CERTIFICATE", 1000 + i));
    }
    text.push_str(&pem("EC PRIVATE KEY", 7));
    let lines_before = text[..text.find("-----BEGIN EC").unwrap()]
        .matches('\n')
        .count() as u32;
    let t = std::time::Instant::now();
    let f = sc.scan_blob("bundle.txt", text.as_bytes());
    assert!(
        t.elapsed().as_secs() < 5,
        "{:?} for {} bytes",
        t.elapsed(),
        text.len()
    );
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(
        (f[0].rule.as_str(), f[0].line),
        ("private-key", lines_before + 1)
    );
}

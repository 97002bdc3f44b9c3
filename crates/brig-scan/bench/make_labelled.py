#!/usr/bin/env python3
"""Writes tests/labelled/cases.txt: brig-scan's labelled set (issue 5).

Positives are real-shaped but random (seeded) secrets; negatives are the
tricky non-secrets a scanner must leave alone. Format: a case starts with
`### positive|negative <id> <file name>`; its content runs to the next case.
Re-run to regenerate (deterministic): python3 bench/make_labelled.py
"""
import base64, hashlib, os, random, string, uuid

R = random.Random(20261201)
AZ = string.ascii_uppercase
AN = string.ascii_letters + string.digits
B64 = AN + "+/"
URL = AN + "-_"
HEX = "0123456789abcdef"

def rs(chars, n):
    return "".join(R.choice(chars) for _ in range(n))

def b64(nbytes):
    return base64.b64encode(bytes(R.randrange(256) for _ in range(nbytes))).decode()

def pem_body(nbytes, width=64):
    s = b64(nbytes)
    return "\n".join(s[i:i + width] for i in range(0, len(s), width))

def jwt():
    enc = lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")
    h = enc(b'{"alg":"HS256","typ":"JWT"}')
    p = enc(('{"sub":"%d","name":"svc-%s","iat":%d}' % (R.randrange(10**9), rs(string.ascii_lowercase, 6), 1700000000 + R.randrange(10**7))).encode())
    return f"{h}.{p}.{enc(bytes(R.randrange(256) for _ in range(32)))}"

akia = lambda p="AKIA": p + rs(AZ + "234567", 16)
aws_secret = lambda: rs(B64, 40)

P = []  # (id, file name, content)
N = []

# ------------------------------------------------------------------ positives
P += [
    ("aws-key-python", "settings.py", f'AWS_ACCESS_KEY_ID = "{akia()}"\n'),
    ("aws-key-json", "deploy/config.json", f'{{\n  "accessKeyId": "{akia()}",\n  "region": "eu-west-1"\n}}\n'),
    ("aws-sts-key", "notes.md", f"temporary creds: {akia('ASIA')} (expires in 1h)\n"),
    ("aws-key-yaml", "ci.yml", f"env:\n  AWS_ACCESS_KEY_ID: {akia()}\n"),
    ("aws-secret-ini", "aws.ini", f"[default]\naws_secret_access_key = {aws_secret()}\n"),
    ("aws-secret-js", "src/s3.js", f'const s3 = new S3({{ secretAccessKey: "{aws_secret()}" }});\n'),
    ("aws-secret-env", "ops/run.sh", f"export AWS_SECRET_ACCESS_KEY={aws_secret()}\n"),
    ("github-pat", "scripts/release.sh", f'curl -H "Authorization: token ghp_{rs(AN, 36)}" https://api.github.com/user\n'),
    ("github-oauth", "app/config.rb", f'GITHUB_OAUTH = "gho_{rs(AN, 36)}"\n'),
    ("github-app", "bot.py", f"installation_token = 'ghs_{rs(AN, 36)}'\n"),
    ("github-fine-grained", "README.dev", f"use github_pat_{rs(AN, 22)}_{rs(AN, 59)} for the mirror\n"),
    ("gitlab-pat", ".gitlab-ci.yml", f"variables:\n  GL_TOKEN: glpat-{rs(URL, 20)}\n"),
    ("gitlab-runner", "runner.toml", f'token = "glrt-{rs(URL, 20)}"\n'),
    ("slack-bot", "slack.go", f'const botToken = "xoxb-{R.randrange(10**11, 10**12)}-{R.randrange(10**12, 10**13)}-{rs(AN, 24)}"\n'),
    ("slack-webhook", "notify.py", f'WEBHOOK = "https://hooks.slack.com/services/T{rs(AZ + string.digits, 8)}/B{rs(AZ + string.digits, 10)}/{rs(AN, 24)}"\n'),
    ("stripe-live", "billing/keys.ts", f"export const stripeKey = 'sk_live_{rs(AN, 24)}';\n"),
    ("stripe-restricted", "billing.env.sh", f"STRIPE_RK=rk_live_{rs(AN, 32)}\n"),
    ("google-api", "web/maps.html", f'<script src="https://maps.googleapis.com/maps/api/js?key=AIza{rs(URL, 35)}"></script>\n'),
    ("google-oauth-secret", "oauth.py", f'client_secret = "GOCSPX-{rs(URL, 28)}"\n'),
    ("openai-legacy", "agent.py", f'openai.api_key = "sk-{rs(AN, 20)}T3BlbkFJ{rs(AN, 20)}"\n'),
    ("openai-project", "agent.ts", f'const key = "sk-proj-{rs(URL, 48)}T3BlbkFJ{rs(URL, 48)}";\n'),
    ("anthropic", "claude.py", f'client = Anthropic(api_key="sk-ant-api03-{rs(URL, 93)}AA")\n'),
    ("jwt", "tests/auth_test.go", f'tok := "{jwt()}"\n'),
    ("jwt-header", "http/req.http", f"GET /api/me\nAuthorization: Bearer {jwt()}\n"),
    ("password-python", "db.py", f'DB_PASSWORD = "{rs(AN, 10)}!{R.randrange(10, 99)}"\n'),
    ("password-yaml", "config/database.yml", f"production:\n  username: app\n  password: {rs(AN, 14)}\n"),
    ("password-env-style", "docker/run.sh", f"POSTGRES_PASSWORD={rs(AN, 16)}\n"),
    ("secret-assign-go", "main.go", f'var jwtSecret = "{rs(AN, 24)}"\n'),
    ("token-json", "settings.json", f'{{"api_token": "{rs(HEX, 32)}"}}\n'),
    ("apikey-properties", "app.properties", f"service.api-key={rs(AN, 32)}\n"),
    ("client-secret-rust", "src/oauth.rs", f'let client_secret = "{rs(AN, 8)}-{rs(AN, 8)}-{rs(AN, 8)}";\n'),
    ("postgres-url", "alembic.ini", f"sqlalchemy.url = postgresql://app:{rs(AN, 12)}@db.internal:5432/app\n"),
    ("mongodb-url", "server.js", f'mongoose.connect("mongodb+srv://admin:{rs(AN, 16)}@cluster0.ab1cd.mongodb.net/prod");\n'),
    ("redis-url", "worker.env.sh", f"REDIS_URL=redis://default:{rs(AN, 20)}@redis.internal:6379\n"),
    ("https-url-creds", "pip.conf", f"[global]\nindex-url = https://deploy:{rs(AN, 18)}@pypi.corp.example.net/simple\n"),
    ("basic-auth", "client.py", f'headers = {{"Authorization": "Basic {base64.b64encode(("svc:" + rs(AN, 14)).encode()).decode()}"}}\n'),
    ("rsa-pem", "deploy/key.txt", f"-----BEGIN RSA PRIVATE KEY-----\n{pem_body(600)}\n-----END RSA PRIVATE KEY-----\n"),
    ("openssh-key", "ci/deploy_key", f"-----BEGIN OPENSSH PRIVATE KEY-----\n{pem_body(300, 70)}\n-----END OPENSSH PRIVATE KEY-----\n"),
    ("ec-key", "certs/ec.txt", f"-----BEGIN EC PRIVATE KEY-----\n{pem_body(120)}\n-----END EC PRIVATE KEY-----\n"),
    ("pkcs8-in-rust", "src/tls.rs", f'const KEY: &str = "-----BEGIN PRIVATE KEY-----\n{pem_body(120)}\n-----END PRIVATE KEY-----\n";\n'),
    ("encrypted-pkcs8", "secrets/enc.txt", f"-----BEGIN ENCRYPTED PRIVATE KEY-----\n{pem_body(200)}\n-----END ENCRYPTED PRIVATE KEY-----\n"),
    ("gcp-service-account", "gcp/sa.txt", '{\n  "type": "service_account",\n  "private_key": "-----BEGIN PRIVATE KEY-----\\n' + b64(300) + '\\n-----END PRIVATE KEY-----\\n"\n}\n'),
    ("pgp-private", "keys/backup.asc.txt", f"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n{pem_body(400)}\n-----END PGP PRIVATE KEY BLOCK-----\n"),
    ("npm-token", "publish.sh", f"NPM_TOKEN=npm_{rs(AN, 36)} npm publish\n"),
    ("npmrc-auth", ".npmrc", f"//registry.npmjs.org/:_authToken={rs(HEX, 8)}-{rs(HEX, 4)}-{rs(HEX, 4)}-{rs(HEX, 4)}-{rs(HEX, 12)}\n"),
    ("pypi-token", "upload.sh", f"twine upload -u __token__ -p pypi-AgEIcHlwaS5vcmc{rs(URL, 70)} dist/*\n"),
    ("azure-storage", "appsettings.txt", f'"Storage": "DefaultEndpointsProtocol=https;AccountName=prodstore;AccountKey={b64(64)};EndpointSuffix=core.windows.net"\n'),
    ("sendgrid", "mail.py", f'sg = SendGridAPIClient("SG.{rs(URL, 22)}.{rs(URL, 43)}")\n'),
    ("telegram", "bot.js", f"const bot = new Telegraf('{R.randrange(10**9, 2 * 10**9)}:AA{rs(URL, 33)}');\n"),
    ("digitalocean", "do.tf.txt", f'provider "digitalocean" {{ token = "dop_v1_{rs(HEX, 64)}" }}\n'),
    ("huggingface", "train.py", f'login(token="hf_{rs(string.ascii_letters, 34)}")\n'),
    ("vault-token", "vault.sh", f"VAULT_TOKEN=hvs.{rs(URL, 91)}\n"),
    ("age-key", "keys.txt", "# created: 2026-01-01\nAGE-SECRET-KEY-1" + rs("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58) + "\n"),
    ("shopify", "shop.rb", f"ShopifyAPI::Context.setup(api_key: 'k', api_secret_key: 'shpss_{rs(HEX, 32)}')\n"),
    ("databricks", "job.py", f'DATABRICKS_TOKEN = "dapi{rs(HEX, 32)}"\n'),
    ("discord-webhook", "hook.py", f"URL = 'https://discord.com/api/webhooks/{R.randrange(10**17, 10**18)}/{rs(URL, 68)}'\n"),
    ("high-entropy-header", "fetch.ts", f'fetch(url, {{ headers: {{ "X-Auth": "{b64(33)}" }} }});\n'),
    ("high-entropy-signing", "webhooks.rb", f"SIGNING = ENV.fetch('SIG', '{rs(AN, 40)}') # webhook signature secret\n"),
    ("dotenv-file", ".env", "DEBUG=1\nPORT=8080\n"),
    ("dotenv-prod", "deploy/.env.production", "LOG_LEVEL=info\n"),
    ("id-rsa-file", "home/id_rsa", "not really a key, but the name says it is\n"),
    ("pem-file", "certs/server.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
    ("p12-file", "ios/dist.p12", "binary-ish\n"),
    ("credentials-json", "credentials.json", '{"installed": {"client_id": "x"}}\n'),
    ("git-credentials", ".git-credentials", "https://user@example.com\n"),
    # harder ones, some of which brig is expected to miss
    ("password-words", "mailer.py", 'smtp_password = "Correct-Horse-Battery-Staple"\n'),
    ("docker-config-auth", "docker-auth.json", '{"auths": {"ghcr.io": {"auth": "' + base64.b64encode(("deploy:ghp_" + rs(AN, 36)).encode()).decode() + '"}}}\n'),
    ("twilio-auth", "sms.py", f'TWILIO_AUTH = "SK{rs(HEX, 32)}"\n'),
    ("password-short-yaml", "conf/mail.yaml", "smtp:\n  pass: Tr0ub4dor&3x\n"),
]

# ------------------------------------------------------------------ negatives
u = lambda: str(uuid.UUID(int=R.getrandbits(128), version=4))
sha1 = lambda: hashlib.sha1(rs(AN, 20).encode()).hexdigest()
sha256 = lambda: hashlib.sha256(rs(AN, 20).encode()).hexdigest()
sri = lambda: "sha512-" + base64.b64encode(hashlib.sha512(rs(AN, 20).encode()).digest()).decode()

N += [
    ("uuid-rust", "src/ids.rs", f'const TENANT: &str = "{u()}";\nlet request_id = Uuid::parse_str("{u()}")?;\n'),
    ("uuid-token-word", "src/session.rs", f'let session_token_id = "{u()}"; // an id, not a secret\n'),
    ("uuid-json", "fixtures/users.json", f'[{{"id": "{u()}", "api_key_id": "{u()}"}}]\n'),
    ("uuid-yaml-secret-name", "k8s/deploy.yaml", f"metadata:\n  uid: {u()}\n  secretName: app-tls-secret\n"),
    ("git-sha-cargo", "Cargo.toml", f'[dependencies]\nfoo = {{ git = "https://github.com/foo/foo", rev = "{sha1()}" }}\n'),
    ("git-sha-changelog", "CHANGELOG.md", f"- fix token refresh ({sha1()})\n- bump keyring ({sha1()[:12]})\n"),
    ("git-sha-commit-var", "build.rs", f'println!("cargo:rustc-env=GIT_COMMIT={sha1()}");\nconst KEYMAP_COMMIT: &str = "{sha1()}";\n'),
    ("git-sha-token-line", "ci/pin.sh", f"# pinned action for the token step\nuses: actions/create-github-app-token@{sha1()}\n"),
    ("cargo-lock", "Cargo.lock", f'[[package]]\nname = "secret-service"\nversion = "3.0.1"\nsource = "registry+https://github.com/rust-lang/crates.io-index"\nchecksum = "{sha256()}"\n'),
    ("package-lock", "package-lock.json", f'{{\n  "node_modules/jsonwebtoken": {{\n    "version": "9.0.2",\n    "integrity": "{sri()}"\n  }}\n}}\n'),
    ("yarn-lock", "yarn.lock", f'keygrip@~1.1.0:\n  version "1.1.0"\n  integrity {sri()}\n'),
    ("go-sum", "go.sum", f"golang.org/x/oauth2 v0.15.0 h1:{base64.b64encode(hashlib.sha256(b'a').digest()).decode()}\ngolang.org/x/oauth2 v0.15.0/go.mod h1:{base64.b64encode(hashlib.sha256(b'b').digest()).decode()}\n"),
    ("go-sum-other-name", "deps/modules.txt", f"github.com/golang-jwt/jwt/v5 v5.2.0 h1:{base64.b64encode(hashlib.sha256(b'c').digest()).decode()}\n"),
    ("sri-in-html", "web/index.html", f'<script src="/auth.js" integrity="sha384-{base64.b64encode(hashlib.sha384(b"x").digest()).decode()}" crossorigin="anonymous"></script>\n'),
    ("pnpm-lock", "pnpm-lock.yaml", f"  /jws@4.0.0:\n    resolution: {{integrity: {sri()}}}\n"),
    ("aws-example-key", "docs/aws.md", "aws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"),
    ("aws-example-code", "tests/s3_test.py", 'client = boto3.client("s3", aws_access_key_id="AKIAIOSFODNN7EXAMPLE",\n    aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")\n'),
    ("azurite-key", "docker-compose.override.txt", '"AzureWebJobsStorage": "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1"\n'),
    ("base64-blob-long", "assets/font.txt", b64(900) + "\n"),
    ("base64-blob-wrapped", "tests/data/key_material.txt", "\n".join(b64(57) for _ in range(8)) + "\n"),
    ("base64-data-uri", "web/style.css", f".icon-key {{ background: url(data:image/png;base64,{b64(120)}); }}\n"),
    ("base64-test-vector", "tests/base64.rs", f'assert_eq!(encode(b"any carnal pleasure"), "YW55IGNhcm5hbCBwbGVhc3VyZQ==");\nlet blob = "{b64(150)}";\n'),
    ("certificate", "docs/ca.crt", f"-----BEGIN CERTIFICATE-----\n{pem_body(500)}\n-----END CERTIFICATE-----\n"),
    ("public-key", "keys/signing.pub", f"-----BEGIN PUBLIC KEY-----\n{pem_body(270)}\n-----END PUBLIC KEY-----\n"),
    ("ssh-public-key", "authorized_keys", f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{rs(B64, 43)} deploy@ci\nssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQ{rs(B64, 500)} ops@bastion\n"),
    ("sha256-fixture", "tests/hash_test.rs", f'assert_eq!(sha256_hex(b"abc"), "{hashlib.sha256(b"abc").hexdigest()}");\nlet key_hash = "{sha256()}";\n'),
    ("sha512-fixture", "tests/digest.py", f'EXPECTED_DIGEST = "{base64.b64encode(hashlib.sha512(b"token").digest()).decode()}"\n'),
    ("md5-etag", "tests/etag.go", f'const secretFileETag = "{hashlib.md5(b"x").hexdigest()}"\n'),
    ("hex-aes-test-vector", "tests/aes.rs", f'let key = hex!("{rs(HEX, 64)}");\nlet nonce = hex!("{rs(HEX, 24)}");\n'),
    ("docker-digest", "deploy/compose.yaml", f"services:\n  auth:\n    image: ghcr.io/acme/auth-token-svc@sha256:{sha256()}\n"),
    ("go-pseudo-version", "go.mod", "require github.com/zalando/go-keyring v0.2.4-0.20230321023759-10a507213a29\n"),
    ("placeholder-env-ref", "config.py", 'password = "${DB_PASSWORD}"\napi_key = os.environ["API_KEY"]\n'),
    ("placeholder-angle", "README.md", "Set `api_key = \"<your-api-key>\"` and `token: \"<TOKEN>\"` in config.\n"),
    ("placeholder-xxx", "docs/setup.md", 'export GITHUB_TOKEN="xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"\nSTRIPE_KEY=sk_test_xxxxxxxxxxxxxxxxxxxxxxxx\n'),
    ("placeholder-changeme", "docker-compose.yml", "environment:\n  POSTGRES_PASSWORD: changeme\n  REDIS_PASSWORD: ${REDIS_PASSWORD}\n"),
    ("placeholder-template", "helm/values.yaml", "auth:\n  secret: {{ .Values.auth.secret }}\n  token: \"{{ required \\\"token\\\" .Values.token }}\"\n"),
    ("env-example", ".env.example", "API_KEY=your-api-key-here\nDATABASE_URL=postgres://user:password@localhost/db\n"),
    ("env-var-ref", "ci/deploy.sh", 'export NPM_TOKEN=$NPM_TOKEN\ncurl -H "Authorization: Bearer $GITHUB_TOKEN" https://api.github.com\n'),
    ("code-token-lexer", "src/lexer.rs", "let token = self.next_token()?;\nmatch token.kind { TokenKind::Ident => {} _ => {} }\n"),
    ("code-password-struct", "src/auth.rs", "pub struct Login {\n    pub username: String,\n    pub password: SecretString,\n}\nfn verify_password(password: &str, hash: &PasswordHash) -> bool { todo!() }\n"),
    ("code-secret-settings", "app/settings.py", "SECRET_KEY = env('DJANGO_SECRET_KEY')\nsecret_key = settings.SECRET_KEY\n"),
    ("code-fstring-bearer", "client.py", 'headers = {"Authorization": f"Bearer {token}"}\n'),
    ("code-token-constants", "src/consts.rs", 'const TOKEN_KIND_IDENT: &str = "identifier_token";\npub const KEY_EVENT_RECORD: &str = "KEY_EVENT_RECORD_WINDOWS_CONSOLE";\n'),
    ("code-password-label", "ui/login.tsx", '<input type="password" name="password" placeholder="Password" autoComplete="current-password" />\n'),
    ("code-secret-path", "config/app.toml", 'secret_file = "/run/secrets/db_password"\ntoken_path = "./tokens/session.json"\n'),
    ("code-token-url", "src/endpoints.ts", 'export const TOKEN_URL = "https://oauth2.googleapis.com/token";\n'),
    ("token-type", "fixtures/oauth.json", '{"token_type": "bearer", "expires_in": 3600, "scope": "repo"}\n'),
    ("url-no-password", "docs/clone.md", "git clone https://github.com/acme/key-server.git\ncurl https://user@example.com/private/key\n"),
    ("url-placeholder-password", "docs/db.md", "DATABASE_URL=postgresql://user:password@localhost:5432/app\n"),
    ("k8s-secret-ref", "k8s/pod.yaml", "env:\n  - name: API_TOKEN\n    valueFrom:\n      secretKeyRef:\n        name: api-token-secret\n        key: token\n"),
    ("long-identifier", "src/windows.rs", "pub const CRYPT_KEY_PROV_INFO_PROP_ID_EXTENDED: u32 = 2;\nlet private_key_usage_period_oid = OID_PRIVATE_KEY_USAGE_PERIOD_V2;\n"),
    ("rust-path-words", "src/lib.rs", "use crate::keyring::backend::secret_service::SecretServiceKeyringBackendImpl;\n"),
    ("css-classes", "web/app.css", ".password-strength-meter-container-large { display: flex; }\n"),
    ("i18n-key", "locales/en.json", '{"auth.password.reset.confirmation_message_title": "Check your inbox"}\n'),
    ("version-strings", "pyproject.toml", '[tool.poetry.dependencies]\nkeyring = "^24.3.1"\npython-jose = {extras = ["cryptography"], version = "^3.3.0"}\n'),
    ("semver-token-crate", "deps.txt", "secret-service 3.0.1\ntoken-bucket 0.4.2\n"),
    ("jwt-truncated-doc", "docs/api.md", "The token looks like `eyJhbGciOiJIUzI1NiIs...` and expires after one hour.\n"),
    ("hash-in-test-name", "tests/keys.rs", '#[test]\nfn key_derivation_matches_rfc5869_vector_a1() { assert_eq!(okm, hex!("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf")); }\n'),
    ("random-nonsecret-id", "fixtures/ids.txt", f"order {rs(string.digits, 16)} shipped\ntracking 1Z{rs(AZ + string.digits, 16)}\n"),
    ("mime-boundary", "tests/mail.eml", f"Content-Type: multipart/mixed; boundary=\"{rs(AN, 28)}\"\n"),
    ("api-key-header-name", "src/http.rs", 'req.header("X-Api-Key", api_key);\nconst API_KEY_HEADER: &str = "x-api-key";\n'),
    ("password-policy", "docs/security.md", "Passwords must be at least 12 characters; tokens expire after 30 days.\n"),
    ("bcrypt-cost", "config/auth.yml", "password_hash_cost: 12\ntoken_ttl_seconds: 86400\n"),
    ("jwt-io-example", "docs/jwt.md", "Example: `eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c`\n"),
    ("stripe-doc-key", "docs/payments.md", "curl https://api.stripe.com/v1/charges -u sk_test_4eC39HqLyjWDarjtT1zdp7dc:\n"),
    ("cache-key-random", "src/cache.rs", f'let cache_key = "{rs(AN, 40)}"; // content-addressed build cache entry\n'),
    ("nonce-hex", "tests/chacha.rs", f'let nonce = "{rs(HEX, 48)}";\nlet key_id = {R.randrange(10**6)};\n'),
]

out = os.path.join(os.path.dirname(__file__), "..", "tests", "labelled", "cases.txt")
with open(out, "w") as f:
    f.write("# brig-scan labelled set: generated by bench/make_labelled.py (seeded).\n")
    f.write("# Every secret here is random and fake. `### label id file` starts a case.\n")
    for label, cases in (("positive", P), ("negative", N)):
        for cid, name, content in cases:
            assert "### " not in content
            f.write(f"### {label} {cid} {name}\n{content}")
print(f"{len(P)} positives, {len(N)} negatives -> {os.path.normpath(out)}")

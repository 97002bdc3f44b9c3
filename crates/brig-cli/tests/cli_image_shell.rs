//! Through the binary: an imported image (a `docker save` archive built
//! here from the host's dash and libc) runs a session, and `brig session
//! shell` gives a real PTY driven like a person would, through `script`.

mod cli_support;

use std::process::{Command, Stdio};

use cli_support::*;

/// A `docker save` archive with one layer: /bin/sh (dash) and the two
/// libraries it needs, and nothing else (no /usr).
const MAKE_ARCHIVE: &str = r#"
import hashlib, io, json, os, sys, tarfile
out = sys.argv[1]
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w") as t:
    for src, dst in [("/usr/bin/dash", "bin/sh"),
                     ("/lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libc.so.6"),
                     ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2")]:
        t.add(os.path.realpath(src), arcname=dst)
    info = tarfile.TarInfo("etc/mini-release"); data = b"mini image\n"; info.size = len(data)
    t.addfile(info, io.BytesIO(data))
layer = layer.getvalue()
diff = "sha256:" + hashlib.sha256(layer).hexdigest()
config = json.dumps({"architecture": "amd64", "os": "linux",
    "config": {"Env": ["PATH=/bin", "MINI=1"]},
    "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
cfg_name = hashlib.sha256(config).hexdigest() + ".json"
manifest = json.dumps([{"Config": cfg_name, "RepoTags": ["mini:1"], "Layers": ["l1/layer.tar"]}]).encode()
with tarfile.open(out, "w") as t:
    for name, data in [(cfg_name, config), ("l1/layer.tar", layer), ("manifest.json", manifest)]:
        info = tarfile.TarInfo(name); info.size = len(data)
        t.addfile(info, io.BytesIO(data))
"#;

#[test]
fn an_imported_image_runs_a_session() {
    let s = Server::start();
    let archive = s.dir.path().join("mini.tar");
    let st = Command::new("python3")
        .args(["-c", MAKE_ARCHIVE])
        .arg(&archive)
        .status()
        .unwrap();
    assert!(st.success());

    let img = s.json(&[
        "image",
        "import",
        archive.to_str().unwrap(),
        "--name",
        "mini",
    ]);
    let digest = img["digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"), "{img}");
    let list = s.json(&["image", "list"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "mini" && i["digest"] == digest.as_str()),
        "{list}"
    );

    let o = s.brig(&[
        "--json",
        "run",
        "--task",
        "IMG-1",
        "--image",
        "mini",
        "--",
        "/bin/sh",
        "-c",
        // Only the image's dash is there: shell builtins, no coreutils.
        "read l < /etc/mini-release; echo \"$l\"; echo /*; echo /usr/*; echo \"MINI=$MINI\"",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", text(&o.stderr), s.log());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let out = v["exec"]["stdout"].as_str().unwrap();
    assert!(out.starts_with("mini image\n"), "{out}");
    // The root is the image's: no host /usr in it; its Env is applied.
    assert!(out.contains("/bin /dev /etc /lib /lib64"), "{out}");
    assert!(
        out.contains("\n/usr/*\n"),
        "the host's /usr leaked in: {out}"
    );
    assert!(out.contains("MINI=1"), "{out}");
    assert_eq!(v["image_digest"], digest.as_str(), "{v}");

    // A bad archive is a clear error and nothing is imported.
    let bad = s.dir.path().join("bad.tar");
    std::fs::write(&bad, b"not a tarball").unwrap();
    let o = s.brig(&["image", "import", bad.to_str().unwrap(), "--name", "bad"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let list = s.json(&["image", "list"]);
    assert!(!list.to_string().contains("\"bad\""), "{list}");
}

#[test]
fn shell_is_a_real_pty() {
    let s = Server::start();
    let proj = s.dir.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    let id = s.json(&[
        "session",
        "create",
        "--repo",
        proj.to_str().unwrap(),
        "--task",
        "SHELL-1",
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    // `script` gives brig a terminal, as a person's would be; the shell
    // inside must see a tty of its own and exit with the code typed.
    let cmdline = format!(
        "{BRIG} --socket {} session shell {id}",
        s.socket().display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmdline, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            let mut i = c.stdin.take().unwrap();
            i.write_all(b"tty; echo answer=$((6*7)); exit 7\n")?;
            // Keep stdin open until the shell exits; script ends with it.
            let o = c.wait_with_output();
            drop(i);
            o
        })
        .unwrap();
    let so = text(&out.stdout);
    assert!(so.contains("/dev/pts/"), "no pty inside: {so}");
    assert!(so.contains("answer=42"), "{so}");
    assert_eq!(out.status.code(), Some(7), "{so}\n{}", text(&out.stderr));
    let o = s.brig(&["session", "destroy", &id]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

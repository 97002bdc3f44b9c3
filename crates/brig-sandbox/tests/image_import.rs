//! `brig image import`: real OCI layouts and `docker save` archives built
//! here, with real digests, and the ways bad ones must fail.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use brig_core::ErrorKind;
use brig_sandbox::image::{self, MOUNTPOINTS};
use brig_sandbox::SandboxPaths;
use sha2::{Digest, Sha256};

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn paths(dir: &Path) -> SandboxPaths {
    SandboxPaths {
        data_dir: dir.to_path_buf(),
        brig_exe: PathBuf::from("/proc/self/exe"),
    }
}

/// A tar entry for a test layer. Names are written raw so tests can build
/// the malicious paths the tar crate itself refuses to write.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Link(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Fifo(&'a str),
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        let (name, data, ty, mode, link): (&str, &[u8], tar::EntryType, u32, Option<&str>) = match e
        {
            E::Dir(n) => (n, b"", tar::EntryType::Directory, 0o755, None),
            E::File(n, d, m) => (n, d, tar::EntryType::Regular, *m, None),
            E::Link(n, t) => (n, b"", tar::EntryType::Symlink, 0o777, Some(t)),
            E::Hard(n, t) => (n, b"", tar::EntryType::Link, 0o644, Some(t)),
            E::Fifo(n) => (n, b"", tar::EntryType::Fifo, 0o644, None),
        };
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_uid(1234);
        h.set_gid(1234);
        h.set_size(data.len() as u64);
        if let Some(t) = link {
            h.set_link_name_literal(t).unwrap();
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn layer1() -> Vec<u8> {
    tar_of(&[
        E::Dir("etc/"),
        E::File("etc/hello", b"hello from layer 1\n", 0o644),
        E::File("etc/gone", b"whited out later\n", 0o644),
        E::Dir("usr/"),
        E::Dir("usr/bin/"),
        E::File("usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o4755),
        E::File("usr/bin/sgid", b"x", 0o2755),
        E::Dir("bin/"),
        E::Link("bin/tool", "/usr/bin/tool"),
        E::Hard("usr/bin/tool-hard", "usr/bin/tool"),
        E::Dir("opq/"),
        E::File("opq/old", b"old", 0o644),
        E::Fifo("dev-fifo"),
    ])
}

fn layer2() -> Vec<u8> {
    tar_of(&[
        E::File("etc/.wh.gone", b"", 0o644),
        E::Dir("opq/"),
        E::File("opq/new", b"new", 0o644),
        E::File("opq/.wh..wh..opq", b"", 0o644),
        E::File("etc/hello2", b"layer 2\n", 0o600),
    ])
}

struct Built {
    manifest_digest: String,
}

/// Write an OCI image layout of `layers` (uncompressed tars, gzip'd as blobs).
fn oci_layout(dir: &Path, layers: &[Vec<u8>]) -> Built {
    oci_layout_with(dir, layers, |_, gz| gz)
}

/// `blob` may replace a layer's stored bytes (index, gzip'd) to build
/// corrupt images whose digests are still consistent.
fn oci_layout_with(
    dir: &Path,
    layers: &[Vec<u8>],
    blob: impl Fn(usize, Vec<u8>) -> Vec<u8>,
) -> Built {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| -> String {
        let h = sha(b);
        fs::write(blobs.join(&h), b).unwrap();
        format!("sha256:{h}")
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        diff_ids.push(format!("sha256:{}", sha(l)));
        let stored = blob(i, gzip(l));
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": put(&stored),
            "size": stored.len(),
        }));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin", "FOO=bar=baz"], "WorkingDir": "/app"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let manifest_digest = put(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len()}],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    Built { manifest_digest }
}

/// A legacy `docker save` archive: manifest.json, `<config-hex>.json`,
/// `<id>/layer.tar` (the second one a symlink, as docker writes for shared layers).
fn docker_archive(path: &Path, layers: &[Vec<u8>]) {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha(l)))
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["FOO=docker"], "WorkingDir": ""},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let cfg_name = format!("{}.json", sha(&config));
    let mut b = tar::Builder::new(Vec::new());
    fn add(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    }
    let names: Vec<String> = (0..layers.len())
        .map(|i| format!("l{i}/layer.tar"))
        .collect();
    let manifest =
        serde_json::json!([{"Config": cfg_name, "RepoTags": ["demo:latest"], "Layers": names}]);
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    add(&mut b, &cfg_name, &config);
    for (i, l) in layers.iter().enumerate() {
        if i == layers.len() - 1 {
            add(&mut b, "shared/blob.tar", l);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, &names[i], "../shared/blob.tar")
                .unwrap();
        } else {
            add(&mut b, &names[i], l);
        }
    }
    fs::write(path, b.into_inner().unwrap()).unwrap();
}

fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", dir).unwrap();
    fs::write(out, b.into_inner().unwrap()).unwrap();
}

fn assert_nothing_left(data: &Path) {
    for sub in ["images/store", "images/tmp"] {
        let d = data.join(sub);
        if d.exists() {
            let left: Vec<_> = fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            assert!(left.is_empty(), "left behind in {sub}: {left:?}");
        }
    }
}

fn check_rootfs(root: &Path) {
    assert_eq!(
        fs::read(root.join("etc/hello")).unwrap(),
        b"hello from layer 1\n"
    );
    assert_eq!(fs::read(root.join("etc/hello2")).unwrap(), b"layer 2\n");
    assert!(
        fs::symlink_metadata(root.join("etc/gone")).is_err(),
        "whiteout not applied"
    );
    assert!(fs::symlink_metadata(root.join("etc/.wh.gone")).is_err());
    assert!(
        fs::symlink_metadata(root.join("opq/old")).is_err(),
        "opaque whiteout not applied"
    );
    assert_eq!(fs::read(root.join("opq/new")).unwrap(), b"new");
    assert!(fs::symlink_metadata(root.join("opq/.wh..wh..opq")).is_err());
    let tool = fs::metadata(root.join("usr/bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o755, "setuid kept");
    assert_eq!(
        fs::metadata(root.join("usr/bin/sgid")).unwrap().mode() & 0o7777,
        0o755,
        "setgid kept"
    );
    assert_eq!(tool.uid(), 0, "ownership preserved from the archive");
    assert_eq!(
        fs::metadata(root.join("etc/hello2")).unwrap().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::read_link(root.join("bin/tool")).unwrap(),
        Path::new("/usr/bin/tool")
    );
    assert_eq!(
        fs::metadata(root.join("usr/bin/tool-hard")).unwrap().ino(),
        tool.ino()
    );
    assert!(
        fs::symlink_metadata(root.join("dev-fifo")).is_err(),
        "fifo unpacked"
    );
    for m in MOUNTPOINTS {
        assert!(fs::symlink_metadata(root.join(m)).unwrap().is_dir(), "{m}");
    }
    assert!(root.join(".brig/brig").is_file());
}

#[test]
fn imports_an_oci_layout() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("layout");
    let built = oci_layout(&src, &[layer1(), layer2()]);
    let data = t.path().join("data");
    let p = paths(&data);

    let img = image::import(&p, &src, "demo").unwrap();
    assert_eq!(img.name, "demo");
    assert_eq!(img.digest, built.manifest_digest);
    let r = image::resolve(&p, "demo").unwrap();
    assert_eq!(r.image, img);
    assert!(r.binds.is_empty());
    assert_eq!(
        r.env,
        vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("FOO".into(), "bar=baz".into())
        ]
    );
    let hex = img.digest.strip_prefix("sha256:").unwrap();
    assert_eq!(r.rootfs, data.join("images/store").join(hex).join("rootfs"));
    check_rootfs(&r.rootfs);

    // The index records the name, digest, Env and WorkingDir.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(data.join("images/index.json")).unwrap()).unwrap();
    assert_eq!(index["images"]["demo"]["digest"], img.digest.as_str());
    assert_eq!(index["images"]["demo"]["working_dir"], "/app");

    // By full digest and by a 12-digit prefix.
    assert_eq!(image::resolve(&p, &img.digest).unwrap().rootfs, r.rootfs);
    assert_eq!(
        image::resolve(&p, &img.digest[..7 + 12])
            .unwrap()
            .image
            .digest,
        img.digest
    );

    // Importing again is a no-op with the same digest; a second name points
    // at the same store entry.
    let before = fs::metadata(&r.rootfs).unwrap().ino();
    assert_eq!(image::import(&p, &src, "demo").unwrap().digest, img.digest);
    assert_eq!(image::import(&p, &src, "demo2").unwrap().digest, img.digest);
    assert_eq!(fs::metadata(&r.rootfs).unwrap().ino(), before);
    assert_eq!(fs::read_dir(data.join("images/store")).unwrap().count(), 1);
    assert_eq!(fs::read_dir(data.join("images/tmp")).unwrap().count(), 0);

    let names: Vec<String> = image::list(&p)
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, vec!["host", "demo", "demo2"]);
}

#[test]
fn imports_a_docker_save_archive_and_an_oci_layout_in_a_tarball() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let p = paths(&data);
    let archive = t.path().join("image.tar");
    docker_archive(&archive, &[layer1(), layer2()]);
    let a = image::import(&p, &archive, "docker").unwrap();
    let r = image::resolve(&p, "docker").unwrap();
    check_rootfs(&r.rootfs);
    assert_eq!(
        r.env,
        vec![
            ("PATH".into(), image::DEFAULT_PATH.into()),
            ("FOO".into(), "docker".into())
        ]
    );
    assert_eq!(
        image::import(&p, &archive, "docker").unwrap().digest,
        a.digest
    );

    let layout = t.path().join("layout");
    let built = oci_layout(&layout, &[layer1(), layer2()]);
    let tarball = t.path().join("oci.tar");
    tar_dir(&layout, &tarball);
    let b = image::import(&p, &tarball, "oci-in-tar").unwrap();
    assert_eq!(b.digest, built.manifest_digest);
    check_rootfs(&image::resolve(&p, "oci-in-tar").unwrap().rootfs);
    // Gzip'd tarballs too.
    let gz = t.path().join("oci.tar.gz");
    fs::write(&gz, gzip(&fs::read(&tarball).unwrap())).unwrap();
    assert_eq!(
        image::import(&p, &gz, "oci-gz").unwrap().digest,
        built.manifest_digest
    );
    assert_eq!(fs::read_dir(data.join("images/tmp")).unwrap().count(), 0);
}

fn expect_invalid(p: &SandboxPaths, src: &Path, needle: &str) {
    let e = image::import(p, src, "bad").unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput, "{e}");
    assert!(
        e.message.contains(needle),
        "expected {needle:?} in: {}",
        e.message
    );
    assert_nothing_left(&p.data_dir);
    assert_eq!(
        image::resolve(p, "bad").unwrap_err().kind,
        ErrorKind::NotFound
    );
}

#[test]
fn tampered_blob_is_refused_by_name() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("layout");
    oci_layout(&src, &[layer1(), layer2()]);
    // Swap the second layer's bytes for other valid content.
    let idx: serde_json::Value =
        serde_json::from_slice(&fs::read(src.join("index.json")).unwrap()).unwrap();
    let mhex = idx["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap()
        .to_string();
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(src.join("blobs/sha256").join(&mhex)).unwrap()).unwrap();
    let layer = m["layers"][1]["digest"].as_str().unwrap().to_string();
    let path = src
        .join("blobs/sha256")
        .join(layer.strip_prefix("sha256:").unwrap());
    let evil = gzip(&tar_of(&[E::File("etc/passwd", b"evil", 0o644)]));
    fs::write(&path, &evil).unwrap();
    expect_invalid(&paths(&t.path().join("data")), &src, &layer);

    // A tampered manifest blob is named too.
    let src2 = t.path().join("layout2");
    oci_layout(&src2, &[layer1()]);
    let idx: serde_json::Value =
        serde_json::from_slice(&fs::read(src2.join("index.json")).unwrap()).unwrap();
    let mdig = idx["manifests"][0]["digest"].as_str().unwrap().to_string();
    let mpath = src2
        .join("blobs/sha256")
        .join(mdig.strip_prefix("sha256:").unwrap());
    let mut mb = fs::read(&mpath).unwrap();
    mb.push(b' ');
    fs::write(&mpath, mb).unwrap();
    expect_invalid(&paths(&t.path().join("data")), &src2, &mdig);
}

#[test]
fn path_traversal_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let p = paths(&data);
    let marker = format!("brig-escape-{}", std::process::id());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            tar_of(&[E::File("../etc/x", b"x", 0o644)]),
            "unsafe path",
        ),
        (
            "nested-dotdot",
            tar_of(&[E::File("a/../../x", b"x", 0o644)]),
            "unsafe path",
        ),
        (
            "absolute",
            tar_of(&[E::File("/etc/x", b"x", 0o644)]),
            "unsafe path",
        ),
        (
            "symlink-escape",
            tar_of(&[
                E::Link("esc", "../../../../../../../../tmp"),
                E::File(&format!("esc/{marker}"), b"x", 0o644),
            ]),
            "would leave the image root",
        ),
        (
            "absolute-symlink-escape",
            tar_of(&[
                E::Link("esc", "/../../tmp"),
                E::File(&format!("esc/{marker}"), b"x", 0o644),
            ]),
            "would leave the image root",
        ),
        (
            "hardlink-escape",
            tar_of(&[E::Hard("x", "../../etc/passwd")]),
            "unsafe path",
        ),
    ];
    for (name, layer, needle) in cases {
        let src = t.path().join(name);
        oci_layout(&src, &[layer1(), layer]);
        expect_invalid(&p, &src, needle);
        assert!(
            !Path::new("/tmp").join(&marker).exists(),
            "{name} wrote outside the root"
        );
    }
}

#[test]
fn corrupt_and_malformed_inputs_are_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let p = paths(&t.path().join("data"));

    // Corrupt gzip whose digest is nonetheless right.
    let src = t.path().join("corrupt");
    oci_layout_with(&src, &[layer1()], |_, mut gz| {
        let mid = gz.len() / 2;
        for b in &mut gz[mid..mid + 16] {
            *b ^= 0x55;
        }
        gz
    });
    expect_invalid(&p, &src, "gzip");

    // Not a tarball.
    let junk = t.path().join("junk.tar");
    fs::write(&junk, vec![b'x'; 4096]).unwrap();
    expect_invalid(&p, &junk, "not a tar archive");

    // A tarball with neither manifest.json nor an OCI layout.
    let noman = t.path().join("noman.tar");
    fs::write(&noman, tar_of(&[E::File("hello.txt", b"hi", 0o644)])).unwrap();
    expect_invalid(&p, &noman, "neither an OCI image layout");

    // A layer whose diff_id does not match.
    let src = t.path().join("diffid");
    oci_layout(&src, &[layer1()]);
    let cfg_fix = |v: &mut serde_json::Value| {
        v["rootfs"]["diff_ids"][0] = format!("sha256:{}", "a".repeat(64)).into()
    };
    rewrite_config(&src, cfg_fix);
    expect_invalid(&p, &src, "diff_id");

    // Missing source and bad names.
    expect_invalid(&p, &t.path().join("missing"), "cannot be read");
    let e = image::import(&p, &src, "host").unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    let e = image::import(&p, &src, "../x").unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
}

/// Edit the config of a single-manifest layout, re-hashing config, manifest and index.
fn rewrite_config(dir: &Path, f: impl Fn(&mut serde_json::Value)) {
    let blobs = dir.join("blobs/sha256");
    let mut idx: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mhex = idx["manifests"][0]["digest"].as_str().unwrap()[7..].to_string();
    let mut m: serde_json::Value =
        serde_json::from_slice(&fs::read(blobs.join(&mhex)).unwrap()).unwrap();
    let chex = m["config"]["digest"].as_str().unwrap()[7..].to_string();
    let mut c: serde_json::Value =
        serde_json::from_slice(&fs::read(blobs.join(&chex)).unwrap()).unwrap();
    f(&mut c);
    let cb = serde_json::to_vec(&c).unwrap();
    fs::write(blobs.join(sha(&cb)), &cb).unwrap();
    m["config"]["digest"] = format!("sha256:{}", sha(&cb)).into();
    m["config"]["size"] = cb.len().into();
    let mb = serde_json::to_vec(&m).unwrap();
    fs::write(blobs.join(sha(&mb)), &mb).unwrap();
    idx["manifests"][0]["digest"] = format!("sha256:{}", sha(&mb)).into();
    idx["manifests"][0]["size"] = mb.len().into();
    fs::write(dir.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
}

//! Debian bases for built images: a recipe's `debian.lock` (every package
//! of the closure with its version, the sha256 and size of its .deb and
//! its path on deb.debian.org), written by `recipes/debian-lock.sh`.
//!
//! `brig image build` fetches exactly these files inside the build session,
//! checks each against the lock here (on the host, before anything reads
//! them), unpacks them there with `dpkg-deb -x` (no maintainer script
//! runs), and [`crate::image::stage_debian_root`] makes the unpacked tree
//! a root with what the maintainer scripts would have generated.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use brig_core::{Error, Result};
use sha2::{Digest, Sha256};

/// The lock's file name in a recipe.
pub const LOCK_FILE: &str = "debian.lock";
/// What a Debian-based image records as its base.
pub const BASE: &str = "debian:bookworm";
/// Where the locked paths are.
pub const MIRROR: &str = "https://deb.debian.org";
/// How to write a lock (every error about one says so).
pub const REGENERATE: &str =
    "regenerate the lock with `recipes/debian-lock.sh PKG... > debian.lock` (docs/AGENTS.md#image-recipes)";
const MAX_PACKAGES: usize = 1000;
const MAX_DEB_BYTES: u64 = 256 << 20;
const MAX_TOTAL_BYTES: u64 = 2 << 30;

/// One locked package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
    /// Under [`MIRROR`], e.g. `debian/pool/main/b/bash/bash_5.2.15-2+b13_amd64.deb`.
    pub path: String,
}

/// A parsed, checked `debian.lock`.
#[derive(Clone, Debug)]
pub struct Lock {
    pub packages: Vec<Package>,
    /// `sha256:` over the lock file's bytes.
    pub digest: String,
}

fn plain(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

impl Lock {
    pub fn parse(text: &str) -> Result<Lock> {
        let bad = |n: usize, why: String| {
            Error::invalid(format!("{LOCK_FILE} line {n}: {why}")).hint(REGENERATE)
        };
        let mut packages: Vec<Package> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            let [name, version, sha, size, path] = f[..] else {
                return Err(bad(n, "expected: name version sha256:HEX size path".into()));
            };
            // Debian's own rules for names and versions (policy 5.6.1, 5.6.12).
            if !plain(name, b"+.-") || !name.as_bytes()[0].is_ascii_alphanumeric() {
                return Err(bad(n, format!("{name:?} is not a Debian package name")));
            }
            if !plain(version, b".+~:-") {
                return Err(bad(n, format!("{version:?} is not a Debian version")));
            }
            let hex = sha.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(bad(n, format!("{sha:?} is not sha256:<64 lowercase hex>")));
            }
            let size: u64 = size
                .parse()
                .ok()
                .filter(|s| (1..=MAX_DEB_BYTES).contains(s))
                .ok_or_else(|| bad(n, format!("size {size:?} is not 1 to {MAX_DEB_BYTES}")))?;
            let in_pool = ["debian/pool/", "debian-security/pool/"]
                .iter()
                .any(|p| path.starts_with(p));
            if !in_pool
                || !plain(path, b"._+~/-")
                || !path.ends_with(".deb")
                || path
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..")
            {
                return Err(bad(
                    n,
                    format!("{path:?} is not a .deb under debian/pool/ or debian-security/pool/"),
                ));
            }
            if packages.iter().any(|p| p.name == name) {
                return Err(bad(n, format!("{name} is locked twice")));
            }
            packages.push(Package {
                name: name.into(),
                version: version.into(),
                sha256: hex.into(),
                size,
                path: path.into(),
            });
        }
        if packages.is_empty() {
            return Err(Error::invalid(format!("{LOCK_FILE} locks no package")).hint(REGENERATE));
        }
        if packages.len() > MAX_PACKAGES {
            return Err(Error::invalid(format!(
                "{LOCK_FILE} locks more than {MAX_PACKAGES} packages"
            )));
        }
        let lock = Lock {
            packages,
            digest: format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes()))),
        };
        if lock.bytes() > MAX_TOTAL_BYTES {
            return Err(Error::invalid(format!(
                "{LOCK_FILE}'s packages are over {} GiB",
                MAX_TOTAL_BYTES >> 30
            )));
        }
        Ok(lock)
    }

    /// The bytes all the .debs take.
    pub fn bytes(&self) -> u64 {
        self.packages.iter().map(|p| p.size).sum()
    }

    /// The name each package is downloaded to (in lock order).
    pub fn file_name(&self, i: usize) -> String {
        format!("{i:04}-{}.deb", self.packages[i].name)
    }

    /// A curl config (`curl -K -`) that downloads every package into the
    /// current directory. Every value was checked to be plain characters,
    /// so none can break out of its quotes.
    pub fn curl_config(&self) -> String {
        let mut c = String::new();
        for (i, p) in self.packages.iter().enumerate() {
            c.push_str(&format!(
                "url = \"{MIRROR}/{}\"\noutput = \"{}\"\n",
                p.path,
                self.file_name(i)
            ));
        }
        c
    }

    /// Check each downloaded file in `dir` against the lock: a regular
    /// file (never followed through a link) of the locked size and sha256.
    pub fn verify(&self, dir: &Path) -> Result<()> {
        for (i, p) in self.packages.iter().enumerate() {
            let path = dir.join(self.file_name(i));
            let what = format!("Debian package {} {}", p.name, p.version);
            let (hex, len) = hash_regular(&path).map_err(|e| {
                Error::runtime(format!("{what} was not downloaded: {e}")).hint(REGENERATE)
            })?;
            if hex != p.sha256 || len != p.size {
                return Err(Error::invalid(format!(
                    "{what} ({MIRROR}/{}) does not match {LOCK_FILE}: its {len} bytes hash to sha256:{hex}, the lock says {} bytes with sha256:{}",
                    p.path, p.size, p.sha256
                ))
                .hint(format!("nothing was built; if the archive changed, {REGENERATE}")));
            }
        }
        Ok(())
    }
}

fn hash_regular(path: &Path) -> io::Result<(String, u64)> {
    let mut f = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut h = Sha256::new();
    let n = io::copy(&mut f, &mut h)?;
    Ok((hex::encode(h.finalize()), n))
}

/// The build session's download, in `/workspace/.debian/debs` (the lock's
/// curl config on stdin). Plain https through brig's proxy: the bytes are
/// checked against the lock afterwards, whatever the transport.
pub const FETCH: &str = "set -eu; mkdir -p .debian/debs; cd .debian/debs; \
curl --fail --silent --show-error --retry 3 --parallel --parallel-max 4 --proto '=https' -K -";

/// The build session's unpack, once the files are verified: each .deb (in
/// lock order) with `dpkg-deb -x` into `.debian/root` (no maintainer
/// script runs); without the documentation, manuals and translations (as
/// Debian's slim container images; the copyright files stay); then /bin,
/// /sbin and /lib* merged into /usr, as Debian 12 installs them.
pub const UNPACK: &str = "set -eu; cd .debian; mkdir root; \
for f in debs/*.deb; do dpkg-deb -x \"$f\" root; done; \
rm -rf root/usr/share/man root/usr/share/info root/usr/share/locale; \
if [ -d root/usr/share/doc ]; then find root/usr/share/doc ! -type d ! -name copyright -delete; fi; \
for d in bin sbin lib lib32 lib64 libx32; do \
  if [ -d root/$d ] && [ ! -L root/$d ]; then \
    mkdir -p root/usr/$d && cp -a root/$d/. root/usr/$d/ && rm -rf root/$d && ln -s usr/$d root/$d; \
  fi; \
done; rm -rf debs";

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "bash 5.2.15-2+b13 sha256:82130bb6a560cd2a7234d8018baf73f188f5dd56413d5aa0accc987b2197a6a1 1490652 debian/pool/main/b/bash/bash_5.2.15-2+b13_amd64.deb";

    #[test]
    fn locks_are_parsed_and_checked() {
        let l = Lock::parse(&format!("# comment\n\n{LINE}\n")).unwrap();
        assert_eq!(l.packages.len(), 1);
        assert_eq!(l.packages[0].version, "5.2.15-2+b13");
        assert_eq!(l.bytes(), 1490652);
        assert_eq!(l.file_name(0), "0000-bash.deb");
        assert!(l.curl_config().contains(
            "url = \"https://deb.debian.org/debian/pool/main/b/bash/bash_5.2.15-2+b13_amd64.deb\"\noutput = \"0000-bash.deb\"\n"
        ));
        for bad in [
            "",
            "# only a comment\n",
            &LINE.replace("sha256:8213", "sha256:X213"),
            &LINE.replace("sha256:8213", "md5:8213"),
            &LINE.replace("1490652", "0"),
            &LINE.replace("debian/pool/main/b", "debian/pool/../../etc"),
            &LINE.replace("debian/pool", "ubuntu/pool"),
            &LINE.replace(".deb", ".deb\"\nurl = \"http://evil/"),
            &LINE.replace("bash 5", "ba\"sh 5"),
            &format!("{LINE} extra"),
            &format!("{LINE}\n{LINE}"),
        ] {
            let e = Lock::parse(bad).unwrap_err();
            assert_eq!(e.kind, brig_core::ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn verify_names_the_package_and_refuses_links() {
        let t = tempfile::tempdir().unwrap();
        let body = b"not really a deb";
        let line = format!(
            "x 1.0 sha256:{} {} debian/pool/main/x/x_1.0_all.deb\n",
            hex::encode(Sha256::digest(body)),
            body.len()
        );
        let l = Lock::parse(&line).unwrap();
        let e = l.verify(t.path()).unwrap_err();
        assert!(e.message.contains("x 1.0 was not downloaded"), "{e}");
        std::fs::write(t.path().join("0000-x.deb"), b"other bytes").unwrap();
        let e = l.verify(t.path()).unwrap_err();
        assert!(e.message.contains("Debian package x 1.0"), "{e}");
        assert!(e.message.contains("does not match debian.lock"), "{e}");
        std::fs::write(t.path().join("real"), body).unwrap();
        std::fs::remove_file(t.path().join("0000-x.deb")).unwrap();
        std::os::unix::fs::symlink("real", t.path().join("0000-x.deb")).unwrap();
        assert!(l.verify(t.path()).is_err());
        std::fs::remove_file(t.path().join("0000-x.deb")).unwrap();
        std::fs::write(t.path().join("0000-x.deb"), body).unwrap();
        l.verify(t.path()).unwrap();
    }
}

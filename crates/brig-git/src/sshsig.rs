//! SSH signatures (OpenSSH's SSHSIG format, PROTOCOL.sshsig) made with brig's Ed25519
//! deployment key, the way `ssh-keygen -Y sign -n git` makes them, so that
//! `git verify-commit` with `gpg.format=ssh` and an allowed-signers file checks them.
//! No ssh-keygen at run time.
//!
//! The key file is an unencrypted OpenSSH private key (`-----BEGIN OPENSSH PRIVATE
//! KEY-----`), mode 0600, so `ssh-keygen -y -f FILE` prints its public half.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use brig_core::error::{Error, ErrorKind};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha512};

const KEY_TYPE: &str = "ssh-ed25519";
const MAGIC: &[u8] = b"SSHSIG";
const KEY_MAGIC: &[u8] = b"openssh-key-v1\0";
/// The comment of the key brig writes and of its public line.
pub const KEY_COMMENT: &str = "brig";

/// brig's commit-signing key.
pub struct SshSigner {
    key: SigningKey,
}

impl std::fmt::Debug for SshSigner {
    // The seed must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshSigner")
            .field("public", &self.public_key_openssh())
            .finish()
    }
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

fn wrap70(b64: &str) -> String {
    let mut out = String::with_capacity(b64.len() + b64.len() / 70 + 1);
    for chunk in b64.as_bytes().chunks(70) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out
}

/// A reader over SSH wire encoding (uint32 and length-prefixed strings).
struct Wire<'a>(&'a [u8]);

impl<'a> Wire<'a> {
    fn u32(&mut self) -> Option<u32> {
        let (h, t) = self.0.split_at_checked(4)?;
        self.0 = t;
        Some(u32::from_be_bytes(h.try_into().ok()?))
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        let (h, t) = self.0.split_at_checked(n)?;
        self.0 = t;
        Some(h)
    }
}

impl SshSigner {
    pub fn from_signing_key(key: SigningKey) -> Self {
        SshSigner { key }
    }

    /// A fresh random key (tests, or a caller that stores the key itself).
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        SshSigner {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Load the key at `path`, creating it (mode 0600, parent directory 0700) on first
    /// use. A key readable by group or others, or one that does not parse, is refused:
    /// brig neither signs with a key that may have leaked nor silently replaces one.
    pub fn load_or_create(path: &Path) -> Result<SshSigner, Error> {
        match std::fs::metadata(path) {
            Ok(m) => {
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(Error::new(
                        ErrorKind::GuardUnavailable,
                        format!(
                            "commit signing key {} is readable by group or others (mode {mode:o})",
                            path.display()
                        ),
                    )
                    .hint(
                        "treat the key as leaked: move it away, restart brig (a new key is \
                         made) and publish the new allowed-signers line; or chmod 600 it if \
                         you are sure",
                    ));
                }
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::internal(format!("cannot read {}: {e}", path.display())))?;
                Self::from_openssh(&text).ok_or_else(|| {
                    Error::new(
                        ErrorKind::GuardUnavailable,
                        format!(
                            "commit signing key {} is not an unencrypted OpenSSH ed25519 \
                             private key",
                            path.display()
                        ),
                    )
                    .hint("restore it from backup, or make one with `ssh-keygen -t ed25519 -N '' -f FILE`; brig will not overwrite it")
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let signer = Self::generate();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        Error::internal(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| {
                        Error::internal(format!("cannot create {}: {e}", path.display()))
                    })?;
                f.write_all(signer.to_openssh().as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(|e| {
                        Error::internal(format!("cannot write {}: {e}", path.display()))
                    })?;
                Ok(signer)
            }
            Err(e) => Err(Error::internal(format!(
                "cannot inspect {}: {e}",
                path.display()
            ))),
        }
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    fn public_blob(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(51);
        put_string(&mut b, KEY_TYPE.as_bytes());
        put_string(&mut b, self.key.verifying_key().as_bytes());
        b
    }

    /// `ssh-ed25519 AAAA... brig`, as in an authorized_keys or .pub file.
    pub fn public_key_openssh(&self) -> String {
        format!(
            "{KEY_TYPE} {} {KEY_COMMENT}",
            B64.encode(self.public_blob())
        )
    }

    /// The SHA256 fingerprint ssh-keygen -l prints (`SHA256:...`, unpadded base64).
    pub fn fingerprint(&self) -> String {
        let d = sha2::Sha256::digest(self.public_blob());
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(d)
        )
    }

    /// One line of an allowed-signers file (`gpg.ssh.allowedSignersFile`) that trusts
    /// this key for git signatures of `principal` (for example the bot's email).
    pub fn allowed_signers_line(&self, principal: &str) -> String {
        format!(
            "{principal} namespaces=\"git\" {KEY_TYPE} {}",
            B64.encode(self.public_blob())
        )
    }

    /// The key as an unencrypted OpenSSH private key file.
    pub fn to_openssh(&self) -> String {
        let pk = self.key.verifying_key().to_bytes();
        let mut check = [0u8; 4];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut check);
        let mut private = Vec::new();
        private.extend_from_slice(&check);
        private.extend_from_slice(&check);
        put_string(&mut private, KEY_TYPE.as_bytes());
        put_string(&mut private, &pk);
        let mut sk = Vec::with_capacity(64);
        sk.extend_from_slice(&self.key.to_bytes());
        sk.extend_from_slice(&pk);
        put_string(&mut private, &sk);
        sk.iter_mut().for_each(|b| *b = 0);
        put_string(&mut private, KEY_COMMENT.as_bytes());
        let mut pad = 1u8;
        while private.len() % 8 != 0 {
            private.push(pad);
            pad += 1;
        }
        let mut blob = KEY_MAGIC.to_vec();
        put_string(&mut blob, b"none");
        put_string(&mut blob, b"none");
        put_string(&mut blob, b"");
        blob.extend_from_slice(&1u32.to_be_bytes());
        put_string(&mut blob, &self.public_blob());
        put_string(&mut blob, &private);
        private.iter_mut().for_each(|b| *b = 0);
        let text = format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{}-----END OPENSSH PRIVATE KEY-----\n",
            wrap70(&B64.encode(&blob))
        );
        blob.iter_mut().for_each(|b| *b = 0);
        text
    }

    /// Parse an unencrypted OpenSSH ed25519 private key file.
    pub fn from_openssh(text: &str) -> Option<SshSigner> {
        let body: String = text
            .trim()
            .strip_prefix("-----BEGIN OPENSSH PRIVATE KEY-----")?
            .strip_suffix("-----END OPENSSH PRIVATE KEY-----")?
            .split_whitespace()
            .collect();
        let blob = B64.decode(body).ok()?;
        let mut w = Wire(blob.strip_prefix(KEY_MAGIC)?);
        if w.string()? != b"none" || w.string()? != b"none" {
            return None; // encrypted keys would need a passphrase brig does not have
        }
        w.string()?; // kdf options
        if w.u32()? != 1 {
            return None;
        }
        w.string()?; // public key, repeated in the private section
        let mut p = Wire(w.string()?);
        if p.u32()? != p.u32()? || p.string()? != KEY_TYPE.as_bytes() {
            return None;
        }
        let pk = p.string()?;
        let sk = p.string()?;
        if sk.len() != 64 || &sk[32..] != pk {
            return None;
        }
        let key = SigningKey::from_bytes(sk[..32].try_into().ok()?);
        if key.verifying_key().as_bytes() != pk {
            return None;
        }
        Some(SshSigner { key })
    }

    /// An armored SSH signature of `message` in `namespace` (sha512, as ssh-keygen).
    pub fn sign(&self, namespace: &str, message: &[u8]) -> String {
        let mut signed = MAGIC.to_vec();
        put_string(&mut signed, namespace.as_bytes());
        put_string(&mut signed, b"");
        put_string(&mut signed, b"sha512");
        put_string(&mut signed, &Sha512::digest(message));
        let sig = self.key.sign(&signed);
        let mut sig_blob = Vec::with_capacity(83);
        put_string(&mut sig_blob, KEY_TYPE.as_bytes());
        put_string(&mut sig_blob, &sig.to_bytes());

        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&1u32.to_be_bytes());
        put_string(&mut out, &self.public_blob());
        put_string(&mut out, namespace.as_bytes());
        put_string(&mut out, b"");
        put_string(&mut out, b"sha512");
        put_string(&mut out, &sig_blob);
        format!(
            "-----BEGIN SSH SIGNATURE-----\n{}-----END SSH SIGNATURE-----\n",
            wrap70(&B64.encode(out))
        )
    }
}

/// Check an armored SSH signature made by `key` over `message` in `namespace`
/// (brig's own check, used by tests and by anyone without ssh-keygen).
pub fn verify(key: &VerifyingKey, namespace: &str, message: &[u8], armored: &str) -> bool {
    let body: String = match armored
        .trim()
        .strip_prefix("-----BEGIN SSH SIGNATURE-----")
        .and_then(|s| s.strip_suffix("-----END SSH SIGNATURE-----"))
    {
        Some(b) => b.split_whitespace().collect(),
        None => return false,
    };
    let Ok(blob) = B64.decode(body) else {
        return false;
    };
    let check = || -> Option<bool> {
        let mut w = Wire(blob.strip_prefix(MAGIC)?);
        if w.u32()? != 1 {
            return Some(false);
        }
        let mut pk = Wire(w.string()?);
        if pk.string()? != KEY_TYPE.as_bytes() || pk.string()? != key.as_bytes() {
            return Some(false);
        }
        if w.string()? != namespace.as_bytes() {
            return Some(false);
        }
        w.string()?;
        let hash = w.string()?;
        let digest: Vec<u8> = match hash {
            b"sha512" => Sha512::digest(message).to_vec(),
            b"sha256" => sha2::Sha256::digest(message).to_vec(),
            _ => return Some(false),
        };
        let mut s = Wire(w.string()?);
        if s.string()? != KEY_TYPE.as_bytes() {
            return Some(false);
        }
        let sig = ed25519_dalek::Signature::from_slice(s.string()?).ok()?;
        let mut signed = MAGIC.to_vec();
        put_string(&mut signed, namespace.as_bytes());
        put_string(&mut signed, b"");
        put_string(&mut signed, hash);
        put_string(&mut signed, &digest);
        Some(key.verify_strict(&signed, &sig).is_ok())
    };
    check().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssh_key_round_trips_and_signatures_verify() {
        let s = SshSigner::generate();
        let text = s.to_openssh();
        let back = SshSigner::from_openssh(&text).expect("parses");
        assert_eq!(back.public_key_openssh(), s.public_key_openssh());
        assert!(s
            .public_key_openssh()
            .starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"));
        let sig = s.sign("git", b"hello");
        assert!(sig.starts_with("-----BEGIN SSH SIGNATURE-----\n"));
        assert!(verify(&s.verifying_key(), "git", b"hello", &sig));
        assert!(!verify(&s.verifying_key(), "git", b"hellO", &sig));
        assert!(!verify(&s.verifying_key(), "file", b"hello", &sig));
        assert!(!verify(
            &SshSigner::generate().verifying_key(),
            "git",
            b"hello",
            &sig
        ));
        // A tampered key file is refused, not half-read.
        assert!(SshSigner::from_openssh(&text.replace("AAAA", "AAAB")).is_none());
        assert!(SshSigner::from_openssh("not a key").is_none());
    }

    #[test]
    fn load_or_create_makes_a_0600_key_and_refuses_a_readable_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/git-signing.key");
        let a = SshSigner::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = SshSigner::load_or_create(&path).unwrap();
        assert_eq!(a.public_key_openssh(), b.public_key_openssh());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SshSigner::load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("readable by group or others"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "garbage").unwrap();
        let e = SshSigner::load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("not an unencrypted OpenSSH"), "{e}");
    }

    #[test]
    fn ssh_keygen_reads_the_key_file() {
        // ssh-keygen is only a test oracle here; brig never runs it.
        let Ok(out) = std::process::Command::new("ssh-keygen").arg("-?").output() else {
            return;
        };
        drop(out);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let s = SshSigner::load_or_create(&path).unwrap();
        let keygen = |cmd: &mut std::process::Command| {
            let out = cmd.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "ssh-keygen: {err}");
            out.stdout
        };
        let out = keygen(
            std::process::Command::new("ssh-keygen")
                .arg("-y")
                .arg("-f")
                .arg(&path),
        );
        let line = String::from_utf8(out).unwrap();
        let want = s.public_key_openssh();
        assert_eq!(
            line.split_whitespace().take(2).collect::<Vec<_>>(),
            want.split_whitespace().take(2).collect::<Vec<_>>()
        );
        // And ssh-keygen accepts brig's signature.
        let msg = dir.path().join("msg");
        std::fs::write(&msg, b"payload\n").unwrap();
        let sig = dir.path().join("msg.sig");
        std::fs::write(&sig, s.sign("git", b"payload\n")).unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::write(
            &allowed,
            format!("{}\n", s.allowed_signers_line("bot@brig")),
        )
        .unwrap();
        keygen(
            std::process::Command::new("ssh-keygen")
                .args(["-Y", "verify", "-n", "git", "-I", "bot@brig", "-f"])
                .arg(&allowed)
                .arg("-s")
                .arg(&sig)
                .stdin(std::fs::File::open(&msg).unwrap()),
        );
    }
}

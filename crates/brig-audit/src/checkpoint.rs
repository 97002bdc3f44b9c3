//! Signed checkpoints of the chain head and the Ed25519 key that signs them.
//!
//! The key lives at `<data_dir>/keys/journal-ed25519.key` (hex of the 32-byte
//! seed, mode 0600, created on first start); its public half is exported
//! next to it as `journal-ed25519.pub` (hex). Give the `.pub` to auditors
//! and SIEMs: a verifier that takes the public key from the same place an
//! attacker can write trusts the attacker.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use brig_core::{Error, ErrorKind, Result};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chain::canonical_json;

/// Domain separation: a checkpoint signature can never be replayed as a
/// signature over anything else brig signs.
const DOMAIN: &str = "brig-journal-checkpoint-v1\n";

/// A signed statement "the journal's event `seq` has hash `hash`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    /// RFC 3339 UTC, when it was signed.
    pub time: String,
    /// `ed25519:` + the first 16 hex digits of sha256(public key).
    pub key_id: String,
    /// Hex Ed25519 signature over `DOMAIN || canonical JSON of {hash, key_id, seq, time}`.
    pub signature: String,
}

impl Checkpoint {
    fn message(seq: i64, hash: &str, time: &str, key_id: &str) -> Vec<u8> {
        let body = serde_json::json!({"seq": seq, "hash": hash, "time": time, "key_id": key_id});
        let mut m = DOMAIN.as_bytes().to_vec();
        m.extend_from_slice(canonical_json(&body).as_bytes());
        m
    }

    /// Whether the signature is valid for `key` (and names that key).
    pub fn verify_signature(&self, key: &VerifyingKey) -> std::result::Result<(), String> {
        let want = key_id(key);
        if self.key_id != want {
            return Err(format!(
                "signed by key {}, but the public key given is {want}",
                self.key_id
            ));
        }
        let sig = hex::decode(&self.signature)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or_else(|| "the signature is not 64 bytes of hex".to_string())?;
        key.verify(
            &Self::message(self.seq, &self.hash, &self.time, &self.key_id),
            &sig,
        )
        .map_err(|_| "the signature does not match its content".to_string())
    }
}

/// The id of a public key.
pub fn key_id(key: &VerifyingKey) -> String {
    format!(
        "ed25519:{}",
        &hex::encode(Sha256::digest(key.as_bytes()))[..16]
    )
}

/// Parse a public key file (hex, as brig writes `journal-ed25519.pub`).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::not_found(format!("cannot read public key {}: {e}", path.display())).hint(
            "pass the journal's public key with --public-key (brig writes it as \
             <data_dir>/keys/journal-ed25519.pub)",
        )
    })?;
    parse_public_key(text.trim()).map_err(|e| e.context(path.display()))
}

pub fn parse_public_key(hex_text: &str) -> Result<VerifyingKey> {
    let bad = || {
        Error::invalid("not an Ed25519 public key (want 64 hex digits)")
            .hint("use the journal-ed25519.pub file brig wrote")
    };
    let bytes: [u8; 32] = hex::decode(hex_text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad())
}

/// brig's journal signing key.
pub struct JournalKey {
    signing: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for JournalKey {
    // The seed must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalKey")
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl JournalKey {
    pub fn key_path(data_dir: &Path) -> PathBuf {
        data_dir.join("keys").join("journal-ed25519.key")
    }
    pub fn public_path(data_dir: &Path) -> PathBuf {
        data_dir.join("keys").join("journal-ed25519.pub")
    }

    /// Load the key under `data_dir`, creating it (and exporting the public
    /// half) on first start. A key file readable by group or others, or one
    /// that does not parse, is refused: brig does not sign with a key that
    /// may have leaked, nor silently replace one.
    pub fn load_or_create(data_dir: &Path) -> Result<JournalKey> {
        let path = Self::key_path(data_dir);
        let dir = path.parent().expect("has a parent");
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::internal(format!("cannot create {}: {e}", dir.display()))
                .hint("data_dir must be writable by brig serve")
        })?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        let key = match std::fs::metadata(&path) {
            Ok(m) => {
                if m.permissions().mode() & 0o077 != 0 {
                    return Err(Error::new(
                        ErrorKind::GuardUnavailable,
                        format!(
                            "journal signing key {} is readable by group or others (mode {:o})",
                            path.display(),
                            m.permissions().mode() & 0o777
                        ),
                    )
                    .hint(
                        "treat the key as leaked: rotate it (move it away, restart brig, \
                           hand auditors the new .pub), or chmod 600 it if you are sure",
                    ));
                }
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| Error::internal(format!("cannot read {}: {e}", path.display())))?;
                let seed: [u8; 32] = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::GuardUnavailable,
                            format!("journal signing key {} is malformed", path.display()),
                        )
                        .hint("restore it from backup; brig will not overwrite it")
                    })?;
                SigningKey::from_bytes(&seed)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
                let key = SigningKey::from_bytes(&seed);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| {
                        Error::internal(format!("cannot create {}: {e}", path.display()))
                    })?;
                f.write_all(format!("{}\n", hex::encode(seed)).as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(|e| {
                        Error::internal(format!("cannot write {}: {e}", path.display()))
                    })?;
                key
            }
            Err(e) => {
                return Err(Error::internal(format!(
                    "cannot inspect {}: {e}",
                    path.display()
                )))
            }
        };
        let jk = JournalKey {
            key_id: key_id(&key.verifying_key()),
            signing: key,
        };
        // (Re)export the public half so it always matches the key in use.
        let pub_path = Self::public_path(data_dir);
        let want = format!("{}\n", hex::encode(jk.public().as_bytes()));
        if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(want.as_str()) {
            std::fs::write(&pub_path, want).map_err(|e| {
                Error::internal(format!("cannot write {}: {e}", pub_path.display()))
            })?;
        }
        Ok(jk)
    }

    /// A key from a seed (tests, benchmarks).
    pub fn from_seed(seed: [u8; 32]) -> JournalKey {
        let signing = SigningKey::from_bytes(&seed);
        JournalKey {
            key_id: key_id(&signing.verifying_key()),
            signing,
        }
    }

    pub fn public(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Sign "event `seq` has hash `hash`" now.
    pub fn sign(&self, seq: i64, hash: &str) -> Checkpoint {
        let time = brig_core::event::now_rfc3339();
        let sig = self
            .signing
            .sign(&Checkpoint::message(seq, hash, &time, &self.key_id));
        Checkpoint {
            seq,
            hash: hash.to_string(),
            time,
            key_id: self.key_id.clone(),
            signature: hex::encode(sig.to_bytes()),
        }
    }
}

/// Append a checkpoint to the JSONL file outside the database, durably.
pub fn append_checkpoint_file(path: &Path, cp: &Checkpoint) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut line = serde_json::to_string(cp)
        .map_err(|e| Error::internal(format!("encode checkpoint: {e}")))?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| Error::internal(format!("cannot open {}: {e}", path.display())))?;
    f.write_all(line.as_bytes())
        .and_then(|_| f.sync_data())
        .map_err(|e| Error::internal(format!("cannot append to {}: {e}", path.display())))
}

/// The `record` member that marks a checkpoint in a sink's output (the
/// file sink's JSONL, the message of every other sink): `{"record":
/// "checkpoint","seq","hash","time","key_id","signature"}`. Events carry no
/// `record` member.
pub const CHECKPOINT_RECORD: &str = "checkpoint";

/// What one line of a checkpoint file is.
fn parse_line(line: &str) -> std::result::Result<Option<Checkpoint>, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    match obj.get("record") {
        Some(serde_json::Value::String(r)) if r == CHECKPOINT_RECORD => {}
        Some(other) => return Err(format!("unknown record type {other}")),
        // A journal event, as a sink writes them between its checkpoints.
        None if !obj.contains_key("signature")
            && obj.contains_key("id")
            && obj.contains_key("action") =>
        {
            return Ok(None)
        }
        None => {}
    }
    serde_json::from_value(v)
        .map(Some)
        .map_err(|e| format!("not a checkpoint: {e}"))
}

/// Read a checkpoint file: brig's `checkpoints.jsonl` (one checkpoint per
/// line), or a file sink's JSONL (events, which are skipped, and
/// `{"record":"checkpoint",...}` lines). A missing file is an empty list; a
/// malformed line is an error that names it (a verifier must not skip
/// evidence).
pub fn read_checkpoint_file(path: &Path) -> Result<Vec<Checkpoint>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::internal(format!(
                "cannot read checkpoint file {}: {e}",
                path.display()
            )))
        }
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let cp = parse_line(line).map_err(|e| {
            Error::invalid(format!(
                "checkpoint file {} line {}: {e}",
                path.display(),
                i + 1
            ))
            .hint("the file is one JSON object per line as brig wrote it (checkpoints, or a file sink's events and checkpoints); a damaged line is itself evidence of tampering, or a line torn by a crash of brig mid-write (its record is repeated on a later line)")
        })?;
        out.extend(cp);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_0600_reused_and_exported() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = JournalKey::load_or_create(dir.path()).unwrap();
        let path = JournalKey::key_path(dir.path());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let k2 = JournalKey::load_or_create(dir.path()).unwrap();
        assert_eq!(k1.public(), k2.public());
        let public = read_public_key(&JournalKey::public_path(dir.path())).unwrap();
        assert_eq!(public, k1.public());
        assert!(!format!("{k1:?}").contains(&std::fs::read_to_string(&path).unwrap()[..16]));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = JournalKey::load_or_create(dir.path()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::GuardUnavailable);
        assert!(e.message.contains("readable by group"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "zz").unwrap();
        let e = JournalKey::load_or_create(dir.path()).unwrap_err();
        assert!(e.message.contains("malformed"), "{e}");
    }

    #[test]
    fn checkpoints_sign_verify_and_detect_edits() {
        let k = JournalKey::from_seed([7; 32]);
        let cp = k.sign(42, &"ab".repeat(32));
        cp.verify_signature(&k.public()).unwrap();
        for edit in [
            |c: &mut Checkpoint| c.seq = 41,
            |c: &mut Checkpoint| c.hash = "cd".repeat(32),
            |c: &mut Checkpoint| c.time = "2020-01-01T00:00:00Z".into(),
            |c: &mut Checkpoint| c.signature = "00".repeat(64),
            |c: &mut Checkpoint| c.signature = "nothex".into(),
        ] {
            let mut bad = cp.clone();
            edit(&mut bad);
            assert!(bad.verify_signature(&k.public()).is_err(), "{bad:?}");
        }
        let other = JournalKey::from_seed([8; 32]);
        let e = cp.verify_signature(&other.public()).unwrap_err();
        assert!(e.contains("signed by key"), "{e}");
    }

    #[test]
    fn checkpoint_file_round_trips_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal/checkpoints.jsonl");
        assert!(read_checkpoint_file(&path).unwrap().is_empty());
        let k = JournalKey::from_seed([1; 32]);
        let a = k.sign(1, GENESIS_LIKE);
        let b = k.sign(2, GENESIS_LIKE);
        append_checkpoint_file(&path, &a).unwrap();
        append_checkpoint_file(&path, &b).unwrap();
        assert_eq!(read_checkpoint_file(&path).unwrap(), vec![a, b]);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{broken\n").unwrap();
        let e = read_checkpoint_file(&path).unwrap_err();
        assert!(e.message.contains("line 3"), "{e}");
    }

    #[test]
    fn a_file_sinks_output_reads_as_its_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sink.jsonl");
        let k = JournalKey::from_seed([1; 32]);
        let a = k.sign(2, GENESIS_LIKE);
        let rec = |c: &Checkpoint| {
            let mut v = serde_json::to_value(c).unwrap();
            v["record"] = "checkpoint".into();
            v.to_string()
        };
        let event = r#"{"id":"e1","seq":2,"time":"2026-01-01T00:00:00Z","action":"exec.start","outcome":"info","details":{}}"#;
        std::fs::write(&path, format!("{event}\n{}\n{event}\n", rec(&a))).unwrap();
        assert_eq!(read_checkpoint_file(&path).unwrap(), vec![a.clone()]);
        // A checkpoint record that does not parse, or an unknown record
        // type, is an error, not skipped.
        std::fs::write(
            &path,
            format!("{event}\n{{\"record\":\"checkpoint\",\"seq\":2}}\n"),
        )
        .unwrap();
        let e = read_checkpoint_file(&path).unwrap_err();
        assert!(
            e.message.contains("line 2") && e.message.contains("not a checkpoint"),
            "{e}"
        );
        std::fs::write(&path, format!("{{\"record\":\"other\"}}\n{}\n", rec(&a))).unwrap();
        let e = read_checkpoint_file(&path).unwrap_err();
        assert!(e.message.contains("unknown record type"), "{e}");
        std::fs::write(&path, "{\"id\":\"e1\",\"act").unwrap();
        let e = read_checkpoint_file(&path).unwrap_err();
        assert!(e.message.contains("not JSON"), "{e}");
    }

    const GENESIS_LIKE: &str = crate::chain::GENESIS;
}

//! Re-writing an agent's commit as brig's: parents mapped to their signed versions,
//! author and committer set to the session's identity (dates kept), any signature
//! the agent made dropped, and brig's SSH signature added as the `gpgsig` header.
//! Tree, message, encoding and other headers are kept byte for byte.

use crate::sshsig::SshSigner;
use crate::Identity;

/// The unsigned rewrite of the raw commit object `raw` (`git cat-file commit`).
/// `map_parent` gives the id a parent has upstream (its signed version, or itself).
pub fn rewrite(
    raw: &[u8],
    identity: &Identity,
    map_parent: impl Fn(&str) -> String,
) -> Result<Vec<u8>, String> {
    identity.check()?;
    let (head, message) = match find(raw, b"\n\n") {
        Some(i) => (&raw[..i + 1], &raw[i + 2..]),
        None => (raw, &b""[..]),
    };
    let mut out = Vec::with_capacity(raw.len() + 64);
    let mut skipping = false; // inside a dropped multi-line header
    let (mut saw_tree, mut saw_author, mut saw_committer) = (false, false, false);
    for line in head.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b' ') {
            if !skipping {
                out.extend_from_slice(line);
            }
            continue;
        }
        skipping = false;
        let text = std::str::from_utf8(line)
            .map_err(|_| "commit header is not UTF-8".to_string())?
            .trim_end_matches('\n');
        let (key, value) = text.split_once(' ').unwrap_or((text, ""));
        match key {
            "tree" => {
                saw_tree = true;
                out.extend_from_slice(line);
            }
            "parent" => {
                let p = map_parent(value);
                out.extend_from_slice(format!("parent {p}\n").as_bytes());
            }
            "author" | "committer" => {
                // `Name <email> 1700000000 +0000`: keep the date after the last '>'.
                let date = value
                    .rfind('>')
                    .map(|i| &value[i + 1..])
                    .ok_or_else(|| format!("malformed {key} line in commit"))?;
                if key == "author" {
                    saw_author = true;
                } else {
                    saw_committer = true;
                }
                out.extend_from_slice(
                    format!("{key} {} <{}>{date}\n", identity.name, identity.email).as_bytes(),
                );
            }
            // The agent's own signature no longer matches (and is not brig's).
            "gpgsig" | "gpgsig-sha256" => skipping = true,
            _ => out.extend_from_slice(line),
        }
    }
    if !(saw_tree && saw_author && saw_committer) {
        return Err("commit lacks a tree, author or committer header".into());
    }
    out.push(b'\n');
    out.extend_from_slice(message);
    Ok(out)
}

/// `unsigned` with brig's SSH signature over it in a `gpgsig` header at the end of
/// the headers, where git puts it (git verifies the object minus that header).
pub fn sign(unsigned: &[u8], signer: &SshSigner) -> Vec<u8> {
    let sig = signer.sign("git", unsigned);
    let mut header = String::from("gpgsig");
    for (i, l) in sig.trim_end_matches('\n').split('\n').enumerate() {
        header.push(if i == 0 { ' ' } else { '\n' });
        if i > 0 {
            header.push(' ');
        }
        header.push_str(l);
    }
    header.push('\n');
    let end = find(unsigned, b"\n\n")
        .map(|i| i + 1)
        .unwrap_or(unsigned.len());
    let mut out = Vec::with_capacity(unsigned.len() + header.len());
    out.extend_from_slice(&unsigned[..end]);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&unsigned[end..]);
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &[u8] = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
parent 1111111111111111111111111111111111111111\n\
author Agent <agent@sandbox> 1700000000 +0200\n\
committer Agent <agent@sandbox> 1700000100 +0200\n\
gpgsig -----BEGIN SSH SIGNATURE-----\n abc\n -----END SSH SIGNATURE-----\n\
\n\
subject\n\nbody\n";

    #[test]
    fn rewrites_identity_and_parents_and_drops_the_old_signature() {
        let id = Identity {
            name: "brig bot".into(),
            email: "bot@brig.example".into(),
        };
        let out = rewrite(RAW, &id, |p| {
            assert_eq!(p, "1111111111111111111111111111111111111111");
            "2222222222222222222222222222222222222222".into()
        })
        .unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(
            text,
            "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
parent 2222222222222222222222222222222222222222\n\
author brig bot <bot@brig.example> 1700000000 +0200\n\
committer brig bot <bot@brig.example> 1700000100 +0200\n\
\n\
subject\n\nbody\n"
        );
        let signer = SshSigner::generate();
        let signed = String::from_utf8(sign(&out, &signer)).unwrap();
        assert!(signed.contains(
            "committer brig bot <bot@brig.example> 1700000100 +0200\ngpgsig -----BEGIN SSH SIGNATURE-----\n "
        ));
        assert!(signed.contains(" -----END SSH SIGNATURE-----\n\nsubject\n\nbody\n"));
    }

    #[test]
    fn refuses_bad_identities_and_headerless_commits() {
        let bad = Identity {
            name: "x>\nparent 1".into(),
            email: "a@b".into(),
        };
        assert!(rewrite(RAW, &bad, |p| p.into()).is_err());
        let id = Identity {
            name: "a".into(),
            email: "a@b".into(),
        };
        assert!(rewrite(b"tree x\n\nmsg", &id, |p| p.into()).is_err());
    }
}

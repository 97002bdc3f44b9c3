//! The push rules that are decided from the command list alone, before a byte of the
//! pack is read: which refs a session may update at all.

use serde::{Deserialize, Serialize};

use crate::SessionRepo;

pub const ZERO: &str = "0000000000000000000000000000000000000000";

/// The rule that decided a push (or one of its refs). Journaled as `git.push.<rule>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushRule {
    /// Only `refs/heads/*` can be pushed.
    NotABranch,
    Tag,
    Delete,
    BadRefName,
    Protected,
    BotPrefix,
    /// The client's old value is not what the gateway has.
    Stale,
    NotACommit,
    NonFastForward,
    PackSize,
    CorruptPack,
    /// The pack lacks objects the new commits need.
    Incomplete,
    TooManyCommits,
    Scan,
    /// brig's policy (Cedar) refused it.
    Policy,
    /// The scanner itself failed: fail closed.
    ScanUnavailable,
    Signing,
    Upstream,
    /// Another ref of the same push was rejected (a push is accepted whole or not at all).
    Atomic,
    BadRequest,
}

impl PushRule {
    pub fn as_str(self) -> &'static str {
        match self {
            PushRule::NotABranch => "not_a_branch",
            PushRule::Tag => "tag",
            PushRule::Delete => "delete",
            PushRule::BadRefName => "bad_ref_name",
            PushRule::Protected => "protected",
            PushRule::BotPrefix => "bot_prefix",
            PushRule::Stale => "stale",
            PushRule::NotACommit => "not_a_commit",
            PushRule::NonFastForward => "non_fast_forward",
            PushRule::PackSize => "pack_size",
            PushRule::CorruptPack => "corrupt_pack",
            PushRule::Incomplete => "incomplete",
            PushRule::TooManyCommits => "too_many_commits",
            PushRule::Scan => "scan",
            PushRule::Policy => "policy",
            PushRule::ScanUnavailable => "scan_unavailable",
            PushRule::Signing => "signing",
            PushRule::Upstream => "upstream",
            PushRule::Atomic => "atomic",
            PushRule::BadRequest => "bad_request",
        }
    }
    /// `git.push.<rule>`, the rule name in events and in the agent's messages.
    pub fn name(self) -> String {
        format!("git.push.{}", self.as_str())
    }
}

/// A glob over branch names: `*` matches within one path segment, `**` across
/// segments (`release/*`, `team/**`, `main`).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p {
            [] => n.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=n.len()).any(|i| go(rest, &n[i..])),
            [b'*', rest @ ..] => {
                let seg = n.iter().position(|&c| c == b'/').unwrap_or(n.len());
                (0..=seg).any(|i| go(rest, &n[i..]))
            }
            [c, rest @ ..] => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// `git check-ref-format`'s rules for a branch name, stricter where cheap (ASCII
/// printable only), so a name is safe in a ref, a log line and a command argument.
pub fn valid_branch_name(b: &str) -> bool {
    !b.is_empty()
        && b.len() <= 200
        && !b.starts_with('-')
        && !b.starts_with('/')
        && !b.ends_with('/')
        && !b.ends_with('.')
        && !b.contains("..")
        && !b.contains("//")
        && !b.contains("@{")
        && b != "@"
        && b.bytes()
            .all(|c| c.is_ascii_graphic() && !b"~^:?*[\\".contains(&c))
        && b.split('/')
            .all(|seg| !seg.starts_with('.') && !seg.ends_with(".lock"))
}

/// Why `refname` may not be updated from `old` to `new` by this session, decided
/// from names alone; `current` is the gateway's value of the ref, if it has one.
/// `non_bot_by_policy`: a branch outside the bot prefix is left to the policy
/// (which sees it as not a bot branch) instead of refused here.
pub fn check_command(
    repo: &SessionRepo,
    refname: &str,
    old: &str,
    new: &str,
    current: Option<&str>,
    non_bot_by_policy: bool,
) -> Result<(), (PushRule, String)> {
    let Some(branch) = refname.strip_prefix("refs/heads/") else {
        if refname.starts_with("refs/tags/") {
            return Err((
                PushRule::Tag,
                format!(
                    "tags are not accepted; push a branch under {}",
                    repo.bot_prefix
                ),
            ));
        }
        return Err((
            PushRule::NotABranch,
            format!(
                "only branches (refs/heads/...) can be pushed; push a branch under {}",
                repo.bot_prefix
            ),
        ));
    };
    if new == ZERO {
        return Err((
            PushRule::Delete,
            "deleting branches is not allowed through brig".into(),
        ));
    }
    if !valid_branch_name(branch) {
        return Err((
            PushRule::BadRefName,
            "invalid branch name (see git check-ref-format)".into(),
        ));
    }
    if let Some(p) = repo.protected_pattern(branch) {
        return Err((
            PushRule::Protected,
            format!(
                "branch {branch} is protected (pattern '{p}'); push to {}<name> and open a PR",
                repo.bot_prefix
            ),
        ));
    }
    if !non_bot_by_policy && !repo.is_bot_branch(branch) {
        return Err((
            PushRule::BotPrefix,
            format!(
                "branch {branch} is outside this session's bot prefix; push to {}<name>",
                repo.bot_prefix
            ),
        ));
    }
    let have = current.unwrap_or(ZERO);
    if have != old {
        return Err((
            PushRule::Stale,
            if have == ZERO {
                "the gateway has no such branch; fetch first".into()
            } else {
                format!(
                    "the gateway has {} for this branch; fetch first and push on top",
                    &have[..12.min(have.len())]
                )
            },
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("main", "main"));
        assert!(!glob_match("main", "main2"));
        assert!(glob_match("release/*", "release/1.0"));
        assert!(!glob_match("release/*", "release/1.0/x"));
        assert!(glob_match("release/**", "release/1.0/x"));
        assert!(glob_match("**", "anything/at/all"));
        assert!(glob_match("*-stable", "v2-stable"));
    }

    #[test]
    fn branch_names() {
        for ok in ["brig/s-1/fix", "a", "feature/x.y_z-1"] {
            assert!(valid_branch_name(ok), "{ok}");
        }
        for bad in [
            "", "-x", "a..b", "a/", "/a", "a.lock", "a/.b", "a b", "a~1", "a^", "a:b", "a@{1}",
            "@", "a\\b", "a*", "é",
        ] {
            assert!(!valid_branch_name(bad), "{bad}");
        }
    }

    #[test]
    fn commands() {
        let repo = SessionRepo::for_tests("/nonexistent", "app", "s-abcdefgh23");
        let one = "1111111111111111111111111111111111111111";
        let two = "2222222222222222222222222222222222222222";
        let rule = |r: &str, old: &str, new: &str, cur: Option<&str>| {
            check_command(&repo, r, old, new, cur, false)
                .err()
                .map(|e| e.0)
        };
        assert_eq!(
            rule("refs/heads/brig/s-abcdefgh23/x", ZERO, one, None),
            None
        );
        assert_eq!(
            rule("refs/heads/brig/s-abcdefgh23/x", one, two, Some(one)),
            None
        );
        assert_eq!(rule("refs/tags/v1", ZERO, one, None), Some(PushRule::Tag));
        assert_eq!(
            rule("refs/notes/x", ZERO, one, None),
            Some(PushRule::NotABranch)
        );
        assert_eq!(
            rule("refs/heads/brig/s-abcdefgh23/x", one, ZERO, Some(one)),
            Some(PushRule::Delete)
        );
        assert_eq!(
            rule("refs/heads/main", one, two, Some(one)),
            Some(PushRule::Protected)
        );
        assert_eq!(
            rule("refs/heads/release/1", ZERO, two, None),
            Some(PushRule::Protected)
        );
        assert_eq!(
            rule("refs/heads/feature", ZERO, two, None),
            Some(PushRule::BotPrefix)
        );
        assert_eq!(
            rule("refs/heads/brig/s-abcdefgh23/", ZERO, two, None),
            Some(PushRule::BadRefName)
        );
        assert_eq!(
            rule("refs/heads/brig/other/x", ZERO, two, None),
            Some(PushRule::BotPrefix)
        );
        assert_eq!(
            rule("refs/heads/brig/s-abcdefgh23/x", ZERO, two, Some(one)),
            Some(PushRule::Stale)
        );
        // Left to the policy: a non-bot branch passes the names check, a
        // protected one still does not.
        let by_policy = |r: &str| {
            check_command(&repo, r, ZERO, two, None, true)
                .err()
                .map(|e| e.0)
        };
        assert_eq!(by_policy("refs/heads/feature"), None);
        assert_eq!(by_policy("refs/heads/main"), Some(PushRule::Protected));
        assert_eq!(by_policy("refs/tags/v1"), Some(PushRule::Tag));
    }
}

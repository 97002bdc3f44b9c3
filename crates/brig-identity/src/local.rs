//! Local users: the embedded default, no IdP. The server reads a unix-socket
//! peer's uid (SO_PEERCRED, which the kernel fills in: a client cannot
//! claim another uid) and asks [`LocalUsers::peer_identity`] who that is.
//!
//! The rules, in order:
//! 1. uid 0 is `local:<root_user>` (default `local:root`): root on the host
//!    can read brig's database and keys anyway, so refusing it would only
//!    be theatre. Its roles are `[identity.users.<root_user>]`'s if that
//!    entry exists, else `default_roles` (`["admin"]`).
//! 2. Any other uid is looked up in the passwd database (getpwuid_r); a uid
//!    with no user name is refused.
//! 3. A user named in `[identity.users]` gets that entry's roles and groups.
//! 4. With no `[identity.users]` table at all, the user the server runs as
//!    (its effective uid: the one person of a single-user `brig demo`) gets
//!    `default_roles`.
//! 5. Everyone else is refused (`None`): fail closed.

use std::collections::BTreeMap;
use std::ffi::CStr;

use crate::config::{IdentityConfig, LocalUserConfig};
use crate::{IdentityError, Principal, Via};

/// Unix user names brig accepts (POSIX portable names, as useradd takes
/// them): `[a-z_][a-z0-9_.-]*`, at most 32 bytes.
pub(crate) fn check_user_name(name: &str) -> Result<(), IdentityError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::config(format!(
            "user name {name:?} is not a unix user name (a-z, 0-9, _ . -, starting with a letter or _, at most 32)"
        )))
    }
}

/// The user name of a uid, from the passwd database.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: passwd is plain data; getpwuid_r writes only into `pwd`
        // and `buf` (whose length it is told) and sets `result`.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points at a NUL-terminated string in buf.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        return name.to_str().ok().map(str::to_string);
    }
}

/// The local user table and the rules above.
#[derive(Clone, Debug)]
pub struct LocalUsers {
    users: BTreeMap<String, LocalUserConfig>,
    root_user: String,
    default_roles: Vec<String>,
    /// The server's effective uid (rule 4).
    owner: u32,
}

impl LocalUsers {
    /// From `[identity]`; the owner is this process's effective uid.
    pub fn from_config(cfg: &IdentityConfig) -> Result<LocalUsers, IdentityError> {
        cfg.validate()?;
        Ok(LocalUsers {
            users: cfg.users.clone(),
            root_user: cfg.local.root_user.clone(),
            default_roles: cfg.local.default_roles.clone(),
            // SAFETY: geteuid cannot fail.
            owner: unsafe { libc::geteuid() },
        })
    }

    /// Another owner uid than this process's (tests; a server that drops
    /// privileges after binding its socket).
    pub fn with_owner(mut self, uid: u32) -> LocalUsers {
        self.owner = uid;
        self
    }

    /// Who a unix-socket peer with this uid is, or `None` (refuse).
    pub fn peer_identity(&self, uid: u32) -> Option<Principal> {
        if uid == 0 {
            return Some(self.principal(&self.root_user.clone(), true));
        }
        let name = user_name(uid)?;
        check_user_name(&name).ok()?;
        if self.users.contains_key(&name) {
            return Some(self.principal(&name, false));
        }
        if self.users.is_empty() && uid == self.owner {
            return Some(self.principal(&name, true));
        }
        None
    }

    /// The principal of a user named in the table (or root's).
    pub fn user(&self, name: &str) -> Option<Principal> {
        if name == self.root_user {
            return Some(self.principal(name, true));
        }
        self.users
            .contains_key(name)
            .then(|| self.principal(name, false))
    }

    fn principal(&self, name: &str, defaults: bool) -> Principal {
        let entry = self.users.get(name);
        let (roles, groups, email) = match entry {
            Some(u) => (u.roles.clone(), u.groups.clone(), u.email.clone()),
            None if defaults => (self.default_roles.clone(), Vec::new(), None),
            None => (Vec::new(), Vec::new(), None),
        };
        Principal {
            id: Principal::local_id(name),
            name: name.to_string(),
            email,
            groups,
            roles,
            via: Via::Local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(toml: &str) -> LocalUsers {
        let cfg: IdentityConfig = toml::from_str(toml).unwrap();
        LocalUsers::from_config(&cfg).unwrap()
    }

    /// A uid of this machine with a user name that is not root (nobody, or
    /// any other), and that name.
    fn some_user() -> (u32, String) {
        for uid in [65534, 1, 2, 3, 1000] {
            if let Some(n) = user_name(uid) {
                if check_user_name(&n).is_ok() {
                    return (uid, n);
                }
            }
        }
        panic!("no non-root user in the passwd database");
    }

    #[test]
    fn passwd_lookup() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(4_000_000_000), None);
    }

    #[test]
    fn root_the_table_the_owner_and_everyone_else() {
        let (uid, name) = some_user();
        // No table: root and the owner are admins, others are refused.
        let u = users("").with_owner(uid);
        let root = u.peer_identity(0).unwrap();
        assert_eq!(
            (root.id.as_str(), root.roles.clone(), root.via),
            ("local:root", vec!["admin".to_string()], Via::Local)
        );
        assert_eq!(u.peer_identity(uid).unwrap().id, format!("local:{name}"));
        assert_eq!(users("").with_owner(12345).peer_identity(uid), None);
        assert_eq!(u.peer_identity(4_000_000_000), None, "no passwd entry");

        // A table: only its users (and root), with their roles; the owner
        // is nobody special any more.
        let u = users(&format!(
            "[local]\nroot_user = \"ops\"\n[users.{name}]\nroles = [\"developer\"]\ngroups = [\"team-a\"]\n[users.carol]\n"
        ))
        .with_owner(uid);
        let p = u.peer_identity(uid).unwrap();
        assert_eq!(
            (p.roles, p.groups),
            (vec!["developer".into()], vec!["team-a".into()])
        );
        assert_eq!(u.peer_identity(0).unwrap().id, "local:ops");
        assert_eq!(u.user("carol").unwrap().roles, Vec::<String>::new());
        assert_eq!(u.user("mallory"), None);
        let u = users("[users.carol]\n").with_owner(uid);
        assert_eq!(u.peer_identity(uid), None, "the owner outside a table");
    }
}

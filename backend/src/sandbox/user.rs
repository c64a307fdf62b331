// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `--user`: running as an unprivileged user once the sockets are bound.

use std::str::FromStr;

use log::info;

use super::sys;

/// `NAME`, `UID`, `NAME:GROUP` or `UID:GID`, as given (resolved by
/// [`drop_privileges`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSpec {
    user: String,
    group: Option<String>,
}

impl FromStr for UserSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        if user.is_empty() || group.is_some_and(str::is_empty) {
            return Err(format!("`{s}`: expected USER, UID, USER:GROUP or UID:GID"));
        }
        Ok(Self {
            user: user.into(),
            group: group.map(Into::into),
        })
    }
}

impl UserSpec {
    /// The uid and gid to run as.
    pub fn resolve(&self) -> Result<(u32, u32), String> {
        let user = match self.user.parse::<u32>() {
            Ok(uid) => sys::user_name(uid)
                .and_then(|n| sys::user_by_name(&n).ok().flatten())
                .map_or((uid, None), |(_, gid)| (uid, Some(gid))),
            Err(_) => match sys::user_by_name(&self.user) {
                Ok(Some((uid, gid))) => (uid, Some(gid)),
                Ok(None) => return Err(format!("--user: no user {}", self.user)),
                Err(e) => return Err(format!("--user {}: {e}", self.user)),
            },
        };
        let gid = match &self.group {
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => match sys::group_by_name(g) {
                    Ok(Some(gid)) => gid,
                    Ok(None) => return Err(format!("--user: no group {g}")),
                    Err(e) => return Err(format!("--user: group {g}: {e}")),
                },
            },
            None => user.1.ok_or_else(|| {
                format!(
                    "--user {}: no such user in the user database, so no primary \
                     group: give UID:GID",
                    self.user
                )
            })?,
        };
        Ok((user.0, gid))
    }
}

/// Becomes `spec`'s user and group for good: supplementary groups, group,
/// then user (glibc applies each to every thread), and checks that the
/// real and effective ids changed and that root cannot be regained.
pub fn drop_privileges(spec: &UserSpec) -> Result<(u32, u32), String> {
    let (uid, gid) = spec.resolve()?;
    sys::set_ids(uid, gid).map_err(|e| format!("--user {uid}:{gid}: {e}"))?;
    use rustix::process::{getegid, geteuid, getgid, getuid};
    let now = (
        getuid().as_raw(),
        geteuid().as_raw(),
        getgid().as_raw(),
        getegid().as_raw(),
    );
    if now != (uid, uid, gid, gid) {
        return Err(format!(
            "--user {uid}:{gid}: the ids are (uid {}, euid {}, gid {}, egid {}) after the change",
            now.0, now.1, now.2, now.3
        ));
    }
    let groups = sys::groups().map_err(|e| format!("getgroups: {e}"))?;
    if groups.iter().any(|&g| g != gid) {
        return Err(format!("--user: supplementary groups {groups:?} remain"));
    }
    if uid != 0 && sys::set_ids(0, 0).is_ok() {
        return Err("--user: root could be regained after the change".into());
    }
    info!("running as uid {uid}, gid {gid}");
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_specs() {
        let s: UserSpec = "nobody".parse().unwrap();
        assert_eq!((s.user.as_str(), s.group.as_deref()), ("nobody", None));
        let s: UserSpec = "65534:65534".parse().unwrap();
        assert_eq!(
            (s.user.as_str(), s.group.as_deref()),
            ("65534", Some("65534"))
        );
        for bad in ["", ":x", "x:", ":"] {
            assert!(bad.parse::<UserSpec>().is_err(), "{bad}");
        }
        assert_eq!("0".parse::<UserSpec>().unwrap().resolve().unwrap(), (0, 0));
        assert_eq!(
            "root:123".parse::<UserSpec>().unwrap().resolve().unwrap(),
            (0, 123)
        );
        assert!("no-such-user-here"
            .parse::<UserSpec>()
            .unwrap()
            .resolve()
            .is_err());
    }
}

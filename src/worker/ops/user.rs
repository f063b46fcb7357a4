//! The unprivileged account an external program runs as when the worker is root, so that the
//! program cannot read the platform's secret key (a 0600 file of the worker's user).
//!
//! A worker that is not root cannot change user: its programs run as the worker's own user and
//! can read what it reads. Give each worker a dedicated user then, with its key file 0600 and
//! nothing else of value readable by that user.

use std::ffi::{CStr, CString};
use std::io;

use super::OperationError;

/// Size of the buffer getpwnam_r(3) fills with the account's strings; a passwd entry is a few
/// hundred bytes, and ERANGE is reported should one not fit.
const PASSWD_BUFFER_BYTES: usize = 16 * 1024;

/// The user and primary group a program runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Account {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Whether this process may change the user of the programs it starts.
pub(super) fn worker_is_root() -> bool {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The account named `name`, or an error telling the operator which setting to fix. Refuses
/// root (uid 0): a program running as root could read the key.
pub(super) fn lookup(name: &str, operation: &str) -> Result<Account, OperationError> {
    let setting = format!("operations.{operation}.run_as");
    let c_name = CString::new(name)
        .map_err(|_| OperationError::Failed(format!("{setting} `{name}` holds a NUL byte; name a user")))?;
    // SAFETY: passwd is a plain C struct for which all zeroes is a valid value.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; PASSWD_BUFFER_BYTES];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buffer` outlives the use of `entry`'s
    // strings (none are read here), and its length is passed.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(OperationError::Failed(format!(
            "looking up the user `{name}` ({setting}): {}",
            io::Error::from_raw_os_error(rc)
        )));
    }
    if found.is_null() {
        return Err(OperationError::Failed(format!(
            "there is no user `{name}` on this machine; create it or set {setting} to an unprivileged user"
        )));
    }
    if entry.pw_uid == 0 {
        return Err(OperationError::Failed(format!(
            "{setting} `{name}` is root, who can read the platform's secret key; name an unprivileged user"
        )));
    }
    debug_assert!(!entry.pw_name.is_null());
    // SAFETY: getpwnam_r succeeded, so `pw_name` points at a NUL-terminated string in `buffer`.
    debug_assert_eq!(unsafe { CStr::from_ptr(entry.pw_name) }.to_bytes(), name.as_bytes());
    Ok(Account {
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_found_and_root_and_strangers_refused() {
        let nobody = lookup("nobody", "op").expect("nobody exists");
        assert_ne!(nobody.uid, 0);
        match lookup("root", "op") {
            Err(OperationError::Failed(why)) => assert!(why.contains("operations.op.run_as"), "{why}"),
            other => panic!("expected root refused, got {other:?}"),
        }
        match lookup("no-such-user-sagefed", "op") {
            Err(OperationError::Failed(why)) => assert!(why.contains("no user"), "{why}"),
            other => panic!("expected an unknown user refused, got {other:?}"),
        }
    }
}

//! Credentials for private repositories, from a Secret named by `spec.source.secretRef`:
//! `username` and `password` (or a token as `password`, or `bearerToken`) for https, and
//! `identity` (a private key) with `known_hosts` for ssh. SSH host keys are always checked
//! against `known_hosts`: a connection to an unknown or changed host key is refused.

use std::collections::BTreeMap;

use base64::Engine as _;
use git2::{CertificateCheckStatus, Cred, CredentialType, RemoteCallbacks};

/// What a Secret offers for one repository.
#[derive(Clone, Default)]
pub struct GitCredentials {
    pub username: Option<String>,
    pub password: Option<String>,
    /// A private key (OpenSSH or PEM).
    pub identity: Option<String>,
    /// Accepted SSH host keys, in OpenSSH's `known_hosts` format.
    pub known_hosts: Option<String>,
    /// Why the callbacks last refused to go on (libgit2 replaces the message with its own).
    refusal: std::sync::Arc<parking_lot::Mutex<Option<String>>>,
}

impl std::fmt::Debug for GitCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never print secrets
        f.debug_struct("GitCredentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .field("known_hosts", &self.known_hosts.is_some())
            .finish()
    }
}

impl GitCredentials {
    /// From a Secret's data.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let data: BTreeMap<&str, String> = entries
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(v).into_owned()))
            .collect();
        let text = |key: &str| data.get(key).filter(|v| !v.is_empty()).cloned();
        let mut credentials = Self {
            username: text("username"),
            password: text("password"),
            identity: text("identity"),
            known_hosts: text("known_hosts"),
            refusal: Default::default(),
        };
        if credentials.password.is_none()
            && let Some(token) = text("bearerToken")
        {
            credentials.password = Some(token);
            credentials
                .username
                .get_or_insert_with(|| "x-access-token".into());
        }
        credentials
    }

    /// Why the last connection was refused on our side (a host key, missing credentials).
    pub fn take_refusal(&self) -> Option<String> {
        self.refusal.lock().take()
    }

    fn refuse(&self, reason: String) -> git2::Error {
        let error = git2::Error::from_str(&reason);
        *self.refusal.lock() = Some(reason);
        error
    }

    /// Callbacks answering the server's questions: who we are, and whether its host key is the
    /// one we know.
    pub fn callbacks(&self) -> RemoteCallbacks<'_> {
        let mut callbacks = RemoteCallbacks::new();
        let mut attempts = 0;
        callbacks.credentials(move |_url, user_from_url, allowed| {
            attempts += 1;
            if attempts > 3 {
                return Err(self.refuse(
                    "authentication failed: the repository refused the credentials of the secretRef"
                        .into(),
                ));
            }
            let user = self.username.as_deref().or(user_from_url).unwrap_or("git");
            if allowed.contains(CredentialType::SSH_KEY)
                && let Some(key) = &self.identity
            {
                return Cred::ssh_key_from_memory(user, None, key, None);
            }
            if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
                && let Some(password) = &self.password
            {
                return Cred::userpass_plaintext(user, password);
            }
            if allowed.contains(CredentialType::USERNAME) {
                return Cred::username(user);
            }
            Err(self.refuse(
                "the repository asks for credentials, and no secretRef holds any it accepts".into(),
            ))
        });
        callbacks.certificate_check(move |cert, host| {
            let Some(hostkey) = cert.as_hostkey().and_then(|k| k.hostkey()) else {
                // TLS: libgit2's own verification against the system's CAs stands
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let known = self.known_hosts.as_deref().unwrap_or_default();
            if known_host_matches(known, host, hostkey) {
                Ok(CertificateCheckStatus::CertificateOk)
            } else if known.is_empty() {
                Err(self.refuse(format!(
                    "refusing ssh to {host}: the secretRef has no known_hosts (add the output of `ssh-keyscan {host}`)"
                )))
            } else {
                Err(self.refuse(format!(
                    "refusing ssh to {host}: its host key is not in known_hosts"
                )))
            }
        });
        callbacks
    }
}

/// Whether `known_hosts` (plain, unhashed entries) lists `key` (the raw key blob) for `host`
/// (entries as `host`, `[host]:port` or comma-separated lists of those).
pub fn known_host_matches(known_hosts: &str, host: &str, key: &[u8]) -> bool {
    known_hosts.lines().any(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
            return false;
        }
        let mut fields = line.split_whitespace();
        let (Some(hosts), Some(_kind), Some(blob)) = (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        let host_listed = hosts.split(',').any(|entry| {
            let name = entry
                .strip_prefix('[')
                .and_then(|e| e.split_once(']'))
                .map(|(h, _)| h)
                .unwrap_or(entry);
            name.eq_ignore_ascii_case(host)
        });
        host_listed
            && base64::engine::general_purpose::STANDARD
                .decode(blob)
                .is_ok_and(|decoded| decoded == key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_match_host_and_key() {
        let blob = base64::engine::general_purpose::STANDARD.encode(b"key-bytes");
        let other = base64::engine::general_purpose::STANDARD.encode(b"other");
        let file = format!(
            "# comment\n@revoked * ssh-ed25519 {blob}\ngit.example.com,10.0.0.1 ssh-ed25519 {blob}\n[127.0.0.1]:2222 ssh-ed25519 {other}\n"
        );
        assert!(known_host_matches(&file, "git.example.com", b"key-bytes"));
        assert!(known_host_matches(&file, "10.0.0.1", b"key-bytes"));
        assert!(known_host_matches(&file, "127.0.0.1", b"other"));
        assert!(
            !known_host_matches(&file, "127.0.0.1", b"key-bytes"),
            "a changed key is refused"
        );
        assert!(!known_host_matches(&file, "evil.example.com", b"key-bytes"));
        assert!(!known_host_matches("", "git.example.com", b"key-bytes"));
    }

    #[test]
    fn secrets_map_to_credentials_and_never_print() {
        let c = GitCredentials::from_entries([
            ("bearerToken", b"tok".as_slice()),
            (
                "identity",
                b"-----BEGIN OPENSSH PRIVATE KEY-----".as_slice(),
            ),
        ]);
        assert_eq!(c.username.as_deref(), Some("x-access-token"));
        assert_eq!(c.password.as_deref(), Some("tok"));
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("tok\"") && !shown.contains("OPENSSH"),
            "{shown}"
        );
        let basic = GitCredentials::from_entries([
            ("username", b"dana".as_slice()),
            ("password", b"pw".as_slice()),
        ]);
        assert_eq!(
            (basic.username.as_deref(), basic.password.as_deref()),
            (Some("dana"), Some("pw"))
        );
    }
}

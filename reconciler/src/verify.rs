//! Commit signature verification: OpenPGP signatures checked with `gpg` against trusted public
//! keys, SSH signatures with `ssh-keygen -Y verify` against trusted SSH keys. Either the head
//! commit alone or its whole ancestry must be signed by a trusted key; anything else is refused
//! before a single object is applied.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};

use git2::{Oid, Repository};
use parking_lot::Mutex;

/// Keys commits may be signed with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrustedKeys {
    /// ASCII-armored OpenPGP public keys.
    pub pgp: Vec<String>,
    /// SSH public keys (`ssh-ed25519 AAAA… comment`), one per entry.
    pub ssh: Vec<String>,
}

impl TrustedKeys {
    /// From a Secret's data: keys ending in `.asc`/`.gpg` are OpenPGP, `.pub` SSH (one key per
    /// line; `#` comments and blank lines skipped).
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut keys = Self::default();
        for (name, value) in entries {
            let text = String::from_utf8_lossy(value);
            if name.ends_with(".asc") || name.ends_with(".gpg") {
                keys.pgp.push(text.into_owned());
            } else if name.ends_with(".pub") {
                keys.ssh.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_owned),
                );
            }
        }
        keys
    }

    pub fn is_empty(&self) -> bool {
        self.pgp.is_empty() && self.ssh.is_empty()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("commit {sha} ({subject}) is not signed")]
    Unsigned { sha: String, subject: String },
    #[error("commit {sha} ({subject}) is not signed by a trusted key: {detail}")]
    Untrusted {
        sha: String,
        subject: String,
        detail: String,
    },
    #[error("cannot verify signatures: {0}")]
    Tool(String),
}

/// Verifies commits, remembering those already found good.
#[derive(Default)]
pub struct Verifier {
    good: Mutex<HashSet<(String, String)>>,
}

impl Verifier {
    /// Checks `head` (and with `ancestry`, every commit it descends from) in the repository at
    /// `git_dir`; returns who signed the head. Blocking.
    pub fn verify(
        &self,
        git_dir: &Path,
        head: &str,
        ancestry: bool,
        keys: &TrustedKeys,
    ) -> Result<String, VerifyError> {
        let repo = Repository::open(git_dir).map_err(|e| VerifyError::Tool(e.to_string()))?;
        let head_oid = Oid::from_str(head).map_err(|e| VerifyError::Tool(e.to_string()))?;
        let fingerprint = format!("{keys:?}");
        let mut commits = vec![head_oid];
        if ancestry {
            let mut walk = repo
                .revwalk()
                .map_err(|e| VerifyError::Tool(e.to_string()))?;
            walk.push(head_oid)
                .map_err(|e| VerifyError::Tool(e.to_string()))?;
            commits = walk.filter_map(Result::ok).take(100_000).collect();
        }
        let mut head_signer = String::new();
        for oid in commits {
            let sha = oid.to_string();
            let key = (sha.clone(), fingerprint.clone());
            if oid != head_oid && self.good.lock().contains(&key) {
                continue;
            }
            let signer = verify_commit(&repo, oid, keys)?;
            if oid == head_oid {
                head_signer = signer;
            }
            self.good.lock().insert(key);
        }
        Ok(head_signer)
    }
}

fn subject_of(repo: &Repository, oid: Oid) -> String {
    repo.find_commit(oid)
        .ok()
        .and_then(|c| c.summary().map(str::to_owned))
        .unwrap_or_default()
}

/// Verifies one commit's signature; the signer.
fn verify_commit(repo: &Repository, oid: Oid, keys: &TrustedKeys) -> Result<String, VerifyError> {
    let sha = oid.to_string();
    let Ok((signature, data)) = repo.extract_signature(&oid, None) else {
        return Err(VerifyError::Unsigned {
            sha,
            subject: subject_of(repo, oid),
        });
    };
    let signature = signature.as_str().unwrap_or_default().to_owned();
    let untrusted = |detail: String| VerifyError::Untrusted {
        sha: sha.clone(),
        subject: subject_of(repo, oid),
        detail,
    };
    let work = tempfile::tempdir().map_err(|e| VerifyError::Tool(e.to_string()))?;
    std::fs::write(work.path().join("data"), &*data)
        .map_err(|e| VerifyError::Tool(e.to_string()))?;
    std::fs::write(work.path().join("sig"), &signature)
        .map_err(|e| VerifyError::Tool(e.to_string()))?;
    if signature.contains("BEGIN SSH SIGNATURE") {
        if keys.ssh.is_empty() {
            return Err(untrusted("SSH-signed, and no SSH key is trusted".into()));
        }
        let allowed: String = keys
            .ssh
            .iter()
            .map(|key| format!("trusted namespaces=\"git\" {key}\n"))
            .collect();
        std::fs::write(work.path().join("allowed"), allowed)
            .map_err(|e| VerifyError::Tool(e.to_string()))?;
        let output = Command::new("ssh-keygen")
            .args(["-Y", "verify", "-n", "git", "-I", "trusted", "-f"])
            .arg(work.path().join("allowed"))
            .arg("-s")
            .arg(work.path().join("sig"))
            .stdin(
                std::fs::File::open(work.path().join("data"))
                    .map_err(|e| VerifyError::Tool(e.to_string()))?,
            )
            .output()
            .map_err(|e| VerifyError::Tool(format!("ssh-keygen: {e}")))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            // Good "git" signature for trusted with ED25519 key SHA256:…
            let said = format!("{stdout}{stderr}");
            let key = said
                .lines()
                .find_map(|l| l.split_once(" with ").map(|(_, k)| k.trim()))
                .unwrap_or("key");
            return Ok(format!("ssh {key}"));
        }
        return Err(untrusted(first_line(
            &stderr,
            "the SSH signature does not verify",
        )));
    }
    if signature.contains("BEGIN PGP SIGNATURE") {
        if keys.pgp.is_empty() {
            return Err(untrusted(
                "OpenPGP-signed, and no OpenPGP key is trusted".into(),
            ));
        }
        let home = work.path().join("gnupg");
        std::fs::create_dir(&home).map_err(|e| VerifyError::Tool(e.to_string()))?;
        for (index, key) in keys.pgp.iter().enumerate() {
            let file = work.path().join(format!("key{index}.asc"));
            std::fs::write(&file, key).map_err(|e| VerifyError::Tool(e.to_string()))?;
            let imported = Command::new("gpg")
                .arg("--homedir")
                .arg(&home)
                .args(["--batch", "--quiet", "--import"])
                .arg(&file)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| VerifyError::Tool(format!("gpg: {e}")))?;
            if !imported.success() {
                return Err(VerifyError::Tool(format!(
                    "trusted OpenPGP key {index} does not import"
                )));
            }
        }
        let output = Command::new("gpg")
            .arg("--homedir")
            .arg(&home)
            .args(["--batch", "--status-fd", "1", "--verify"])
            .arg(work.path().join("sig"))
            .arg(work.path().join("data"))
            .output()
            .map_err(|e| VerifyError::Tool(format!("gpg: {e}")))?;
        let status = String::from_utf8_lossy(&output.stdout);
        let good = status
            .lines()
            .find_map(|l| l.strip_prefix("[GNUPG:] GOODSIG "));
        let valid = status
            .lines()
            .find_map(|l| l.strip_prefix("[GNUPG:] VALIDSIG "));
        return match (good, valid) {
            (Some(good), Some(valid)) => {
                let user = good.split_once(' ').map(|(_, u)| u).unwrap_or(good);
                let fingerprint = valid.split(' ').next().unwrap_or_default();
                Ok(format!("pgp {user} ({fingerprint})"))
            }
            _ => Err(untrusted(if status.contains("NO_PUBKEY") {
                "signed with an OpenPGP key that is not trusted".into()
            } else {
                "the OpenPGP signature does not verify".into()
            })),
        };
    }
    Err(untrusted("unknown signature format".into()))
}

fn first_line(text: &str, fallback: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(fallback)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, program: &str, args: &[&str]) -> String {
        // the repository sits in the temporary directory that holds the keyring
        let home = if dir.ends_with("repo") {
            dir.parent().unwrap()
        } else {
            dir
        };
        let output = Command::new(program)
            .current_dir(dir)
            .args(args)
            .env("GNUPGHOME", home.join("gnupg"))
            .env("GIT_AUTHOR_NAME", "Signer")
            .env("GIT_AUTHOR_EMAIL", "signer@example.com")
            .env("GIT_COMMITTER_NAME", "Signer")
            .env("GIT_COMMITTER_EMAIL", "signer@example.com")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    #[test]
    fn ssh_and_openpgp_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("gnupg")).unwrap();
        std::fs::set_permissions(
            d.join("gnupg"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        run(d, "git", &["init", "-q", "-b", "main", "repo"]);
        let repo = d.join("repo");
        run(
            d,
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-f", "key"],
        );
        run(
            d,
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-f", "other"],
        );
        run(
            d,
            "gpg",
            &[
                "--batch",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--quick-gen-key",
                "Signer <signer@example.com>",
                "ed25519",
                "sign",
                "never",
            ],
        );
        let commit = |args: &[&str], message: &str| {
            std::fs::write(repo.join("f"), message).unwrap();
            run(&repo, "git", &["add", "f"]);
            let mut all = args.to_vec();
            all.extend(["commit", "-q", "-m", message]);
            run(&repo, "git", &all);
            run(&repo, "git", &["rev-parse", "HEAD"])
        };
        let key = d.join("key.pub").display().to_string();
        let ssh_signing = ["-c", "gpg.format=ssh", "-c"];
        let unsigned = commit(&[], "unsigned");
        let ssh_config = format!("user.signingkey={key}");
        let mut ssh_args = ssh_signing.to_vec();
        ssh_args.extend([ssh_config.as_str(), "-c", "commit.gpgsign=true"]);
        let ssh_signed = commit(&ssh_args, "ssh signed");
        let pgp_signed = commit(
            &[
                "-c",
                "commit.gpgsign=true",
                "-c",
                "user.signingkey=signer@example.com",
            ],
            "pgp signed",
        );

        let ssh_key = std::fs::read(d.join("key.pub")).unwrap();
        let other_key = std::fs::read(d.join("other.pub")).unwrap();
        let pgp_key = run(d, "gpg", &["--armor", "--export", "signer@example.com"]);
        let trusted = TrustedKeys::from_entries([
            ("dev.pub", ssh_key.as_slice()),
            ("release.asc", pgp_key.as_bytes()),
            ("README", b"x".as_slice()),
        ]);
        assert_eq!((trusted.ssh.len(), trusted.pgp.len()), (1, 1));
        let verifier = Verifier::default();
        let git_dir = repo.join(".git");

        let signer = verifier
            .verify(&git_dir, &ssh_signed, false, &trusted)
            .unwrap();
        assert!(signer.starts_with("ssh ED25519 key SHA256:"), "{signer}");
        let signer = verifier
            .verify(&git_dir, &pgp_signed, false, &trusted)
            .unwrap();
        assert!(
            signer.starts_with("pgp Signer <signer@example.com>"),
            "{signer}"
        );
        assert!(matches!(
            verifier.verify(&git_dir, &unsigned, false, &trusted),
            Err(VerifyError::Unsigned { .. })
        ));
        // strict: the head is signed but an ancestor is not
        let err = verifier
            .verify(&git_dir, &pgp_signed, true, &trusted)
            .unwrap_err();
        assert_eq!(
            err,
            VerifyError::Unsigned {
                sha: unsigned,
                subject: "unsigned".into()
            }
        );
        // signed, but by a key nobody trusts
        let strangers = TrustedKeys::from_entries([("other.pub", other_key.as_slice())]);
        assert!(matches!(
            verifier.verify(&git_dir, &ssh_signed, false, &strangers),
            Err(VerifyError::Untrusted { .. })
        ));
        assert!(matches!(
            verifier.verify(&git_dir, &pgp_signed, false, &strangers),
            Err(VerifyError::Untrusted { .. })
        ));
    }
}

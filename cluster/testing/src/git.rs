//! Real Git for GitOps tests and benchmarks: a bare origin with a work tree that commits and
//! pushes to it through the git CLI, `git daemon` serving repositories over git://, and the
//! plain HTTP requests and signatures a forge's webhook sends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hmac::Mac;

/// Runs git in `dir` as a fixed author; its trimmed standard output.
///
/// # Panics
/// When git fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Dana Developer")
        .env("GIT_AUTHOR_EMAIL", "dana@example.com")
        .env("GIT_COMMITTER_NAME", "Dana Developer")
        .env("GIT_COMMITTER_EMAIL", "dana@example.com")
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A bare origin (`ROOT/NAME.git`, branch main) and a work tree (`ROOT/NAME`) pushing to it.
pub struct GitRepo {
    pub origin: PathBuf,
    pub work: PathBuf,
}

impl GitRepo {
    /// # Panics
    /// When git fails.
    #[must_use]
    pub fn new(root: &Path, name: &str) -> Self {
        let origin = root.join(format!("{name}.git"));
        let work = root.join(name);
        std::fs::create_dir_all(&work).expect("work tree");
        git(
            root,
            &[
                "init",
                "-q",
                "--bare",
                "-b",
                "main",
                &origin.to_string_lossy(),
            ],
        );
        git(&work, &["init", "-q", "-b", "main"]);
        git(
            &work,
            &["remote", "add", "origin", &origin.to_string_lossy()],
        );
        Self { origin, work }
    }

    /// Writes a file of the work tree.
    ///
    /// # Panics
    /// When it cannot be written.
    pub fn write(&self, path: &str, content: &str) {
        let path = self.work.join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("directories");
        std::fs::write(path, content).expect("file written");
    }

    /// Removes a file of the work tree.
    ///
    /// # Panics
    /// When it does not exist.
    pub fn remove(&self, path: &str) {
        std::fs::remove_file(self.work.join(path)).expect("file removed");
    }

    /// Commits everything (with `extra` git options, e.g. signing) without pushing; the SHA.
    pub fn commit_only(&self, message: &str, extra: &[&str]) -> String {
        git(&self.work, &["add", "-A"]);
        let mut args = extra.to_vec();
        args.extend(["commit", "-q", "-m", message]);
        git(&self.work, &args);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Pushes main to the origin.
    pub fn push(&self) {
        git(&self.work, &["push", "-q", "origin", "HEAD:main"]);
    }

    /// Commits everything and pushes; the new commit's SHA.
    pub fn commit(&self, message: &str) -> String {
        let sha = self.commit_only(message, &[]);
        self.push();
        sha
    }

    /// `file://` URL of the origin.
    #[must_use]
    pub fn url(&self) -> String {
        format!("file://{}", self.origin.display())
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
///
/// # Panics
/// When no port can be bound.
#[must_use]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
///
/// # Panics
/// When `what` does not listen within 10 s.
pub fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `git daemon` serving every repository under a directory over git://; killed on drop.
pub struct GitDaemon {
    child: Child,
    pub port: u16,
}

impl GitDaemon {
    /// # Panics
    /// When it does not start listening within 10 s.
    #[must_use]
    pub fn start(base: &Path) -> Self {
        let port = free_port();
        let child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        wait_listening(port, "git daemon");
        Self { child, port }
    }

    /// The git:// URL of the repository `NAME.git` under the base directory.
    #[must_use]
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}.git", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plain HTTP/1.1 request; the status code and body.
///
/// # Panics
/// When the server cannot be reached.
#[must_use]
pub fn http(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("request");
    stream.write_all(body).expect("body");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    split_response(&response)
}

/// One `GET` over HTTP/1.0, so the body comes unchunked whatever the server; the status code
/// and body.
///
/// # Panics
/// When the server cannot be reached.
#[must_use]
pub fn get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    split_response(&response)
}

/// `POST path` with `body` of `content_type` to 127.0.0.1:`port` over HTTP/1.0: the status and
/// the body.
///
/// # Panics
/// When nothing answers.
#[must_use]
pub fn post(port: u16, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .write_all(
            format!(
                "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .expect("request");
    stream.write_all(body).expect("request body");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    split_response(&response)
}

fn split_response(response: &str) -> (u16, String) {
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The `X-Hub-Signature-256` value GitHub sends for `body`.
///
/// # Panics
/// Never: HMAC takes keys of any length.
#[must_use]
pub fn github_signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

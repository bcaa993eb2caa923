//! A real etcd server for tests, started from the `etcd` binary (Debian's `etcd-server`).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An etcd process on loopback with its own data directory; killed on drop.
pub struct EtcdProcess {
    child: Child,
    client_url: String,
    _data_dir: tempfile::TempDir,
}

/// A free TCP port on 127.0.0.1 (released before returning, so it is only very likely free).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind")
}

impl EtcdProcess {
    /// Starts etcd and waits until it accepts connections (retrying with new ports when a
    /// port turned out to be taken).
    ///
    /// # Panics
    /// When the `etcd` binary is missing (run `scripts/setup.sh`) or etcd does not start.
    pub fn start() -> Self {
        let mut last_error = String::new();
        for _ in 0..5 {
            match Self::try_start() {
                Ok(process) => return process,
                Err(error) => last_error = error,
            }
        }
        panic!("etcd did not start: {last_error}");
    }

    fn try_start() -> Result<Self, String> {
        let data_dir = tempfile::Builder::new()
            .prefix("kelson-etcd")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let client_port = free_port();
        let peer_port = free_port();
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log_path = data_dir.path().join("etcd.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let child = Command::new("etcd")
            .arg("--name=kelson-test")
            .arg(format!(
                "--data-dir={}",
                data_dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=kelson-test={peer_url}"))
            .arg("--log-level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd is not installed: run scripts/setup.sh (it installs etcd-server)");
        let mut process = Self {
            child,
            client_url,
            _data_dir: data_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        // the port was free when chosen, but another process may take it first: wait for
        // etcd's own health answer, not just any listener
        while !answers_health(client_port) {
            let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Ok(Some(status)) = process.child.try_wait() {
                return Err(format!("etcd exited with {status}: {}", log()));
            }
            if Instant::now() > deadline {
                return Err(format!("etcd did not listen within 30 s: {}", log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(process)
    }

    /// The client URL, e.g. `http://127.0.0.1:23790`.
    #[must_use]
    pub fn client_url(&self) -> &str {
        &self.client_url
    }
}

/// Whether an etcd answers `/health` on `port` of 127.0.0.1.
fn answers_health(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\"")
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

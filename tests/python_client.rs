//! End-to-end: the official Kubernetes Python client (`pip install kubernetes`) against the
//! `kelson server` binary: CRUD on a few kinds and a watch (tests/python/client_crud.py).

use std::path::Path;
use std::process::Command;

use kelson_testing::KelsonProcess;

#[test]
fn official_python_client() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server =
        KelsonProcess::server(Path::new(env!("CARGO_BIN_EXE_kelson")), &data, &[]).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client_crud.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(server.kubeconfig())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

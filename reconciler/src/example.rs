//! The example a new cluster starts with: a local bare repository holding `examples/gitops`
//! (compiled into the binary) and the Application `example` following its `apps/hello` path, so
//! the first `git push` a user makes deploys within a second.

use std::collections::BTreeMap;
use std::path::Path;

use git2::{Oid, Repository, Signature};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::api::{Application, FIELD_MANAGER};

/// The example repository's files: path → content.
pub const FILES: [(&str, &str); 4] = [
    ("README.md", include_str!("../../examples/gitops/README.md")),
    (
        "apps/hello/deployment.yaml",
        include_str!("../../examples/gitops/apps/hello/deployment.yaml"),
    ),
    (
        "apps/hello/page.yaml",
        include_str!("../../examples/gitops/apps/hello/page.yaml"),
    ),
    (
        "apps/hello/service.yaml",
        include_str!("../../examples/gitops/apps/hello/service.yaml"),
    ),
];

/// A directory of a tree being built.
#[derive(Default)]
struct Dir {
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeMap<String, Dir>,
}

fn write_tree(repo: &Repository, dir: &Dir) -> Result<Oid, git2::Error> {
    let mut builder = repo.treebuilder(None)?;
    for (name, content) in &dir.files {
        builder.insert(name, repo.blob(content)?, 0o100644)?;
    }
    for (name, sub) in &dir.dirs {
        builder.insert(name, write_tree(repo, sub)?, 0o040000)?;
    }
    builder.write()
}

/// Creates the bare repository `dir` with `files` as its first commit on `main`, unless it
/// exists already (the user's pushes are never overwritten).
pub fn seed(dir: &Path, files: &[(&str, &str)]) -> Result<bool, git2::Error> {
    if dir.join("HEAD").exists() {
        return Ok(false);
    }
    let repo = Repository::init_bare(dir)?;
    let mut root = Dir::default();
    for (path, content) in files {
        let mut parts: Vec<&str> = path.split('/').collect();
        let name = parts.pop().unwrap_or_default();
        let mut node = &mut root;
        for part in parts {
            node = node.dirs.entry(part.to_owned()).or_default();
        }
        node.files
            .insert(name.to_owned(), content.as_bytes().to_vec());
    }
    let tree = repo.find_tree(write_tree(&repo, &root)?)?;
    let who = Signature::now("Kelson", "kelson@localhost")?;
    repo.commit(
        Some("refs/heads/main"),
        &who,
        &who,
        "The example application",
        &tree,
        &[],
    )?;
    repo.set_head("refs/heads/main")?;
    Ok(true)
}

/// Seeds `DATA/example.git` and applies the Application `example` (namespace `default`,
/// deploying into namespace `hello`); the repository's path.
pub async fn install(client: &Client, gitops_dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let repository = gitops_dir.join("example.git");
    std::fs::create_dir_all(gitops_dir)?;
    let target = repository.clone();
    tokio::task::spawn_blocking(move || seed(&target, &FILES)).await??;
    let app = json!({
        "apiVersion": "gitops.kelson.dev/v1alpha1",
        "kind": "Application",
        "metadata": {"name": "example", "namespace": "default"},
        "spec": {
            "source": {
                "repoURL": format!("file://{}", repository.display()),
                "targetRevision": "main",
                "path": "apps/hello",
            },
            "destination": {"namespace": "hello"},
            "syncPolicy": {
                "automated": {"prune": true, "selfHeal": true},
                "syncOptions": ["CreateNamespace=true"],
            },
        },
    });
    let api: Api<Application> = Api::namespaced(client.clone(), "default");
    api.patch(
        "example",
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&app),
    )
    .await?;
    Ok(repository)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_is_a_cloneable_repository_with_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let repo_dir = dir.path().join("example.git");
        assert!(seed(&repo_dir, &FILES).unwrap());
        assert!(
            !seed(&repo_dir, &FILES).unwrap(),
            "an existing repository is kept"
        );
        let sources = crate::source::Sources::new(dir.path().join("cache"));
        let url = format!("file://{}", repo_dir.display());
        let commit = sources.resolve(&url, "HEAD", None).unwrap();
        let files = sources.read(&url, &commit.sha, "apps/hello", true).unwrap();
        assert_eq!(files.len(), 3);
        let manifests = crate::render::render_directory(
            &files,
            &crate::render::Selection::new(None, None).unwrap(),
        )
        .unwrap();
        let kinds: Vec<_> = manifests.iter().map(|m| m.kind().to_owned()).collect();
        assert_eq!(kinds, ["Deployment", "ConfigMap", "Service"]);
    }
}

//! Rendering: the files of a revision become Kubernetes objects. Plain directories of YAML
//! (multi-document) and JSON (objects and Lists); kustomize through `kubectl kustomize` (or a
//! `kustomize` binary). Every error names the file and line it comes from.

use std::collections::HashMap;
use std::path::Path;

use globset::{Glob, GlobMatcher};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::source::Files;

/// Names of a kustomization file, in kustomize's order of preference.
pub const KUSTOMIZATION_FILES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// One rendered object and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// File relative to the Application's path (for kustomize: the kustomization).
    pub file: String,
    /// 1-based line where the object's document starts.
    pub line: usize,
    pub object: Value,
}

impl Manifest {
    pub fn api_version(&self) -> &str {
        self.object["apiVersion"].as_str().unwrap_or_default()
    }
    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }
    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }
    pub fn namespace(&self) -> Option<&str> {
        self.object["metadata"]["namespace"].as_str()
    }
    pub fn group(&self) -> &str {
        group_of(self.api_version())
    }
    /// `file:line`, for messages.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// The group of an apiVersion (`""` for core).
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("")
}

/// A rendering failure, located.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct RenderError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl RenderError {
    fn new(file: &str, line: usize, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line,
            message: message.into(),
        }
    }
}

/// Which files of a directory are manifests.
#[derive(Clone, Debug)]
pub struct Selection {
    include: Option<GlobMatcher>,
    exclude: Option<GlobMatcher>,
}

impl Selection {
    /// From the Application's `directory.include`/`exclude` globs.
    pub fn new(include: Option<&str>, exclude: Option<&str>) -> Result<Self, RenderError> {
        let compile = |field: &str, glob: Option<&str>| {
            glob.filter(|g| !g.is_empty())
                .map(|g| {
                    Glob::new(g)
                        .map(|g| g.compile_matcher())
                        .map_err(|e| RenderError::new(field, 0, format!("invalid glob {g:?}: {e}")))
                })
                .transpose()
        };
        Ok(Self {
            include: compile("spec.source.directory.include", include)?,
            exclude: compile("spec.source.directory.exclude", exclude)?,
        })
    }

    fn selects(&self, path: &str) -> bool {
        let is_manifest = [".yaml", ".yml", ".json"].iter().any(|e| path.ends_with(e));
        let name = path.rsplit('/').next().unwrap_or(path);
        if name.starts_with('.') || KUSTOMIZATION_FILES.contains(&name) {
            return false;
        }
        let included = match &self.include {
            Some(glob) => glob.is_match(path) || glob.is_match(name),
            None => is_manifest,
        };
        let excluded = self
            .exclude
            .as_ref()
            .is_some_and(|glob| glob.is_match(path) || glob.is_match(name));
        included && !excluded
    }
}

/// Whether the directory is a kustomization.
pub fn is_kustomization(files: &Files) -> bool {
    KUSTOMIZATION_FILES.iter().any(|f| files.contains_key(*f))
}

/// Renders a plain directory: every selected file, in path order.
pub fn render_directory(
    files: &Files,
    selection: &Selection,
) -> Result<Vec<Manifest>, RenderError> {
    let mut manifests = Vec::new();
    for (path, content) in files {
        if !selection.selects(path) {
            continue;
        }
        let text = std::str::from_utf8(content)
            .map_err(|e| RenderError::new(path, 1, format!("not UTF-8 text: {e}")))?;
        if path.ends_with(".json") {
            manifests.extend(parse_json(path, text)?);
        } else {
            manifests.extend(parse_yaml(path, text)?);
        }
    }
    check_duplicates(&manifests)?;
    Ok(manifests)
}

/// Renders a kustomization at `dir` with `kubectl kustomize` (or `kustomize build` when only
/// that is installed). `label` names the kustomization in errors.
pub async fn render_kustomize(dir: &Path, label: &str) -> Result<Vec<Manifest>, RenderError> {
    let mut command = if which("kubectl") {
        let mut c = tokio::process::Command::new("kubectl");
        c.arg("kustomize").arg(dir);
        c
    } else if which("kustomize") {
        let mut c = tokio::process::Command::new("kustomize");
        c.arg("build").arg(dir);
        c
    } else {
        return Err(RenderError::new(
            label,
            0,
            "this is a kustomization, and neither kubectl nor kustomize is installed",
        ));
    };
    command.kill_on_drop(true);
    let output = tokio::time::timeout(std::time::Duration::from_secs(90), command.output())
        .await
        .map_err(|_| RenderError::new(label, 0, "kustomize took longer than 90 s"))?
        .map_err(|e| RenderError::new(label, 0, format!("running kustomize: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // kustomize's messages carry the absolute work directory: show repository paths
        let shown = stderr.replace(&format!("{}/", dir.display()), "");
        return Err(RenderError::new(
            label,
            0,
            format!("kustomize: {}", shown.trim()),
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let manifests = parse_yaml(label, &text)?;
    check_duplicates(&manifests)?;
    Ok(manifests)
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Splits a YAML stream into documents with the line each starts on.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let separator = line == "---"
            || line.starts_with("--- ")
            || line.starts_with("---\t")
            || line.starts_with("---#");
        if separator || line == "..." {
            docs.push((start, std::mem::take(&mut current)));
            start = number + 1;
            if let Some(rest) = line
                .strip_prefix("---")
                .filter(|r| !r.trim().is_empty() && !r.trim_start().starts_with('#'))
            {
                // `--- value` puts content on the separator line
                current.push_str(rest);
                current.push('\n');
                start = number;
            }
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs
}

/// Parses a (multi-document) YAML file.
pub fn parse_yaml(file: &str, text: &str) -> Result<Vec<Manifest>, RenderError> {
    let mut manifests = Vec::new();
    for (start, doc) in documents(text) {
        if doc.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#')
        }) {
            continue;
        }
        let value: Value = serde_yaml::from_str(&doc).map_err(|e| {
            // an error found at the end of the document (an unclosed bracket, say) is shown
            // on its last line rather than past it
            let last = doc.lines().count().max(1);
            let line = e.location().map(|l| l.line()).unwrap_or(1).min(last);
            let message = e.to_string();
            // serde_yaml appends "at line N column M" relative to the document
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_owned();
            RenderError::new(file, start + line - 1, format!("invalid YAML: {message}"))
        })?;
        if value.is_null() {
            continue;
        }
        let first_line = start
            + doc
                .lines()
                .take_while(|l| {
                    let t = l.trim();
                    t.is_empty() || t.starts_with('#')
                })
                .count();
        expand(file, first_line, value, &mut manifests)?;
    }
    Ok(manifests)
}

/// Parses a JSON file holding one object or a List.
pub fn parse_json(file: &str, text: &str) -> Result<Vec<Manifest>, RenderError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| RenderError::new(file, e.line().max(1), format!("invalid JSON: {e}")))?;
    let mut manifests = Vec::new();
    expand(file, 1, value, &mut manifests)?;
    Ok(manifests)
}

/// Checks one document and unwraps Lists.
fn expand(
    file: &str,
    line: usize,
    value: Value,
    out: &mut Vec<Manifest>,
) -> Result<(), RenderError> {
    let Value::Object(map) = &value else {
        return Err(RenderError::new(
            file,
            line,
            "a manifest must be a mapping with apiVersion, kind and metadata",
        ));
    };
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api_version = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if api_version.is_empty() {
        return Err(RenderError::new(file, line, "apiVersion is missing"));
    }
    if kind.is_empty() {
        return Err(RenderError::new(file, line, "kind is missing"));
    }
    if kind.ends_with("List") && map.get("items").is_some_and(Value::is_array) {
        for item in map["items"].as_array().into_iter().flatten() {
            expand(file, line, item.clone(), out)?;
        }
        return Ok(());
    }
    let metadata = map.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name.is_empty() {
        let hint = if metadata.and_then(|m| m.get("generateName")).is_some() {
            " (generateName cannot be tracked in Git: give the object a name)"
        } else {
            ""
        };
        return Err(RenderError::new(
            file,
            line,
            format!("{kind} has no metadata.name{hint}"),
        ));
    }
    out.push(Manifest {
        file: file.to_owned(),
        line,
        object: value,
    });
    Ok(())
}

/// Two documents for one object is an error naming both.
fn check_duplicates(manifests: &[Manifest]) -> Result<(), RenderError> {
    let mut seen: HashMap<(&str, &str, Option<&str>, &str), &Manifest> = HashMap::new();
    for m in manifests {
        if let Some(first) = seen.insert((m.group(), m.kind(), m.namespace(), m.name()), m) {
            return Err(RenderError::new(
                &m.file,
                m.line,
                format!(
                    "{} {} is also defined at {}",
                    m.kind(),
                    m.name(),
                    first.location()
                ),
            ));
        }
    }
    Ok(())
}

/// SHA-256 over the rendered objects (independent of file order), `sha256:HEX`.
pub fn digest(objects: &[Value]) -> String {
    let mut encoded: Vec<String> = objects.iter().map(|o| o.to_string()).collect();
    encoded.sort();
    let mut hasher = Sha256::new();
    for e in encoded {
        hasher.update(e.as_bytes());
        hasher.update(b"\n");
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(entries: &[(&str, &str)]) -> Files {
        entries
            .iter()
            .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn multi_document_yaml_keeps_lines() {
        let text = "# leading comment\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\n\n---\n# c\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n";
        let got = parse_yaml("x.yaml", text).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].name(), got[0].line), ("a", 2));
        assert_eq!((got[1].name(), got[1].line), ("b", 10));
    }

    #[test]
    fn yaml_errors_name_the_file_and_line() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [b\n";
        let err = parse_yaml("apps/bad.yaml", text).unwrap_err();
        assert_eq!(err.file, "apps/bad.yaml");
        assert_eq!(err.line, 9, "{err}");
        assert!(err.to_string().starts_with("apps/bad.yaml:"), "{err}");
        let err = parse_yaml("a.yaml", "apiVersion: v1\nmetadata: {name: x}\n").unwrap_err();
        assert_eq!(err.to_string(), "a.yaml:1: kind is missing");
        let err = parse_yaml("a.yaml", "- 1\n- 2\n").unwrap_err();
        assert!(err.message.contains("mapping"));
        let err = parse_yaml(
            "a.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {generateName: x-}\n",
        )
        .unwrap_err();
        assert!(err.message.contains("generateName"));
    }

    #[test]
    fn json_lists_expand() {
        let got = parse_json(
            "l.json",
            r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"}}]}"#,
        )
        .unwrap();
        assert_eq!(got[0].kind(), "Secret");
        let err = parse_json("l.json", "{\n\"a\": }").unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn directories_select_and_refuse_duplicates() {
        let cm = |n: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {n}\n");
        let dir = files(&[
            ("a.yaml", &cm("a")),
            ("README.md", "# not a manifest"),
            ("kustomization.yaml", "resources: []"),
            ("sub/b.yml", &cm("b")),
            ("sub/skip.yaml", &cm("c")),
        ]);
        let all =
            render_directory(&dir, &Selection::new(None, Some("sub/skip*")).unwrap()).unwrap();
        let names: Vec<_> = all.iter().map(Manifest::name).collect();
        assert_eq!(names, ["a", "b"]);
        let only =
            render_directory(&dir, &Selection::new(Some("sub/*.yml"), None).unwrap()).unwrap();
        assert_eq!(only.len(), 1);
        let dup = files(&[("a.yaml", &cm("a")), ("b.yaml", &cm("a"))]);
        let err = render_directory(&dup, &Selection::new(None, None).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "b.yaml:1: ConfigMap a is also defined at a.yaml:1"
        );
        assert!(Selection::new(Some("[bad"), None).is_err());
    }

    #[test]
    fn digests_ignore_order() {
        let a = serde_json::json!({"kind": "A"});
        let b = serde_json::json!({"kind": "B"});
        assert_eq!(digest(&[a.clone(), b.clone()]), digest(&[b, a.clone()]));
        assert_ne!(digest(std::slice::from_ref(&a)), digest(&[a.clone(), a]));
    }
}

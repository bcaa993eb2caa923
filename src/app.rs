//! `kelson app …`: look at and steer GitOps Applications from the command line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use kelson_reconciler::api::{REQUESTED_AT_ANNOTATION, ROLLBACK_FROM_ANNOTATION};
use kelson_reconciler::{Application, audit};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct AppArgs {
    /// kubeconfig to use (default: $KUBECONFIG, else /var/lib/kelson/kubeconfig.yaml when it
    /// exists, else ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the Application.
    #[arg(short, long, global = true, default_value = "default")]
    namespace: String,
    #[command(subcommand)]
    command: AppCommand,
}

#[derive(Subcommand)]
enum AppCommand {
    /// List Applications with their revision, sync state, health and readiness.
    List {
        /// In every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Show one Application: source, state, conditions, inventory and recent syncs.
    Get { name: String },
    /// Show what a sync would change (Secret values redacted): against the target revision,
    /// another revision (`--revision my-branch`: preview a pull request), or a local directory
    /// holding the Application's path (`--path ./apps/web`).
    Diff {
        name: String,
        #[arg(long)]
        revision: Option<String>,
        #[arg(long, conflicts_with = "revision")]
        path: Option<PathBuf>,
    },
    /// Sync now (also for manual Applications) and wait for the outcome.
    Sync {
        name: String,
        /// Also prune objects no longer in Git (manual Applications).
        #[arg(long)]
        prune: bool,
        /// Seconds to wait for the sync to be handled.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Every sync of the Application from the audit log (on the server: --data-dir), or the
    /// latest ones from its status.
    History {
        name: String,
        /// The server's data directory, whose gitops/audit.log holds the full history.
        #[arg(long, env = "KELSON_DATA_DIR", default_value = "/var/lib/kelson")]
        data_dir: PathBuf,
    },
    /// Check the audit log's hash chain; fails naming the first record that was changed.
    VerifyHistory {
        #[arg(long, env = "KELSON_DATA_DIR", default_value = "/var/lib/kelson")]
        data_dir: PathBuf,
    },
    /// Pin the Application to an earlier revision (new commits are not applied) until
    /// `kelson app resume`.
    Rollback { name: String, revision: String },
    /// Stop reconciling the Application.
    Suspend { name: String },
    /// Reconcile again; after a rollback, follow the original target revision again.
    Resume { name: String },
}

async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let path = kubeconfig.map(Path::to_owned).or_else(|| {
        let default = PathBuf::from("/var/lib/kelson/kubeconfig.yaml");
        (std::env::var_os("KUBECONFIG").is_none() && default.exists()).then_some(default)
    });
    crate::kube_client(path.as_deref()).await
}

fn ready(app: &Application) -> (String, String, String) {
    app.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_else(|| ("Unknown".into(), String::new(), "not reconciled yet".into()))
}

fn short(sha: Option<&str>) -> String {
    sha.map(|s| s.chars().take(12).collect())
        .unwrap_or_else(|| "-".into())
}

pub async fn run(args: AppArgs) -> anyhow::Result<()> {
    if let AppCommand::VerifyHistory { data_dir } = &args.command {
        let path = data_dir.join("gitops/audit.log");
        let (count, last) =
            audit::verify(&path).map_err(|e| anyhow::anyhow!("audit log does not verify: {e}"))?;
        println!(
            "{}: {count} records, chain intact (last hash {last})",
            path.display()
        );
        return Ok(());
    }
    let client = client(args.kubeconfig.as_deref()).await?;
    let api: Api<Application> = Api::namespaced(client.clone(), &args.namespace);
    match args.command {
        AppCommand::List { all_namespaces } => {
            let api: Api<Application> = if all_namespaces {
                Api::all(client)
            } else {
                api
            };
            let apps = api.list(&ListParams::default()).await?;
            println!(
                "{:<16} {:<24} {:<13} {:<10} {:<12} {:<6} MESSAGE",
                "NAMESPACE", "NAME", "REVISION", "SYNC", "HEALTH", "READY"
            );
            for app in apps {
                let status = app.status.clone().unwrap_or_default();
                let (ready, _, message) = ready(&app);
                println!(
                    "{:<16} {:<24} {:<13} {:<10} {:<12} {:<6} {}",
                    app.namespace().unwrap_or_default(),
                    app.name_any(),
                    short(status.last_applied_revision.as_deref()),
                    status.sync.map(|s| s.status).unwrap_or_else(|| "-".into()),
                    status
                        .health
                        .map(|h| h.status)
                        .unwrap_or_else(|| "-".into()),
                    ready,
                    message
                );
            }
        }
        AppCommand::Get { name } => {
            let app = api.get(&name).await?;
            let status = app.status.clone().unwrap_or_default();
            let source = &app.spec.source;
            println!(
                "Name:        {}/{}",
                app.namespace().unwrap_or_default(),
                name
            );
            println!(
                "Source:      {} {} path {}",
                source.repo_url,
                source.target_revision.as_deref().unwrap_or("HEAD"),
                source.path.as_deref().unwrap_or(".")
            );
            let policy = match &app.spec.sync_policy.automated {
                Some(a) => format!("automated (prune: {}, selfHeal: {})", a.prune, a.self_heal),
                None => "manual".into(),
            };
            println!(
                "Policy:      {policy}{}",
                if app.spec.suspend { ", suspended" } else { "" }
            );
            println!(
                "Applied:     {}",
                status.last_applied_revision.as_deref().unwrap_or("-")
            );
            println!(
                "Attempted:   {}",
                status.last_attempted_revision.as_deref().unwrap_or("-")
            );
            if let Some(sync) = &status.sync {
                println!("Sync:        {}", sync.status);
                for object in &sync.out_of_sync {
                    println!("               differs: {object}");
                }
            }
            if let Some(health) = &status.health {
                println!("Health:      {} {}", health.status, health.message);
            }
            println!("Conditions:");
            for c in &status.conditions {
                println!(
                    "  {:<12} {:<6} {:<24} {}",
                    c.type_, c.status, c.reason, c.message
                );
            }
            println!("Inventory:   {} objects", status.inventory.len());
            for entry in &status.inventory {
                println!("  {}", entry.id);
            }
            println!("Recent syncs:");
            for h in &status.history {
                println!(
                    "  {} {} {:<12} applied {} pruned {} {}",
                    h.started_at,
                    short(Some(&h.revision)),
                    h.result,
                    h.applied,
                    h.pruned,
                    h.message
                );
            }
        }
        AppCommand::Diff {
            name,
            revision,
            path,
        } => {
            let app = api.get(&name).await?;
            let cache = tempfile::tempdir()?;
            let preview = kelson_reconciler::controller::preview(
                client,
                &app,
                path.as_deref(),
                revision.as_deref(),
                cache.path(),
            )
            .await?;
            println!("Comparing {} with the cluster", preview.revision);
            for (object, diff) in &preview.changes {
                println!("\n=== {object}\n{diff}");
            }
            for object in &preview.prune {
                println!("\n=== {object}\n(would be pruned)");
            }
            if let Some(note) = &preview.prune_note {
                println!("\nprune: {note}");
            }
            println!(
                "\n{} changed, {} to prune, {} unchanged",
                preview.changes.len(),
                preview.prune.len(),
                preview.unchanged
            );
        }
        AppCommand::Sync {
            name,
            prune,
            timeout,
        } => {
            let stamp = jiff::Timestamp::now().to_string();
            let value = if prune {
                format!("{stamp};prune")
            } else {
                stamp
            };
            let patch = json!({"metadata": {"annotations": {REQUESTED_AT_ANNOTATION: value}}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            let deadline = std::time::Instant::now() + Duration::from_secs(timeout);
            loop {
                let app = api.get(&name).await?;
                let handled = app
                    .status
                    .as_ref()
                    .and_then(|s| s.last_handled_reconcile_at.as_deref())
                    == Some(value.as_str());
                if handled {
                    let (status, reason, message) = ready(&app);
                    println!("{name}: Ready={status} {reason}: {message}");
                    if status != "True" && reason != "Progressing" {
                        bail!("sync of {name} did not succeed");
                    }
                    break;
                }
                if std::time::Instant::now() > deadline {
                    bail!(
                        "{name}: the sync was not handled within {timeout} s (is the reconciler running?)"
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        AppCommand::History { name, data_dir } => {
            let path = data_dir.join("gitops/audit.log");
            let key = format!("{}/{name}", args.namespace);
            println!(
                "{:<20} {:<13} {:<13} {:>7} {:>6}  {:<28} {:<6} SUBJECT",
                "TIME", "REVISION", "RESULT", "APPLIED", "PRUNED", "AUTHOR", "PR"
            );
            match audit::read(&path) {
                Ok(records) => {
                    for r in records.iter().filter(|r| {
                        r.get("application").and_then(Value::as_str) == Some(key.as_str())
                    }) {
                        let text =
                            |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
                        let count = |k: &str| {
                            r.get(k)
                                .and_then(Value::as_array)
                                .map(Vec::len)
                                .unwrap_or(0)
                        };
                        let mut result = text("result");
                        if r.get("driftCorrected").and_then(Value::as_bool) == Some(true) {
                            result = "DriftFixed".into();
                        }
                        println!(
                            "{:<20} {:<13} {:<13} {:>7} {:>6}  {:<28} {:<6} {}",
                            text("time"),
                            short(Some(&text("revision"))),
                            result,
                            count("applied"),
                            count("pruned"),
                            text("author"),
                            text("pullRequest"),
                            text("subject")
                        );
                        for change in r
                            .get("changes")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                        {
                            println!("{:<20}   {}", "", change.as_str().unwrap_or_default());
                        }
                        if text("result") != "Succeeded" {
                            println!("{:<20}   {}", "", text("message"));
                        }
                    }
                }
                Err(_) => {
                    eprintln!(
                        "({} is not readable here: showing the latest syncs from the Application's status)",
                        path.display()
                    );
                    let app = api.get(&name).await?;
                    for h in app.status.unwrap_or_default().history.iter().rev() {
                        println!(
                            "{:<20} {:<13} {:<13} {:>7} {:>6}  {:<28} {:<6} {}",
                            h.started_at,
                            short(Some(&h.revision)),
                            h.result,
                            h.applied,
                            h.pruned,
                            "-",
                            "-",
                            h.message
                        );
                    }
                }
            }
        }
        AppCommand::Rollback { name, revision } => {
            let app = api.get(&name).await?;
            let original = app
                .annotations()
                .get(ROLLBACK_FROM_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| {
                    app.spec
                        .source
                        .target_revision
                        .clone()
                        .unwrap_or_else(|| "HEAD".into())
                });
            let patch = json!({
                "metadata": {"annotations": {ROLLBACK_FROM_ANNOTATION: original}},
                "spec": {"source": {"targetRevision": revision}, "suspend": false},
            });
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            println!(
                "{name}: pinned to {revision}; new commits on {original} are not applied until `kelson app resume {name}`"
            );
        }
        AppCommand::Suspend { name } => {
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"suspend": true}})),
            )
            .await?;
            println!("{name}: suspended");
        }
        AppCommand::Resume { name } => {
            let app = api.get(&name).await?;
            let mut patch = json!({"spec": {"suspend": false}});
            if let Some(original) = app.annotations().get(ROLLBACK_FROM_ANNOTATION) {
                patch["spec"]["source"] = json!({"targetRevision": original});
                patch["metadata"] = json!({"annotations": {ROLLBACK_FROM_ANNOTATION: null}});
                println!("{name}: following {original} again");
            } else {
                println!("{name}: resumed");
            }
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        AppCommand::VerifyHistory { .. } => unreachable!("handled above"),
    }
    Ok(())
}

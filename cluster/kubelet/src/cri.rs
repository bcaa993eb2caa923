//! A CRI v1 client for containerd's socket: the runtime and image services over gRPC on a Unix
//! socket. Each call names what failed, so pod status messages and events read well.

use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

/// containerd's default socket.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";

/// A failed CRI call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be reached.
    #[error("failed to connect to the container runtime at {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// The runtime answered with an error.
    #[error("{call} failed: {message}")]
    Call {
        /// The RPC, e.g. `RunPodSandbox`.
        call: &'static str,
        /// gRPC status code.
        code: tonic::Code,
        /// The runtime's message.
        message: String,
    },
}

impl Error {
    /// The runtime's message without the call name (for pod status messages).
    #[must_use]
    pub fn message(&self) -> String {
        match self {
            Error::Connect { .. } => self.to_string(),
            Error::Call { message, .. } => message.clone(),
        }
    }

    /// Whether the runtime said the object does not exist.
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Call {
                code: tonic::Code::NotFound,
                ..
            }
        )
    }
}

/// `Result` of a CRI call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn call_error(call: &'static str) -> impl FnOnce(tonic::Status) -> Error {
    move |status| Error::Call {
        call,
        code: status.code(),
        message: status.message().to_owned(),
    }
}

/// A connected CRI client; cheap to clone (one HTTP/2 channel).
#[derive(Clone, Debug)]
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// One statistics call at a time: containerd 1.6 updates its CPU usage cache without a
    /// lock, and two concurrent stats calls crash it (`concurrent map writes`).
    stats: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Cri {
    /// Connects to the runtime's Unix socket.
    ///
    /// # Errors
    /// When the socket cannot be reached.
    pub async fn connect(socket: &Path) -> Result<Self> {
        let path = socket.to_owned();
        let connector_path = path.clone();
        let channel = Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = connector_path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|source| Error::Connect { path, source })?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            stats: std::sync::Arc::default(),
        })
    }

    /// Runtime name and version.
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn version(&self) -> Result<cri::VersionResponse> {
        let request = cri::VersionRequest {
            version: "v1".into(),
        };
        let response = self.runtime.clone().version(request).await;
        Ok(response.map_err(call_error("Version"))?.into_inner())
    }

    /// Whether the runtime and its network are ready, with the reason when not.
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn ready(&self) -> Result<Result<(), String>> {
        let request = cri::StatusRequest { verbose: false };
        let response = self.runtime.clone().status(request).await;
        let status = response.map_err(call_error("Status"))?.into_inner();
        let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
        for condition in conditions {
            if !condition.status {
                return Ok(Err(format!(
                    "{} is false: {} {}",
                    condition.r#type, condition.reason, condition.message
                )));
            }
        }
        Ok(Ok(()))
    }

    /// The image the runtime runs pod sandboxes from (containerd's `sandboxImage`), from its
    /// verbose status; empty when the runtime does not say.
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn sandbox_image(&self) -> Result<String> {
        let request = cri::StatusRequest { verbose: true };
        let response = self.runtime.clone().status(request).await;
        let info = response.map_err(call_error("Status"))?.into_inner().info;
        Ok(info
            .get("config")
            .and_then(|config| serde_json::from_str::<serde_json::Value>(config).ok())
            .and_then(|config| config["sandboxImage"].as_str().map(str::to_owned))
            .unwrap_or_default())
    }

    /// Starts a pod sandbox and returns its id.
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn run_pod_sandbox(&self, config: cri::PodSandboxConfig) -> Result<String> {
        let request = cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let response = self.runtime.clone().run_pod_sandbox(request).await;
        Ok(response
            .map_err(call_error("RunPodSandbox"))?
            .into_inner()
            .pod_sandbox_id)
    }

    /// Stops a sandbox (its containers and network).
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let request = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        let response = self.runtime.clone().stop_pod_sandbox(request).await;
        response.map_err(call_error("StopPodSandbox"))?;
        Ok(())
    }

    /// Removes a stopped sandbox and its containers.
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let request = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        let response = self.runtime.clone().remove_pod_sandbox(request).await;
        response.map_err(call_error("RemovePodSandbox"))?;
        Ok(())
    }

    /// A sandbox's status (network address, state).
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus> {
        let request = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: false,
        };
        let response = self.runtime.clone().pod_sandbox_status(request).await;
        let status = response
            .map_err(call_error("PodSandboxStatus"))?
            .into_inner()
            .status;
        Ok(status.unwrap_or_default())
    }

    /// Sandboxes whose labels include all of `labels`.
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn list_pod_sandboxes(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<cri::PodSandbox>> {
        let filter = cri::PodSandboxFilter {
            label_selector: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        };
        let request = cri::ListPodSandboxRequest {
            filter: Some(filter),
        };
        let response = self.runtime.clone().list_pod_sandbox(request).await;
        Ok(response
            .map_err(call_error("ListPodSandbox"))?
            .into_inner()
            .items)
    }

    /// Creates a container in a sandbox and returns its id.
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: cri::PodSandboxConfig,
    ) -> Result<String> {
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        let response = self.runtime.clone().create_container(request).await;
        Ok(response
            .map_err(call_error("CreateContainer"))?
            .into_inner()
            .container_id)
    }

    /// Starts a created container.
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let request = cri::StartContainerRequest {
            container_id: id.to_owned(),
        };
        let response = self.runtime.clone().start_container(request).await;
        response.map_err(call_error("StartContainer"))?;
        Ok(())
    }

    /// Stops a container: SIGTERM, then SIGKILL after `timeout_seconds`.
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn stop_container(&self, id: &str, timeout_seconds: i64) -> Result<()> {
        let request = cri::StopContainerRequest {
            container_id: id.to_owned(),
            timeout: timeout_seconds,
        };
        let response = self.runtime.clone().stop_container(request).await;
        response.map_err(call_error("StopContainer"))?;
        Ok(())
    }

    /// Removes a container.
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let request = cri::RemoveContainerRequest {
            container_id: id.to_owned(),
        };
        let response = self.runtime.clone().remove_container(request).await;
        response.map_err(call_error("RemoveContainer"))?;
        Ok(())
    }

    /// Containers whose labels include all of `labels`.
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn list_containers(&self, labels: &[(&str, &str)]) -> Result<Vec<cri::Container>> {
        let filter = cri::ContainerFilter {
            label_selector: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        };
        let request = cri::ListContainersRequest {
            filter: Some(filter),
        };
        let response = self.runtime.clone().list_containers(request).await;
        Ok(response
            .map_err(call_error("ListContainers"))?
            .into_inner()
            .containers)
    }

    /// A container's full status (exit code, reason, times, log path).
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus> {
        let request = cri::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        };
        let response = self.runtime.clone().container_status(request).await;
        let status = response
            .map_err(call_error("ContainerStatus"))?
            .into_inner()
            .status;
        Ok(status.unwrap_or_default())
    }

    /// Runs a command in a container and waits for it (up to `timeout_seconds`, 0 = no limit).
    ///
    /// # Errors
    /// When the runtime refuses or the command times out.
    pub async fn exec_sync(
        &self,
        id: &str,
        command: Vec<String>,
        timeout_seconds: i64,
    ) -> Result<cri::ExecSyncResponse> {
        let request = cri::ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: command,
            timeout: timeout_seconds,
        };
        let response = self.runtime.clone().exec_sync(request).await;
        Ok(response.map_err(call_error("ExecSync"))?.into_inner())
    }

    /// Prepares a streaming exec and returns the URL of the runtime's streaming server.
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn exec(&self, request: cri::ExecRequest) -> Result<String> {
        let response = self.runtime.clone().exec(request).await;
        Ok(response.map_err(call_error("Exec"))?.into_inner().url)
    }

    /// Prepares a streaming attach and returns the URL of the runtime's streaming server.
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn attach(&self, request: cri::AttachRequest) -> Result<String> {
        let response = self.runtime.clone().attach(request).await;
        Ok(response.map_err(call_error("Attach"))?.into_inner().url)
    }

    /// Prepares a port-forward into a sandbox and returns the streaming server's URL.
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn port_forward(&self, sandbox_id: &str) -> Result<String> {
        let request = cri::PortForwardRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
            port: Vec::new(),
        };
        let response = self.runtime.clone().port_forward(request).await;
        Ok(response
            .map_err(call_error("PortForward"))?
            .into_inner()
            .url)
    }

    /// Resource usage of the sandboxes whose labels include all of `labels`.
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn list_pod_sandbox_stats(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<cri::PodSandboxStats>> {
        // the Summary API, resource metrics and eviction may ask at once
        let _one_at_a_time = self.stats.lock().await;
        let request = cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: String::new(),
                label_selector: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            }),
        };
        let error = match self.runtime.clone().list_pod_sandbox_stats(request).await {
            Ok(response) => return Ok(response.into_inner().stats),
            Err(error) => error,
        };
        // containerd 1.6 fails the whole list while any sandbox is not ready (a finished pod,
        // one being torn down) or a task is gone: ask each ready sandbox instead, skipping
        // those that stop in between
        tracing::debug!(%error, "ListPodSandboxStats failed; asking each ready sandbox");
        let filter = cri::PodSandboxFilter {
            label_selector: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        };
        let ready = self
            .runtime
            .clone()
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(filter),
            })
            .await
            .map_err(|_| call_error("ListPodSandboxStats")(error))?
            .into_inner()
            .items;
        let mut stats = Vec::with_capacity(ready.len());
        for sandbox in ready {
            let request = cri::PodSandboxStatsRequest {
                pod_sandbox_id: sandbox.id,
            };
            if let Ok(response) = self.runtime.clone().pod_sandbox_stats(request).await
                && let Some(one) = response.into_inner().stats
            {
                stats.push(one);
            }
        }
        Ok(stats)
    }

    /// Asks the runtime to reopen a container's log file (after the kubelet renamed it).
    ///
    /// # Errors
    /// When the runtime refuses (for example, the container is not running).
    pub async fn reopen_container_log(&self, id: &str) -> Result<()> {
        let request = cri::ReopenContainerLogRequest {
            container_id: id.to_owned(),
        };
        let response = self.runtime.clone().reopen_container_log(request).await;
        response.map_err(call_error("ReopenContainerLog"))?;
        Ok(())
    }

    /// The local image's status, if the image is present.
    async fn image_status(&self, image: &str) -> Result<Option<cri::Image>> {
        let request = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            verbose: false,
        };
        let response = self.images.clone().image_status(request).await;
        Ok(response
            .map_err(call_error("ImageStatus"))?
            .into_inner()
            .image
            .filter(|i| !i.id.is_empty()))
    }

    /// The local image's id, if the image is present.
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>> {
        Ok(self.image_status(image).await?.map(|i| i.id))
    }

    /// The user a local image runs as: its uid when numeric, else its user name.
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn image_user(&self, image: &str) -> Result<(Option<i64>, String)> {
        let image = self.image_status(image).await?.unwrap_or_default();
        Ok((image.uid.map(|u| u.value), image.username))
    }

    /// The mount point of the filesystem holding containers' writable layers (CRI's image
    /// filesystem), when the runtime tells.
    ///
    /// # Errors
    /// When the runtime refuses.
    pub async fn image_fs_mountpoint(&self) -> Result<Option<String>> {
        let response = self
            .images
            .clone()
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await
            .map_err(call_error("ImageFsInfo"))?
            .into_inner();
        Ok(response
            .container_filesystems
            .iter()
            .chain(&response.image_filesystems)
            .find_map(|fs| fs.fs_id.as_ref().map(|id| id.mountpoint.clone()))
            .filter(|m| !m.is_empty()))
    }

    /// Pulls an image and returns its reference.
    ///
    /// # Errors
    /// When the pull fails (unreachable registry, unknown image).
    pub async fn pull_image(&self, image: &str) -> Result<String> {
        let request = cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        };
        let response = self.images.clone().pull_image(request).await;
        Ok(response
            .map_err(call_error("PullImage"))?
            .into_inner()
            .image_ref)
    }
}

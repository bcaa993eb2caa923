"""The official Kubernetes Python client against Kelson: CRUD on a few kinds and a watch.

Usage: client_crud.py KUBECONFIG. Exits non-zero (with a traceback) on any mismatch.
"""
import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def main(kubeconfig: str) -> None:
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    namespace = client.V1Namespace(metadata=client.V1ObjectMeta(name="py"))
    core.create_namespace(namespace)
    assert core.read_namespace("py").status.phase == "Active"

    # watch ConfigMaps in the namespace while we change them, from the resourceVersion of a list
    # (as informers do), so that no change is missed however late the watch request goes out
    events = []
    since = core.list_namespaced_config_map("py").metadata.resource_version

    def watch_config_maps() -> None:
        w = watch.Watch()
        for event in w.stream(
            core.list_namespaced_config_map, namespace="py", resource_version=since, timeout_seconds=20
        ):
            events.append((event["type"], event["object"].metadata.name))
            if event["type"] == "DELETED":
                w.stop()

    watcher = threading.Thread(target=watch_config_maps)
    watcher.start()

    cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="settings", labels={"app": "py"}), data={"a": "1"})
    created = core.create_namespaced_config_map("py", cm)
    assert created.metadata.uid
    read = core.read_namespaced_config_map("settings", "py")
    assert read.data == {"a": "1"}
    read.data["b"] = "2"
    replaced = core.replace_namespaced_config_map("settings", "py", read)
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    patched = core.patch_namespaced_config_map("settings", "py", {"data": {"c": "3"}})
    assert patched.data == {"a": "1", "b": "2", "c": "3"}
    listed = core.list_namespaced_config_map("py", label_selector="app=py")
    assert [item.metadata.name for item in listed.items] == ["settings"]
    try:
        core.create_namespaced_config_map("py", cm)
        raise AssertionError("duplicate create succeeded")
    except ApiException as error:
        assert error.status == 409, error

    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "web"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
            ),
        ),
    )
    apps.create_namespaced_deployment("py", deployment)
    scale = apps.read_namespaced_deployment_scale("web", "py")
    assert scale.spec.replicas == 2
    apps.patch_namespaced_deployment_scale("web", "py", {"spec": {"replicas": 4}})
    assert apps.read_namespaced_deployment("web", "py").spec.replicas == 4
    apps.delete_namespaced_deployment("web", "py")

    core.delete_namespaced_config_map("settings", "py")
    watcher.join(timeout=20)
    kinds = [kind for kind, name in events if name == "settings"]
    assert kinds == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"], events
    print("python client ok:", events)


if __name__ == "__main__":
    main(sys.argv[1])

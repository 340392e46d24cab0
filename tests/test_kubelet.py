"""The kubelet's decisions, as plain functions of pods."""

import json

import pytest

from jhub_suspend.localcluster.kubelet import (
    NodeConfig,
    container_argv,
    container_env,
    host_path,
    node_object,
    run_as,
    running_status,
    terminated_status,
    volume_dirs,
    waiting_status,
)


def notebook_pod(**spec):
    return {
        "metadata": {"name": "jupyter-alice", "namespace": "default", "uid": "u1"},
        "spec": {
            "containers": [
                {
                    "name": "notebook",
                    "image": "jupyter/base",
                    "args": ["jupyterhub-singleuser"],
                    "env": [
                        {"name": "A", "value": "1"},
                        {"name": "B", "value": "$(A)-2"},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    ],
                    "volumeMounts": [
                        {"name": "home", "mountPath": "/home/jovyan"},
                        {"name": "cache", "mountPath": "/home/jovyan/.cache"},
                    ],
                    "workingDir": "/home/jovyan",
                }
            ],
            "volumes": [
                {"name": "home", "persistentVolumeClaim": {"claimName": "claim-alice"}},
                {"name": "cache", "emptyDir": {}},
            ],
            "nodeName": "node-1",
            **spec,
        },
        "status": {"phase": "Pending"},
    }


def test_command_and_environment():
    pod = notebook_pod()
    c = pod["spec"]["containers"][0]
    assert container_argv(c) == ["jupyterhub-singleuser"]
    env = container_env(c, pod, {"HOME": "/h"})
    assert (env["A"], env["B"], env["NODE"], env["HOME"]) == ("1", "1-2", "node-1", "/h")
    with pytest.raises(ValueError, match="neither command nor args"):
        container_argv({"name": "x", "image": "y"})


def test_volumes_map_to_host_directories():
    pod = notebook_pod()
    dirs = volume_dirs(pod, "/state")
    # A PVC outlives the pod; an emptyDir lives with it.
    assert dirs["home"] == "/state/volumes/default/claim-alice"
    assert dirs["cache"] == "/state/pods/default/jupyter-alice/volumes/cache"
    c = pod["spec"]["containers"][0]
    assert host_path(c, dirs, "/home/jovyan") == "/state/volumes/default/claim-alice"
    assert host_path(c, dirs, "/home/jovyan/.cache/pip") == dirs["cache"] + "/pip"
    assert host_path(c, dirs, "/srv") is None


def test_security_context_decides_the_user():
    pod = notebook_pod(securityContext={"fsGroup": 100, "supplementalGroups": [5]})
    c = pod["spec"]["containers"][0]
    assert run_as(pod, c) is None
    c["securityContext"] = {"runAsUser": 1000, "runAsGroup": 100}
    user = run_as(pod, c)
    assert (user.uid, user.gid, user.groups, user.fs_group) == (1000, 100, (100, 5), 100)
    assert user.argv() == ["setpriv", "--reuid=1000", "--regid=100", "--groups=100,5", "--"]


def test_statuses_have_what_kubespawner_and_the_client_read():
    pod = notebook_pod()
    waiting = waiting_status(pod, "ErrImagePull", "no such image")
    assert waiting["phase"] == "Pending"
    (cs,) = waiting["containerStatuses"]
    assert cs["state"]["waiting"] == {"reason": "ErrImagePull", "message": "no such image"}
    assert {"name", "image", "imageID", "ready", "restartCount"} <= set(cs)

    info = {"notebook": {"image": "jupyter/base", "started": 0.0, "id": "abc"}}
    running = running_status(pod, "10.98.0.5", "127.0.0.1", 0.0, info)
    assert (running["phase"], running["podIP"]) == ("Running", "10.98.0.5")
    assert all(c["status"] == "True" for c in running["conditions"])
    assert running["containerStatuses"][0]["ready"] is True

    done = terminated_status({**pod, "status": running}, {"notebook": 3}, 10.0)
    assert done["phase"] == "Failed"
    assert done["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert terminated_status(pod, {"notebook": 0}, 1.0)["phase"] == "Succeeded"


def test_node_object_advertises_gpus():
    node = node_object(NodeConfig("g", gpus=2, labels={"pool": "gpu"}), "127.0.0.1", 1234, 0.0)
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "2"
    assert node["metadata"]["labels"]["nvidia.com/gpu.count"] == "2"
    assert node["metadata"]["labels"]["pool"] == "gpu"
    assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == 1234
    plain = node_object(NodeConfig("c"), "127.0.0.1", 1, 0.0)
    assert "nvidia.com/gpu" not in plain["status"]["capacity"]


async def test_node_object_deserialises_in_the_real_client():
    from kubernetes_asyncio.client import ApiClient

    node = node_object(NodeConfig("n", gpus=1), "127.0.0.1", 1, 0.0)

    class Response:
        data = json.dumps(node)

    async with ApiClient() as api:
        parsed = api.deserialize(Response(), "V1Node")
    assert parsed.status.node_info.boot_id
    assert parsed.metadata.labels["nvidia.com/gpu.count"] == "1"

"""The kubelet's decisions, as plain functions of pods: what it asks the runtime for through
CRI, and the statuses it reports."""

import json

import pytest

from jhub_suspend.localcluster.cri import cri
from jhub_suspend.localcluster.crispec import (
    NODE_LABEL,
    container_config,
    container_env,
    container_mounts,
    run_as,
    sandbox_config,
    volume_dirs,
)
from jhub_suspend.localcluster.kubelet import (
    NodeConfig,
    criu_errors,
    criu_log_path,
    exit_codes,
    is_checkpoint_image,
    node_object,
    read_criu_errors,
    running_status,
    terminated_status,
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


def test_environment_resolves_references_and_downward_api():
    pod = notebook_pod()
    c = pod["spec"]["containers"][0]
    env = container_env(c, pod, {"CUDA_VISIBLE_DEVICES": "0"})
    assert (env["A"], env["B"], env["NODE"]) == ("1", "1-2", "node-1")
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    # The image's own environment (PATH, HOME) is the runtime's to merge in, not ours.
    assert "PATH" not in env and "HOME" not in env


def test_volumes_map_to_host_directories_and_mounts():
    pod = notebook_pod()
    dirs = volume_dirs(pod, "/state")
    # A PVC outlives the pod; an emptyDir lives with it.
    assert dirs["home"] == "/state/volumes/default/claim-alice"
    assert dirs["cache"] == "/state/pods/default/jupyter-alice/volumes/cache"
    mounts = container_mounts(pod["spec"]["containers"][0], dirs)
    assert [(m.container_path, m.host_path, m.readonly) for m in mounts] == [
        ("/home/jovyan", dirs["home"], False),
        ("/home/jovyan/.cache", dirs["cache"], False),
    ]
    with pytest.raises(ValueError, match="names no volume"):
        container_mounts({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, dirs)


def test_security_context_decides_the_user():
    pod = notebook_pod(securityContext={"fsGroup": 100, "supplementalGroups": [5]})
    c = pod["spec"]["containers"][0]
    user = run_as(pod, c)
    assert (user.uid, user.gid, user.groups, user.fs_group) == (None, None, (100, 5), 100)
    c["securityContext"] = {"runAsUser": 1000, "runAsGroup": 100}
    user = run_as(pod, c)
    assert (user.uid, user.gid, user.groups, user.fs_group) == (1000, 100, (100, 5), 100)
    sec = container_config(pod, c, image="sha256:abc", volumes=volume_dirs(pod, "/s"),
                           extra_env={}).linux.security_context  # fmt: skip
    assert (sec.run_as_user.value, sec.run_as_group.value) == (1000, 100)
    assert list(sec.supplemental_groups) == [100, 5]


def test_without_run_as_user_the_image_user_applies():
    pod = notebook_pod()
    c = pod["spec"]["containers"][0]
    sec = container_config(pod, c, image="x", volumes=volume_dirs(pod, "/s"), extra_env={})
    assert not sec.linux.security_context.HasField("run_as_user")


def test_sandbox_and_container_identify_the_pod():
    pod = notebook_pod()
    pod["metadata"]["labels"] = {"app": "jupyterhub"}
    pod["metadata"]["annotations"] = {"org.criu.config": "/etc/criu/other.conf"}
    sb = sandbox_config(pod, "node-1", "/state/pods/default/jupyter-alice/logs")
    assert (sb.metadata.name, sb.metadata.namespace, sb.metadata.uid) == (
        "jupyter-alice",
        "default",
        "u1",
    )
    assert sb.labels[NODE_LABEL] == "node-1" and sb.labels["app"] == "jupyterhub"
    assert sb.annotations["org.criu.config"] == "/etc/criu/other.conf"
    assert sb.log_directory.endswith("/logs")
    c = pod["spec"]["containers"][0]
    cc = container_config(pod, c, image="sha256:abc", volumes=volume_dirs(pod, "/s"), extra_env={})
    assert cc.image.image == "sha256:abc" and cc.image.user_specified_image == "jupyter/base"
    assert list(cc.args) == ["jupyterhub-singleuser"] and list(cc.command) == []
    assert cc.working_dir == "/home/jovyan"
    assert cc.log_path == "notebook/0.log"
    assert cc.labels["io.kubernetes.container.name"] == "notebook"


def test_exit_codes_only_once_every_container_exited():
    def status(name, state, code=0):
        return cri.ContainerStatus(
            metadata=cri.ContainerMetadata(name=name), state=state, exit_code=code
        )

    running = status("a", cri.CONTAINER_RUNNING)
    exited = status("b", cri.CONTAINER_EXITED, 3)
    assert exit_codes([running, exited]) is None
    assert exit_codes([exited, status("a", cri.CONTAINER_EXITED)]) == {"b": 3, "a": 0}


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


def test_criu_reasons_come_from_the_log_runc_names():
    message = (
        "checkpointing container failed: /opt/jhub-suspend/bin/runc did not terminate "
        "successfully: exit status 1: criu failed: type DUMP errno 0 "
        "path= /state/containerd/state/k8s.io/abc/criu-dump.log"
    )
    assert criu_log_path(message) == "/state/containerd/state/k8s.io/abc/criu-dump.log"
    assert criu_log_path("criu failed: type RESTORE errno 0") == ""
    log = (
        "(00.012) Warn  (criu/cr-restore.c:1050): Set CLONE_PARENT | CLONE_NEWPID\n"
        "(00.079)     12: Error (criu/files-reg.c:2353): Can't open file home/jovyan/data.csv "
        "on restore: No such file or directory\n"
        "(00.080)     12: Error (criu/files.c:1221): Unable to open fd=64 id=0xa5\n"
        "(00.081)     12: Error (criu/files.c:1221): Unable to open fd=64 id=0xa5\n"
        "(00.134) Error (criu/cr-restore.c:2331): Restoring FAILED.\n"
        "(00.135) Error (criu/cgroup.c:2055): cg: cgroupd: recv req error\n"
    )
    # the first errors are the cause; repeats and warnings are left out
    assert criu_errors(log) == [
        "Can't open file home/jovyan/data.csv on restore: No such file or directory",
        "Unable to open fd=64 id=0xa5",
        "Restoring FAILED.",
    ]


def test_criu_errors_are_read_from_a_log_file(tmp_path):
    log = tmp_path / "restore.log"
    log.write_text("(00.1) Error (criu/files-reg.c:2353): Can't open file data.csv on restore\n")
    assert read_criu_errors(str(log)) == "Can't open file data.csv on restore"
    assert read_criu_errors(str(tmp_path / "missing.log")) == ""
    assert read_criu_errors("") == ""


def test_a_checkpoint_image_is_known_by_its_config_label():
    name = "org.criu.checkpoint.container.name"
    assert is_checkpoint_image({"config": {"Labels": {name: "notebook"}}})
    # containerd restores only what carries checkpointctl's name; CRI-O's alone is started
    crio = "io.kubernetes.cri-o.annotations.checkpoint.name"
    assert not is_checkpoint_image({"config": {"Labels": {crio: "notebook"}}})
    assert not is_checkpoint_image({"config": {"Cmd": ["jupyterhub-singleuser"]}})
    assert not is_checkpoint_image({})

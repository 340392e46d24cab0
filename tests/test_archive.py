"""The checkpoint archive layout (pure: no CRIU)."""

import io
import json
import os
import stat
import tarfile
from datetime import UTC, datetime

import pytest

from jhub_suspend import archive as ckpt


def make_checkpoint_dir(path, *, pipes="1234,5678"):
    os.makedirs(os.path.join(path, "checkpoint"))
    with open(os.path.join(path, "checkpoint", "inventory.img"), "wb") as f:
        f.write(b"\x00criu-image")
    with open(os.path.join(path, "dump.log"), "w") as f:
        f.write("(00.1) Dumping finished successfully\n")
    with open(os.path.join(path, "stats-dump"), "wb") as f:
        f.write(b"\x01\x02")
    created = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    annotations = ckpt.crio_annotations(
        container_name="notebook",
        pod_name="jupyter-alice",
        pod_namespace="default",
        pod_uid="uid-1",
        pod_ip="10.98.0.2",
        image="quay.io/jupyter/base-notebook",
        created=created,
    )
    annotations[ckpt.ANNOTATION_STDIO_PIPES] = pipes
    annotations[ckpt.ANNOTATION_NETNS_KEY] = "extNetNs"
    annotations[ckpt.ANNOTATION_POD_IP] = "10.98.0.2"
    ckpt.write_metadata(
        path,
        config=ckpt.config_dump(
            container_id="abc123",
            name="notebook",
            rootfs_image_name="quay.io/jupyter/base-notebook",
            created=created,
            checkpointed=created,
        ),
        spec=ckpt.spec_dump(
            args=["jupyterhub-singleuser"],
            env={"JUPYTERHUB_USER": "alice"},
            cwd="/home/alice",
            hostname="jupyter-alice",
            netns_path="/run/netns/jhs-a",
            annotations=annotations,
        ),
        net_status=ckpt.network_status(
            ip="10.98.0.2", prefixlen=24, gateway="10.98.0.1", sandbox="/run/netns/jhs-a"
        ),
    )
    return path


def test_file_names_match_checkpointctl():
    # checkpointctl lib/metadata.go constants and CRI-O's annotation
    assert ckpt.CHECKPOINT_DIRECTORY == "checkpoint"
    assert ckpt.CONFIG_DUMP_FILE == "config.dump"
    assert ckpt.SPEC_DUMP_FILE == "spec.dump"
    assert ckpt.NETWORK_STATUS_FILE == "network.status"
    assert ckpt.ROOTFS_DIFF_TAR == "rootfs-diff.tar"
    assert ckpt.DELETED_FILES_FILE == "deleted.files"
    assert ckpt.STATS_DUMP_FILE == "stats-dump"
    assert ckpt.DUMP_LOG_FILE == "dump.log"
    assert ckpt.CHECKPOINT_NAME_ANNOTATION == "io.kubernetes.cri-o.annotations.checkpoint.name"


def test_go_time_round_trip():
    dt = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert ckpt.go_time(dt) == "2026-01-02T03:04:05.678Z"
    assert ckpt.go_time(datetime(2026, 1, 2, tzinfo=UTC)) == "2026-01-02T00:00:00Z"
    assert ckpt.parse_go_time("2026-01-02T03:04:05.678Z") == dt
    assert ckpt.parse_go_time("2026-01-02T03:04:05.678000123Z") == dt
    assert ckpt.parse_go_time("2026-01-02T03:04:05Z").second == 5


def test_config_dump_keys():
    config = ckpt.config_dump(container_id="id", name="n", rootfs_image_name="img")
    for key in ("id", "name", "rootfsImageName", "runtime", "createdTime", "checkpointedTime"):
        assert key in config
    assert config["restored"] is False
    assert config["rootfsImage"] == "img"
    ckpt.parse_go_time(config["createdTime"])


def test_crio_annotations_for_checkpointctl():
    ann = ckpt.crio_annotations(
        container_name="notebook", pod_name="p", pod_namespace="ns", pod_ip="10.98.0.9"
    )
    assert ann["io.container.manager"] == "cri-o"
    assert json.loads(ann["io.kubernetes.cri-o.Metadata"]) == {"name": "notebook", "attempt": 0}
    assert ann["io.kubernetes.pod.name"] == "p"
    assert ann["io.kubernetes.pod.namespace"] == "ns"
    assert ann["io.kubernetes.container.name"] == "notebook"
    assert ann["io.kubernetes.cri-o.IP.0"] == "10.98.0.9"


def test_network_status_is_a_cni_result_list():
    status = ckpt.network_status(ip="10.98.0.2", prefixlen=24, gateway="10.98.0.1")
    assert status[0]["ips"][0]["address"] == "10.98.0.2/24"
    assert status[0]["ips"][0]["gateway"] == "10.98.0.1"
    assert status[0]["interfaces"][0]["name"] == "eth0"


def test_write_and_read_archive(tmp_path):
    src = make_checkpoint_dir(str(tmp_path / "work"))
    out = str(tmp_path / "checkpoint-jupyter-alice_default-notebook.tar")
    size = ckpt.write_archive(src, out)
    assert size == os.path.getsize(out)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600

    with tarfile.open(out) as tar:  # uncompressed, like CRI-O's default
        names = set(tar.getnames())
        assert tar.fileobj is not None
    for expected in (
        "checkpoint",
        "checkpoint/inventory.img",
        "config.dump",
        "spec.dump",
        "rootfs-diff.tar",
        "deleted.files",
        "network.status",
        "stats-dump",
        "dump.log",
    ):
        assert expected in names
    with open(out, "rb") as f:
        assert f.read(512)[257:262] == b"ustar"

    dest = ckpt.extract_archive(out, str(tmp_path / "extracted"))
    info = ckpt.read_checkpoint(dest)
    assert info.name == "notebook"
    assert info.config["id"] == "abc123"
    assert info.config["rootfsImageName"] == "quay.io/jupyter/base-notebook"
    assert info.spec["process"]["args"] == ["jupyterhub-singleuser"]
    assert "JUPYTERHUB_USER=alice" in info.spec["process"]["env"]
    assert info.annotations["io.container.manager"] == "cri-o"
    assert info.stdio_pipe_inodes == [1234, 5678]
    assert info.netns_key == "extNetNs"
    assert info.pod_ip == "10.98.0.2"
    assert info.network_status[0]["ips"][0]["address"] == "10.98.0.2/24"
    assert info.images_dir == os.path.join(dest, "checkpoint")
    with open(os.path.join(dest, "deleted.files")) as f:
        assert json.load(f) == []
    with tarfile.open(os.path.join(dest, "rootfs-diff.tar")) as diff:
        assert diff.getnames() == []


def test_write_archive_requires_layout(tmp_path):
    with pytest.raises(ckpt.ArchiveError, match="checkpoint/"):
        ckpt.write_archive(str(tmp_path), str(tmp_path / "x.tar"))
    os.makedirs(tmp_path / "checkpoint")
    with pytest.raises(ckpt.ArchiveError, match=r"config\.dump"):
        ckpt.write_archive(str(tmp_path), str(tmp_path / "x.tar"))
    assert not os.path.exists(tmp_path / "x.tar")


def test_read_checkpoint_errors(tmp_path):
    with pytest.raises(ckpt.ArchiveError, match="not a checkpoint"):
        ckpt.read_checkpoint(str(tmp_path))
    os.makedirs(tmp_path / "checkpoint")
    with pytest.raises(ckpt.ArchiveError, match=r"config\.dump"):
        ckpt.read_checkpoint(str(tmp_path))
    (tmp_path / "config.dump").write_text("{not json")
    (tmp_path / "spec.dump").write_text("{}")
    with pytest.raises(ckpt.ArchiveError, match="cannot read"):
        ckpt.read_checkpoint(str(tmp_path))


def test_extract_rejects_unsafe_entries(tmp_path):
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        data = b"x"
        info = tarfile.TarInfo("../escape")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ckpt.ArchiveError, match="outside"):
        ckpt.extract_archive(str(bad), str(tmp_path / "out"))
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tar:
        info = tarfile.TarInfo("checkpoint")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc"
        tar.addfile(info)
    with pytest.raises(ckpt.ArchiveError, match="only files"):
        ckpt.extract_archive(str(link), str(tmp_path / "out2"))


def test_extract_rejects_non_archives(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar file" * 10)
    with pytest.raises(ckpt.ArchiveError, match="cannot read"):
        ckpt.extract_archive(str(junk), str(tmp_path / "out"))


def test_extract_accepts_gzip_layers(tmp_path):
    src = make_checkpoint_dir(str(tmp_path / "work"))
    layer = tmp_path / "layer.tar.gz"
    with tarfile.open(layer, "w:gz") as tar:
        for name in ("checkpoint", "config.dump", "spec.dump"):
            tar.add(os.path.join(src, name), arcname=name)
    info = ckpt.read_checkpoint(ckpt.extract_archive(str(layer), str(tmp_path / "out")))
    assert info.name == "notebook"


def test_pinned_reference_drops_the_tag_when_a_digest_is_given():
    from jhub_suspend.images import pinned_reference

    digest = "sha256:" + "a" * 64
    assert pinned_reference(f"127.0.0.1:5000/ckpt/alice:v1@{digest}") == (
        f"127.0.0.1:5000/ckpt/alice@{digest}"
    )
    assert pinned_reference("127.0.0.1:5000/ckpt/alice:v1") == "127.0.0.1:5000/ckpt/alice:v1"
    assert pinned_reference(f"registry/alice@{digest}") == f"registry/alice@{digest}"

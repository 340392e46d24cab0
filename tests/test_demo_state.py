"""What the demo keeps in its state directory so that a suspended server survives a restart."""

import json
import os
import socket
import stat

from jhub_suspend.demo.app import PORTS_FILE, kept_ports, port_taken
from jhub_suspend.demo.hub import CRYPT_KEY_FILE, crypt_key


def test_the_crypt_key_is_made_once_and_kept(tmp_path):
    first = crypt_key(str(tmp_path))
    assert len(first) == 64 and set(first) <= set("0123456789abcdef")  # 32 bytes, as hex
    # the next start of the demo reads the same key, so sealed checkpoints stay readable
    assert crypt_key(str(tmp_path)) == first
    mode = stat.S_IMODE(os.stat(tmp_path / CRYPT_KEY_FILE).st_mode)
    assert mode == 0o600
    # another hub, another key
    other = tmp_path / "other"
    other.mkdir()
    assert crypt_key(str(other)) != first


def test_the_ports_a_restore_needs_are_picked_once_and_kept(tmp_path):
    state = str(tmp_path)
    first = kept_ports(state)
    assert set(first) == {"registry", "hub"}
    assert all(0 < p < 65536 for p in first.values()) and first["registry"] != first["hub"]
    # the next start of the demo uses the same ports: a checkpoint names its registry by
    # host:port, and a restored server calls the hub where it first found it
    assert kept_ports(state) == first
    assert json.loads((tmp_path / PORTS_FILE).read_text()) == first
    # a port the file lacks (or spoils) is picked anew; the others are kept
    (tmp_path / PORTS_FILE).write_text(json.dumps({"registry": first["registry"], "hub": "x"}))
    again = kept_ports(state)
    assert again["registry"] == first["registry"] and isinstance(again["hub"], int)
    assert kept_ports(state) == again
    # a torn file: new ports, written whole
    (tmp_path / PORTS_FILE).write_text('{"registry": 50')
    fresh = kept_ports(state)
    assert json.loads((tmp_path / PORTS_FILE).read_text()) == fresh


def test_a_kept_port_in_use_is_told(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert port_taken(port)
    assert not port_taken(port)


def test_two_ports_picked_at_once_differ(tmp_path, monkeypatch):
    from jhub_suspend.localcluster import services

    handed_out = iter([5000, 5000, 5001])  # the kernel may give a just-closed port again
    monkeypatch.setattr(services, "free_port", lambda host="127.0.0.1": next(handed_out))
    assert kept_ports(str(tmp_path)) == {"registry": 5000, "hub": 5001}

"""What the demo keeps in its state directory so that a suspended server survives a restart."""

import os
import stat

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

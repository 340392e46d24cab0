"""CRIU command lines and failure messages (pure: CRIU is not run)."""

import pytest

from jhub_suspend.localcluster.criu import (
    DEFAULT_CRIU,
    criu_error_lines,
    criu_failure_message,
    dump_args,
    external_netns_option,
    images_log_path,
    inherit_fd_option,
    pipe_resource,
    restore_args,
)


def test_default_criu_path():
    assert DEFAULT_CRIU == "/opt/jhub-suspend/bin/criu"


def test_dump_args_for_a_pod_container():
    argv = dump_args(
        "/x/criu",
        pid=4242,
        images_dir="/w/checkpoint",
        work_dir="/w",
        external_netns=(4026532178, "extNetNs"),
    )
    assert argv[:2] == ["/x/criu", "dump"]
    assert argv[argv.index("--tree") + 1] == "4242"
    assert argv[argv.index("--images-dir") + 1] == "/w/checkpoint"
    assert argv[argv.index("--work-dir") + 1] == "/w"
    assert argv[argv.index("--log-file") + 1] == "dump.log"
    assert "-v4" in argv
    assert "--leave-running" in argv
    assert "--tcp-established" in argv
    assert "--tcp-close" not in argv
    assert "--file-locks" in argv
    assert "--shell-job" not in argv
    assert argv[argv.index("--external") + 1] == "net[4026532178]:extNetNs"


def test_dump_args_options():
    argv = dump_args(
        "criu",
        pid=7,
        images_dir="/d",
        leave_running=False,
        tcp_established=False,
        tcp_close=True,
        file_locks=False,
        ghost_limit=1 << 20,
        extra=["--skip-in-flight"],
    )
    assert "--leave-running" not in argv
    assert "--tcp-close" in argv and "--tcp-established" not in argv
    assert "--file-locks" not in argv
    assert "--external" not in argv and "--work-dir" not in argv
    assert argv[argv.index("--ghost-limit") + 1] == str(1 << 20)
    assert argv[-1] == "--skip-in-flight"


@pytest.mark.parametrize("pid", [0, -1])
def test_dump_args_rejects_bad_pid(pid):
    with pytest.raises(ValueError):
        dump_args("criu", pid=pid, images_dir="/d")


def test_tcp_modes_are_exclusive():
    with pytest.raises(ValueError):
        dump_args("criu", pid=1, images_dir="/d", tcp_established=True, tcp_close=True)
    with pytest.raises(ValueError):
        restore_args("criu", images_dir="/d", pidfile="/p", tcp_established=True, tcp_close=True)


def test_restore_args_into_another_netns_with_fresh_pipe():
    argv = restore_args(
        "/x/criu",
        images_dir="/src/checkpoint",
        pidfile="/w/restore.pid",
        work_dir="/w",
        inherit_fds={9: "extNetNs", 11: pipe_resource(21556)},
    )
    assert argv[:2] == ["/x/criu", "restore"]
    assert argv[argv.index("--images-dir") + 1] == "/src/checkpoint"
    assert argv[argv.index("--pidfile") + 1] == "/w/restore.pid"
    assert argv[argv.index("--work-dir") + 1] == "/w"
    assert argv[argv.index("--log-file") + 1] == "restore.log"
    assert "--restore-detached" in argv
    assert "--tcp-established" in argv
    assert "--file-locks" in argv
    inherits = [argv[i + 1] for i, a in enumerate(argv) if a == "--inherit-fd"]
    assert inherits == ["fd[9]:extNetNs", "fd[11]:pipe:[21556]"]


def test_restore_args_tcp_close_and_pairs():
    argv = restore_args(
        "criu",
        images_dir="/d",
        pidfile="/p",
        tcp_established=False,
        tcp_close=True,
        detached=False,
        inherit_fds=[(5, "k")],
    )
    assert "--tcp-close" in argv and "--tcp-established" not in argv
    assert "--restore-detached" not in argv
    assert argv[argv.index("--inherit-fd") + 1] == "fd[5]:k"


def test_option_helpers():
    assert external_netns_option(12, "key") == "net[12]:key"
    assert inherit_fd_option(3, "key") == "fd[3]:key"
    assert pipe_resource(99) == "pipe:[99]"
    assert images_log_path("/img", "dump.log") == "/img/dump.log"
    assert images_log_path("/img", "dump.log", "/work") == "/work/dump.log"
    assert images_log_path("/img", "/abs/x.log", "/work") == "/abs/x.log"


LOG = """\
(00.000010) Version: 4.2.1 (gitid 0)
(00.044344) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.044400) Warn  (criu/cr-dump.c:1): something harmless
(00.044825) Error (compel/src/lib/infect.c:417): Unable to detach from 4000000: No such process
(00.044830) Error (criu/cr-dump.c:1975): Dumping FAILED.
"""


def test_error_lines_are_criu_reasons_without_noise():
    lines = criu_error_lines(LOG)
    assert lines == [
        "Error (compel/src/lib/infect.c:417): Unable to detach from 4000000: No such process",
        "Error (criu/cr-dump.c:1975): Dumping FAILED.",
    ]


def test_error_lines_keep_noise_when_it_is_all_there_is():
    only = "(00.1) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: EPERM\n"
    assert len(criu_error_lines(only)) == 1


def test_error_lines_limit_and_pie_prefix():
    text = "\n".join(f"(0.{i}) 1: Error (criu/files.c:{i}): bad {i}" for i in range(10))
    lines = criu_error_lines(text, limit=3)
    assert [line.split("bad ")[1] for line in lines] == ["7", "8", "9"]


def test_failure_message():
    msg = criu_failure_message("dump", 1, LOG)
    assert msg.startswith("criu dump failed (exit 1): ")
    assert "No such process" in msg and "Dumping FAILED" in msg
    assert criu_failure_message("restore", None, "").startswith("criu restore timed out")
    assert "boom" in criu_failure_message("restore", 2, "", stderr="x\nboom\n")

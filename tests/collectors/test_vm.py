"""What collect --vm / the lab add to a QEMU command line."""

from pathlib import Path

from kmltrace.collectors import vm


def test_tcg_gets_int_logging_pause_on_reset_qmp_and_a_serial_file(tmp_path):
    argv, from_stdout = vm.augment_command(["qemu-system-x86_64", "-m", "64M", "-kernel", "k"],
                                           tmp_path, "/tmp/q.sock")
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64" and argv[-2:] == ["-kernel", "k"]
    assert f"-d int,cpu_reset -D {tmp_path / 'qemu.log'}" in joined
    assert "-action reboot=shutdown,shutdown=pause" in joined
    assert "-qmp unix:/tmp/q.sock,server=on,wait=off" in joined
    assert "-S" in argv
    assert f"-serial file:{tmp_path / 'console.log'}" in joined
    assert from_stdout is False


def test_kvm_logs_cpu_reset_only_and_keeps_the_users_serial(tmp_path):
    for accel in (["-enable-kvm"], ["-accel", "kvm"], ["-machine", "q35,accel=kvm"]):
        argv, from_stdout = vm.augment_command(["qemu-system-x86_64", *accel, "-nographic"],
                                               tmp_path, "/s")
        assert vm.uses_kvm(argv)
        assert argv[argv.index("-d") + 1] == "cpu_reset"
        assert "-serial" not in argv and from_stdout is True
    assert not vm.uses_kvm(["qemu-system-x86_64", "-accel", "tcg"])


def test_status_end_from_qmp_events():
    assert vm._status_end([{"event": "SHUTDOWN", "data": {"guest": True,
                                                          "reason": "guest-reset"}}]) == "reset"
    assert vm._status_end([{"event": "SHUTDOWN", "data": {"guest": True,
                                                          "reason": "guest-shutdown"}}]) \
        == "shutdown"
    assert vm._status_end([{"event": "RESUME"}]) is None


def test_files_lists_only_what_exists_and_skips_empty_data(tmp_path: Path):
    (tmp_path / "qemu.log").write_text("CPU Reset (CPU 0)\n")
    (tmp_path / "console.log").write_text("")
    (tmp_path / "registers.txt").write_text("RAX=0\n")
    files = {f["path"]: f for f in vm._files(tmp_path)}
    assert set(files) == {"qemu.log", "registers.txt"}
    assert files["registers.txt"]["role"] == "meta" and files["qemu.log"]["role"] == "data"

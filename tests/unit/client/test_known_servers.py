"""minigit.client.known_servers: the service's key is pinned at first contact,
matched afterwards, and a changed key is refused naming the line to delete; a
damaged file never crashes the client nor counts as a pin."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigit import identity
from minigit.client import known_servers as ks
from minigit.client.known_servers import check_server_key, forget_server
from minigit.errors import ExitCode, MalformedKey, MinigitError, ServerKeyChanged, UsageError

BOOT = "localhost:9092"


def new_key_text() -> str:
    return identity.public_key_text(Ed25519PrivateKey.generate().public_key())


KEY_A = identity.public_key_text(Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key())
KEY_B = identity.public_key_text(Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))).public_key())


def fingerprint(key_text: str) -> str:
    return identity.fingerprint(identity.parse_public_key(key_text))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def known(config_dir: Path) -> Path:
    return config_dir / "known_servers"


# ---------------------------------------------------------------- first contact, then matches


def test_first_contact_pins_the_key_owner_only(tmp_path):
    config_dir = tmp_path / "a" / "cfg"
    old_umask = os.umask(0o000)  # the most permissive umask must not widen the modes
    try:
        result = check_server_key(config_dir, BOOT, "", KEY_A)
    finally:
        os.umask(old_umask)
    assert result == ks.PinResult(True, known(config_dir), 1, fingerprint(KEY_A))
    assert result.pinned and not result.matched
    assert known(config_dir).read_text() == f"localhost:9092 - {KEY_A}\n"
    assert mode(known(config_dir)) == 0o600 and mode(config_dir) == 0o700


def test_a_strict_umask_still_leaves_a_file_its_owner_can_append_to(tmp_path):
    old_umask = os.umask(0o277)
    try:
        check_server_key(tmp_path / "cfg", BOOT, "", KEY_A)
    finally:
        os.umask(old_umask)
    assert mode(known(tmp_path / "cfg")) == 0o600 and mode(tmp_path / "cfg") == 0o700
    check_server_key(tmp_path / "cfg", "other:1", "", KEY_B)


def test_an_existing_config_dir_keeps_its_mode(tmp_path):
    tmp_path.chmod(0o755)
    check_server_key(tmp_path, BOOT, "ns", KEY_A)
    assert mode(tmp_path) == 0o755 and mode(known(tmp_path)) == 0o600


def test_the_same_key_again_matches_and_writes_nothing(tmp_path):
    check_server_key(tmp_path, BOOT, "ns", KEY_A)
    before = known(tmp_path).read_bytes()
    result = check_server_key(tmp_path, BOOT, "ns", KEY_A)
    assert result.matched and result.line == 1 and result.fingerprint == fingerprint(KEY_A)
    assert known(tmp_path).read_bytes() == before


def test_a_changed_key_is_refused_naming_the_line_to_delete(tmp_path):
    check_server_key(tmp_path, "other:1", "", KEY_B)
    check_server_key(tmp_path, BOOT, "team", KEY_A)
    before = known(tmp_path).read_bytes()
    with pytest.raises(ServerKeyChanged) as raised:
        check_server_key(tmp_path, BOOT, "team", KEY_B)
    error = raised.value
    assert error.exit_code == ExitCode.AUTH == 6
    assert error.message == (
        f"the key of the minigit service at localhost:9092 (namespace 'team') has changed: "
        f"pinned {fingerprint(KEY_A)}, now {fingerprint(KEY_B)}; someone may be impersonating the service"
    )
    assert error.hint == (
        f"if the service's key was changed on purpose, delete line 2 of {known(tmp_path)} "
        "and run the command again to pin the new key"
    )
    assert (error.lines, error.path) == ([2], str(known(tmp_path)))
    assert known(tmp_path).read_bytes() == before  # the new key is not pinned


def test_the_empty_namespace_is_named_as_such(tmp_path):
    check_server_key(tmp_path, BOOT, "", KEY_A)
    with pytest.raises(ServerKeyChanged, match=r"service at localhost:9092 \(the empty namespace\)"):
        check_server_key(tmp_path, BOOT, "", KEY_B)


def test_each_bootstrap_and_namespace_is_its_own_service(tmp_path):
    results = [
        check_server_key(tmp_path, BOOT, "", KEY_A),
        check_server_key(tmp_path, BOOT, "ns", KEY_B),
        check_server_key(tmp_path, "localhost:9093", "", KEY_B),
        check_server_key(tmp_path, "localhost:9092,localhost:9093", "", KEY_A),
    ]
    assert [r.pinned for r in results] == [True] * 4 and [r.line for r in results] == [1, 2, 3, 4]
    assert known(tmp_path).read_text().splitlines() == [
        f"localhost:9092 - {KEY_A}",
        f"localhost:9092 ns {KEY_B}",
        f"localhost:9093 - {KEY_B}",
        f"localhost:9092,localhost:9093 - {KEY_A}",
    ]


def test_the_bootstrap_is_compared_as_written_by_check_bootstrap(tmp_path):
    check_server_key(tmp_path, " localhost:9092 , b:1,", "", KEY_A)
    assert check_server_key(tmp_path, "localhost:9092,b:1", "", KEY_A).matched
    with pytest.raises(ServerKeyChanged):
        check_server_key(tmp_path, "localhost:9092, b:1", "", KEY_B)


# ---------------------------------------------------------------- a file edited by hand


def test_comments_blanks_and_malformed_lines_are_ignored(tmp_path):
    lines = [
        "# known minigit services",
        "",
        "   ",
        f"# localhost:9092 - {KEY_B}",  # a comment, even though the rest is a valid pin
        f"  # localhost:9092 - {KEY_B}",
        "garbage",
        f"localhost:9092 {KEY_B}",  # two fields
        f"localhost:9092 - {KEY_B} extra",  # four fields
        "localhost:9092 - ed25519:not-a-key",
        f"localhost:9092 - {KEY_B.rstrip('=')}",  # not the canonical spelling
        f"localhost:9092 - {KEY_B.replace('ed25519', 'x25519')}",
    ]
    known(tmp_path).write_text("\n".join(lines) + "\n")
    result = check_server_key(tmp_path, BOOT, "", KEY_A)  # none of those is a pin of this service
    assert result.pinned and result.line == len(lines) + 1
    assert known(tmp_path).read_text().splitlines()[:-1] == lines


def test_a_valid_line_after_a_malformed_one_still_counts(tmp_path):
    known(tmp_path).write_text(f"localhost:9092 - ed25519:broken\nlocalhost:9092 - {KEY_A}\n")
    assert check_server_key(tmp_path, BOOT, "", KEY_A).line == 2
    with pytest.raises(ServerKeyChanged) as raised:
        check_server_key(tmp_path, BOOT, "", KEY_B)
    assert raised.value.lines == [2]


def test_bytes_that_are_not_utf8_spoil_their_own_line_only(tmp_path):
    known(tmp_path).write_bytes(b"\xff\xfe garbage \x80\nlocalhost:9092 - " + KEY_A.encode() + b"\n")
    assert check_server_key(tmp_path, BOOT, "", KEY_A).line == 2


def test_crlf_lines_count(tmp_path):
    known(tmp_path).write_bytes(f"# windows\r\nlocalhost:9092 - {KEY_A}\r\n".encode())
    assert check_server_key(tmp_path, BOOT, "", KEY_A).line == 2


def test_any_of_several_pins_of_a_service_matches(tmp_path):
    known(tmp_path).write_text(f"localhost:9092 - {KEY_A}\n# next key\nlocalhost:9092 - {KEY_B}\n")
    assert check_server_key(tmp_path, BOOT, "", KEY_B).line == 3
    assert check_server_key(tmp_path, BOOT, "", KEY_A).line == 1
    with pytest.raises(ServerKeyChanged) as raised:
        check_server_key(tmp_path, BOOT, "", new_key_text())
    assert raised.value.lines == [1, 3] and "delete lines 1, 3 of" in (raised.value.hint or "")


def test_a_last_line_left_open_is_closed_before_appending(tmp_path):
    known(tmp_path).write_text("# no newline at the end")
    result = check_server_key(tmp_path, BOOT, "", KEY_A)
    assert result.line == 2
    assert known(tmp_path).read_text() == f"# no newline at the end\nlocalhost:9092 - {KEY_A}\n"
    assert check_server_key(tmp_path, BOOT, "", KEY_A).line == 2


def test_a_file_too_large_is_refused_and_left_alone(tmp_path):
    known(tmp_path).write_bytes(b"#" * (ks.MAX_FILE_BYTES + 1))
    with pytest.raises(MinigitError, match="larger than 1048576 bytes"):
        check_server_key(tmp_path, BOOT, "", KEY_A)
    assert known(tmp_path).stat().st_size == ks.MAX_FILE_BYTES + 1


def test_a_file_of_exactly_the_limit_is_read(tmp_path):
    line = f"localhost:9092 - {KEY_A}\n".encode()
    known(tmp_path).write_bytes(b"#" * (ks.MAX_FILE_BYTES - len(line) - 1) + b"\n" + line)
    assert check_server_key(tmp_path, BOOT, "", KEY_A).line == 2


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(known(tmp_path), 0o600)
    with pytest.raises(MinigitError, match="not a regular file"):
        check_server_key(tmp_path, BOOT, "", KEY_A)


def test_a_directory_in_its_place_is_a_clear_error(tmp_path):
    known(tmp_path).mkdir()
    with pytest.raises(MinigitError, match=r"^cannot (read|write) "):
        check_server_key(tmp_path, BOOT, "", KEY_A)


def test_a_config_dir_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "cfg").write_text("not a directory")
    with pytest.raises(MinigitError, match=r"^cannot (read|write) "):
        check_server_key(tmp_path / "cfg", BOOT, "", KEY_A)


def test_a_symlinked_file_is_followed(tmp_path):
    (tmp_path / "dotfiles").mkdir()
    real = tmp_path / "dotfiles" / "known_servers"
    real.write_text(f"localhost:9092 - {KEY_A}\n")
    (tmp_path / "cfg").mkdir()
    known(tmp_path / "cfg").symlink_to(real)
    assert check_server_key(tmp_path / "cfg", BOOT, "", KEY_A).matched
    check_server_key(tmp_path / "cfg", BOOT, "ns", KEY_B)
    assert real.read_text().count("\n") == 2


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(st.binary(max_size=400))
def test_whatever_the_file_holds_the_answer_is_a_pin_or_a_changed_key(tmp_path, content):
    config_dir = tmp_path / str(hash(content))
    config_dir.mkdir(exist_ok=True)
    known(config_dir).write_bytes(content)
    try:
        result = check_server_key(config_dir, BOOT, "", KEY_A)
    except ServerKeyChanged:
        return
    assert check_server_key(config_dir, BOOT, "", KEY_A).line == result.line
    assert known(config_dir).read_bytes().startswith(content)  # appended, never rewritten


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "key_text", ["", "ed25519:", KEY_A + "\n", KEY_A.rstrip("="), "x25519:" + KEY_A[8:], None, 42, b"bytes"]
)
def test_a_malformed_key_from_the_service_is_refused_and_nothing_is_written(tmp_path, key_text):
    with pytest.raises(MalformedKey):
        check_server_key(tmp_path, BOOT, "", key_text)  # type: ignore[arg-type]
    assert not known(tmp_path).exists()


@pytest.mark.parametrize(
    ("bootstrap", "namespace"),
    [
        ("", ""),
        ("no-port", ""),
        ("[fe80::1%a b]:9092", ""),  # an IPv6 scope may hold a blank…
        ("[fe80::1%a\nevil:1 - x]:9092", ""),  # …or a newline: neither may reach the file
        ("[fe80::1%é]:9092", ""),
        (BOOT, "bad namespace"),
        (BOOT, "-"),  # would read back as the empty namespace
        (BOOT, "x" * 101),
        (None, ""),
        (BOOT, None),
    ],
)
def test_a_bad_bootstrap_or_namespace_is_a_usage_error_and_nothing_is_written(tmp_path, bootstrap, namespace):
    with pytest.raises(UsageError):
        check_server_key(tmp_path, bootstrap, namespace, KEY_A)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        forget_server(tmp_path, bootstrap, namespace)  # type: ignore[arg-type]
    assert not known(tmp_path).exists()


@given(st.one_of(st.text(max_size=60), st.none(), st.integers(), st.binary(max_size=20)), st.text(max_size=20))
def test_whatever_names_the_service_the_error_is_a_minigit_error(bootstrap, namespace):
    with pytest.raises(MinigitError):
        ks.Service.of(bootstrap, namespace + " ")  # type: ignore[arg-type]
    try:
        service = ks.Service.of(bootstrap, "")  # type: ignore[arg-type]
    except MinigitError:
        return
    assert all(33 <= ord(c) <= 126 for c in service.bootstrap)


# ---------------------------------------------------------------- two commands at once


def test_a_pin_made_by_another_command_meanwhile_is_judged_not_doubled(tmp_path, monkeypatch):
    check_server_key(tmp_path, BOOT, "", KEY_A)
    monkeypatch.setattr(ks, "read_known_servers", lambda path: b"")  # it read before the other one wrote
    with pytest.raises(ServerKeyChanged):
        check_server_key(tmp_path, BOOT, "", KEY_B)
    assert check_server_key(tmp_path, BOOT, "", KEY_A).matched
    assert known(tmp_path).read_text().count("\n") == 1


def test_first_contacts_at_once_make_one_line(tmp_path):
    errors: list[BaseException] = []

    def contact() -> None:
        try:
            check_server_key(tmp_path, BOOT, "", KEY_A)
        except BaseException as error:  # noqa: BLE001  (reported by the assertion below)
            errors.append(error)

    threads = [threading.Thread(target=contact) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert known(tmp_path).read_text() == f"localhost:9092 - {KEY_A}\n"


# ---------------------------------------------------------------- forgetting


def test_forget_removes_only_that_services_lines(tmp_path):
    content = (
        b"# mine\n"
        + f"localhost:9092 - {KEY_A}\n".encode()
        + b"garbage \xff line\n"
        + f"localhost:9092 ns {KEY_B}\n".encode()
        + f"localhost:9092 - {KEY_B}\n".encode()
        + b"last line open"
    )
    known(tmp_path).write_bytes(content)
    assert forget_server(tmp_path, BOOT, "")
    assert known(tmp_path).read_bytes() == (
        b"# mine\ngarbage \xff line\n" + f"localhost:9092 ns {KEY_B}\n".encode() + b"last line open"
    )
    assert mode(known(tmp_path)) == 0o600
    assert not forget_server(tmp_path, BOOT, "")
    assert check_server_key(tmp_path, BOOT, "", new_key_text()).pinned  # the next key is pinned anew
    assert check_server_key(tmp_path, BOOT, "ns", KEY_B).matched


def test_forget_without_a_file_or_a_pin_is_false_and_writes_nothing(tmp_path):
    assert not forget_server(tmp_path, BOOT, "")
    assert not known(tmp_path).exists()
    known(tmp_path).write_text("# nothing\n")
    before = known(tmp_path).stat().st_mtime_ns
    assert not forget_server(tmp_path, BOOT, "ns")
    assert known(tmp_path).stat().st_mtime_ns == before


def test_forget_keeps_a_symlinked_file_a_symlink(tmp_path):
    (tmp_path / "dotfiles").mkdir()
    real = tmp_path / "dotfiles" / "known_servers"
    real.write_text(f"localhost:9092 - {KEY_A}\nother:1 - {KEY_B}\n")
    (tmp_path / "cfg").mkdir()
    known(tmp_path / "cfg").symlink_to(real)
    assert forget_server(tmp_path / "cfg", BOOT, "")
    assert known(tmp_path / "cfg").is_symlink()
    assert real.read_text() == f"other:1 - {KEY_B}\n"
    assert [p.name for p in (tmp_path / "dotfiles").iterdir()] == ["known_servers"]  # no temporary file left


def test_the_changed_key_hint_leads_back_to_a_working_pin(tmp_path):
    """Doing what the hint says (deleting the line) pins the new key."""
    check_server_key(tmp_path, BOOT, "", KEY_A)
    with pytest.raises(ServerKeyChanged) as raised:
        check_server_key(tmp_path, BOOT, "", KEY_B)
    path, (line,) = Path(raised.value.path), raised.value.lines
    kept = [text for number, text in enumerate(path.read_text().splitlines(True), start=1) if number != line]
    path.write_text("".join(kept))
    assert check_server_key(tmp_path, BOOT, "", KEY_B).pinned

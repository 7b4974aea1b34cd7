"""The service keys this user has met: the client pins a service's Ed25519 key
on first contact and refuses a different one later, as ssh does with known_hosts.

The file is ``<config dir>/known_servers``, one line per service::

    # comments start with '#'
    kafka1:9092,kafka2:9092 - ed25519:<base64 of 32 bytes>
    localhost:9092 team-a. ed25519:<base64 of 32 bytes>

the bootstrap list (as ``config.check_bootstrap`` writes it), the namespace (``-``
for the empty one) and the key (``identity.public_key_text``), separated by
blanks. A service is its bootstrap and namespace: the same Kafka may carry
several services, each with its own key. A line that is not three such fields is
ignored (a hand edit gone wrong must not lock the user out, nor count as a pin);
a later valid line for the same service still counts. Lines are only appended
(first contact) or removed (``forget_server``), and the file is written owner-only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from minigit import identity, key_files
from minigit.config import CONFIG_DIR_ENV, check_bootstrap, check_namespace
from minigit.errors import MalformedKey, MinigitError, ServerKeyChanged, UsageError

KNOWN_SERVERS = "known_servers"
FILE_MODE = 0o600
DIR_MODE = 0o700
EMPTY_NAMESPACE = "-"
# A line is ~150 bytes: a file larger than this is not one a person keeps, and
# reading a part of it could miss a pin and so pin again.
MAX_FILE_BYTES = 1024 * 1024
# What a field of a line may hold: printable ASCII, no blank (blanks separate fields).
_FIELD_RE = re.compile(r"[!-~]+")
ELSEWHERE = f"choose another config directory with {CONFIG_DIR_ENV}"


@dataclass(frozen=True)
class Service:
    """One minigit service as the file names it: its bootstrap list and namespace."""

    bootstrap: str
    namespace: str

    @classmethod
    def of(cls, bootstrap: str, namespace: str) -> Service:
        """Checked and spelled as the file writes them (UsageError for a bad one)."""
        if not isinstance(bootstrap, str) or not isinstance(namespace, str):
            raise UsageError("a service is named by its bootstrap and namespace texts")
        if namespace == EMPTY_NAMESPACE:  # it would read back as the empty namespace
            raise UsageError(f"the namespace '{EMPTY_NAMESPACE}' cannot be told from the empty one in {KNOWN_SERVERS}")
        bootstrap = check_bootstrap(bootstrap)
        if not _FIELD_RE.fullmatch(bootstrap):  # an IPv6 scope may hold anything, a newline too
            raise UsageError(f"bad bootstrap {bootstrap!r}: only printable ASCII without blanks can be pinned")
        return cls(bootstrap, check_namespace(namespace))

    @property
    def fields(self) -> tuple[str, str]:
        return self.bootstrap, self.namespace or EMPTY_NAMESPACE

    def __str__(self) -> str:
        namespace = f"namespace '{self.namespace}'" if self.namespace else "the empty namespace"
        return f"at {self.bootstrap} ({namespace})"


@dataclass(frozen=True)
class Pin:
    """A valid line of the file about one service."""

    line: int
    key_text: str


@dataclass(frozen=True)
class PinResult:
    """The service's key is the one pinned: ``pinned`` now (first contact, line
    ``line`` appended), or matched with line ``line``."""

    pinned: bool
    path: Path
    line: int
    fingerprint: str

    @property
    def matched(self) -> bool:
        return not self.pinned


def known_servers_path(config_dir: Path) -> Path:
    return config_dir / KNOWN_SERVERS


def check_server_key(config_dir: Path, bootstrap: str, namespace: str, key_text: str) -> PinResult:
    """Whether ``key_text`` may be the key of the service at ``bootstrap`` and
    ``namespace``: pinned now if the service is unknown, matched if it is pinned
    with this key; ServerKeyChanged if it is pinned with another one.
    MalformedKey if ``key_text`` is not a key (a service that sends none)."""
    service = Service.of(bootstrap, namespace)
    identity.parse_public_key(key_text)  # only the canonical spelling passes: keys compare as text
    path = known_servers_path(config_dir)
    pins = find_pins(decode_lines(read_known_servers(path)), service)
    if pins:
        return judge_pins(path, service, pins, key_text)
    return pin_server(path, service, key_text)


def read_known_servers(path: Path) -> bytes:
    """The file's bytes (none when there is no file), at most MAX_FILE_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO would block
    except FileNotFoundError:
        return b""
    except OSError as error:
        raise cannot_read(path, error) from None
    try:
        return read_bounded(path, fd)
    finally:
        os.close(fd)


def read_bounded(path: Path, fd: int) -> bytes:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise MinigitError(f"cannot read {path}: not a regular file", hint=f"move {path} away")
    data = os.pread(fd, MAX_FILE_BYTES + 1, 0)
    if len(data) > MAX_FILE_BYTES:
        raise MinigitError(
            f"cannot read {path}: larger than {MAX_FILE_BYTES} bytes", hint="remove the lines you do not need"
        )
    return data


def decode_lines(data: bytes) -> list[str]:
    """The file's lines, numbered as an editor numbers them (split at newlines
    only); a byte that is not UTF-8 spoils its own line, not the file."""
    return [line.decode("utf-8", errors="replace") for line in data.split(b"\n")]


def find_pins(lines: list[str], service: Service) -> list[Pin]:
    """The valid lines about ``service``; comments, blanks and malformed lines are skipped."""
    pins = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if len(fields) != 3 or fields[0].startswith("#") or tuple(fields[:2]) != service.fields:
            continue
        with contextlib.suppress(MalformedKey):
            identity.parse_public_key(fields[2])
            pins.append(Pin(number, fields[2]))
    return pins


def judge_pins(path: Path, service: Service, pins: list[Pin], key_text: str) -> PinResult:
    """Matched if any pin holds the key (several lines may: a change of key
    announced beforehand); otherwise the key changed."""
    fingerprint = fingerprint_of(key_text)
    for pin in pins:
        if pin.key_text == key_text:
            return PinResult(False, path, pin.line, fingerprint)
    lines = [pin.line for pin in pins]
    raise ServerKeyChanged(str(service), str(path), lines, fingerprint_of(pins[0].key_text), fingerprint)


def fingerprint_of(key_text: str) -> str:
    return identity.fingerprint(identity.parse_public_key(key_text))


def pin_server(path: Path, service: Service, key_text: str) -> PinResult:
    """Append the service's line, under a lock, unless another command pinned it
    meanwhile (then that pin is judged): two first contacts make one line."""
    make_config_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, FILE_MODE)
    except OSError as error:
        raise key_files.cannot_write(path, error, ELSEWHERE) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd is closed
        data = read_bounded(path, fd)
        pins = find_pins(decode_lines(data), service)
        if pins:
            return judge_pins(path, service, pins, key_text)
        line = " ".join((*service.fields, key_text)).encode("ascii") + b"\n"
        if data and not data.endswith(b"\n"):
            data += b"\n"  # a hand edit left the last line open
            line = b"\n" + line
        append_line(path, fd, line, new_file=not data)
    finally:
        os.close(fd)
    return PinResult(True, path, data.count(b"\n") + 1, fingerprint_of(key_text))


def append_line(path: Path, fd: int, line: bytes, new_file: bool) -> None:
    """Write ``line`` at the end and make it (and a new file's name) survive a crash."""
    try:
        if new_file:
            os.fchmod(fd, FILE_MODE)  # its creation mode passed through the umask
        os.write(fd, line)
        os.fsync(fd)
        if new_file:
            key_files.sync_directory(path.parent)
    except OSError as error:
        raise key_files.cannot_write(path, error, ELSEWHERE) from None


def make_config_dir(directory: Path) -> None:
    """The config directory, created owner-only if it is not there yet."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=DIR_MODE)
        os.chmod(directory, DIR_MODE)  # mkdir's mode passes through the umask
    except FileExistsError:
        return
    except OSError as error:
        raise key_files.cannot_write(directory, error, ELSEWHERE) from None


def forget_server(config_dir: Path, bootstrap: str, namespace: str) -> bool:
    """Remove the service's pins, so that its key is pinned again on next contact;
    whether there were any. Every other line is kept byte for byte."""
    service = Service.of(bootstrap, namespace)
    path = known_servers_path(config_dir)
    if not find_pins(decode_lines(read_known_servers(path)), service):
        return False
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise key_files.cannot_write(path, error, ELSEWHERE) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # no first contact appends while the file is rewritten
        data = read_bounded(path, fd)
        dropped = {pin.line for pin in find_pins(decode_lines(data), service)}
        if dropped:
            kept = [line for number, line in enumerate(data.split(b"\n"), start=1) if number not in dropped]
            replace_file(path.resolve(), b"\n".join(kept))  # resolved: a symlinked file stays a symlink
    finally:
        os.close(fd)
    return bool(dropped)


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` whole under a temporary name, then rename it over ``path``:
    a crash leaves the old file or the new one, never a part."""
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    except OSError as error:
        raise key_files.cannot_write(path, error, ELSEWHERE) from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        key_files.sync_directory(path.parent)
    except OSError as error:
        raise key_files.cannot_write(path, error, ELSEWHERE) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def cannot_read(path: Path, error: OSError) -> MinigitError:
    return MinigitError(f"cannot read {path}: {error.strerror or error}", hint=f"check that path, or {ELSEWHERE}")

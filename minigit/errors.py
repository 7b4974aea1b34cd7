"""The one exception family of minigit, and the exit codes it maps to.

The core raises these with a user-ready message (and maybe a hint); it never
prints. The CLIs turn them into one line on stderr and an exit code, in one
place (``minigit.console.exit_on_error``).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented in docs/exit-codes.md; keep the two in step."""

    OK = 0
    ERROR = 1  # the operation failed: no such repository, corrupt .minigit, bad input
    USAGE = 2  # bad flags or arguments (click's own code for usage errors)
    REJECTED = 3  # push rejected, pull refused, replicas disagree
    UNREACHABLE = 4  # Kafka or the server did not answer in time
    BUSY = 5  # another minigit command holds this working directory
    AUTH = 6  # authentication or permission refused: the service's pinned key changed
    INTERRUPTED = 130


class MinigitError(Exception):
    """A failure with a message meant for the user."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(MinigitError):
    exit_code = ExitCode.USAGE


class NoRepository(MinigitError):
    """The current directory is not a minigit working directory."""

    def __init__(self) -> None:
        super().__init__(
            "no repository found: clone first",
            hint="run 'minigit clone NAME' (or 'minigit init NAME' to create one)",
        )


class RepositoryNotFound(MinigitError):
    def __init__(self, name: str) -> None:
        super().__init__(f"repository '{name}' does not exist on the server")
        self.name = name


class RepositoryExists(MinigitError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"repository '{name}' already exists",
            hint=f"clone it with 'minigit clone {name}'",
        )
        self.name = name


class PushRejected(MinigitError):
    """The server's head moved past the version the push was based on."""

    exit_code = ExitCode.REJECTED

    def __init__(self, repo: str, server: str, base: int, head: int) -> None:
        super().__init__(
            f"push rejected: the server is at version {head}, you are at version {base} (fetch first)",
            hint="run 'minigit pull' to integrate the remote changes, then push again",
        )
        self.repo, self.server, self.base, self.head = repo, server, base, head


class PullConflict(MinigitError):
    """A pull (or checkout) would overwrite local files it cannot merge: files of
    yours that are not tracked, or that stand where it needs a folder; for a
    checkout, local edits to files the version changed. Nothing was touched."""

    exit_code = ExitCode.REJECTED

    def __init__(self, paths: list[str], action: str = "pull") -> None:
        listed = "\n\t".join(paths)
        hint = {
            "checkout": "push your changes first, or put those files back with 'minigit restore', then check out again",
            "restore": "they are not tracked (or stand where a file goes back): move them out of the way, then restore",
        }.get(action, "move those files out of the way (they are not tracked, or stand where a folder goes), then pull")
        super().__init__(f"the following files of yours would be overwritten by {action}:\n\t{listed}", hint=hint)
        self.paths, self.action = paths, action


class UnresolvedConflicts(MinigitError):
    """A pull left conflicts that are not resolved yet: push (and checkout) wait for them."""

    exit_code = ExitCode.REJECTED

    def __init__(self, paths: list[str]) -> None:
        listed = "\n\t".join(paths)
        super().__init__(
            f"you have unresolved conflicts:\n\t{listed}",
            hint="edit those files to remove the <<<<<<< ======= >>>>>>> markers (or delete or rename "
            "PATH.theirs once you chose), then run the command again",
        )
        self.paths = paths


class MergeConflicts(MinigitError):
    """The pull finished, at the new version, and left conflicts marked in files."""

    exit_code = ExitCode.REJECTED

    def __init__(self, version: int, paths: list[str]) -> None:
        listed = "\n\t".join(paths)
        super().__init__(
            f"pulled version {version}, with conflicts in:\n\t{listed}",
            hint="fix them (remove the markers, or choose between PATH and PATH.theirs), then push; "
            "'minigit status' lists what is left",
        )
        self.version, self.paths = version, paths


class ServerUnreachable(MinigitError):
    exit_code = ExitCode.UNREACHABLE


class WorkdirBusy(MinigitError):
    exit_code = ExitCode.BUSY

    def __init__(self, path: str) -> None:
        super().__init__(
            f"another minigit command is running in {path}",
            hint="wait for it to finish, then try again",
        )


class CorruptMetadata(MinigitError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"{path} is corrupt: {reason}",
            hint="nothing was changed; clone the repository again into a new directory",
        )


class CloneUnfinished(MinigitError):
    """A clone into an existing directory stopped before it installed every file."""

    def __init__(self, repo: str, path: str) -> None:
        super().__init__(
            f"the clone of '{repo}' into {path} did not finish",
            hint="run 'minigit pull' there to finish it",
        )
        self.repo, self.path = repo, path


class UnsafePath(MinigitError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"unsafe path {path!r}: {reason}")
        self.path = path


class ProtocolError(MinigitError):
    """A message that does not follow minigit's wire schema."""


# -- identity: keys and signatures (minigit.identity, minigit.client.keys)


class MalformedKey(MinigitError):
    """A public key's text, or a private key file's content, that is not an Ed25519 key."""


class MalformedSignature(MinigitError):
    """A signature's text that cannot be an Ed25519 signature (as opposed to one that
    is well formed and does not verify, which is ``verify``'s False)."""


class NoKey(MinigitError):
    def __init__(self, user: str, path: str) -> None:
        super().__init__(
            f"no key for user '{user}' in {path}",
            hint=f"create one with 'minigit auth keygen --user {user}'",
        )
        self.user, self.path = user, path


class KeyExists(MinigitError):
    def __init__(self, user: str, path: str) -> None:
        super().__init__(
            f"a key for user '{user}' already exists in {path}",
            hint=f"'minigit auth show --user {user}' prints it; a new key is a new identity: "
            "remove that file first only if you mean to lose the old one",
        )
        self.user, self.path = user, path


class UnsafeKeyFile(MinigitError):
    """A private key others could read or replace: refused, as ssh refuses one."""

    def __init__(self, path: str, reason: str, hint: str) -> None:
        super().__init__(f"unsafe key file {path}: {reason}", hint=hint)
        self.path = path


# -- confidentiality and the server's identity (minigit.sealing, minigit.client.known_servers)


class SealBroken(MinigitError):
    """A sealed reply record that cannot be opened with the request's reply key:
    malformed, sealed to another key, or altered on the way. Never trusted."""


class ServerKeyChanged(MinigitError):
    """The service answered with another key than the one pinned at first contact:
    it may be an impostor, so nothing it says is used (as ssh refuses a changed host key)."""

    exit_code = ExitCode.AUTH

    def __init__(self, service: str, path: str, lines: list[int], pinned: str, offered: str) -> None:
        where = f"line {lines[0]}" if len(lines) == 1 else "lines " + ", ".join(str(line) for line in lines)
        super().__init__(
            f"the key of the minigit service {service} has changed: pinned {pinned}, now {offered}; "
            "someone may be impersonating the service",
            hint=f"if the service's key was changed on purpose, delete {where} of {path} "
            "and run the command again to pin the new key",
        )
        self.service, self.path, self.lines, self.pinned, self.offered = service, path, lines, pinned, offered


class PermissionDenied(MinigitError):
    """The service refused: the verified user may not do this to that repository
    (or may not register, or the name is taken). Nothing changed."""

    exit_code = ExitCode.AUTH


class NotAuthenticated(MinigitError):
    """The service could not tell who sent the request: an unknown user, a key
    that is not the registered one, a request signed outside the replay window."""

    exit_code = ExitCode.AUTH

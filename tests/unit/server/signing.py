"""Signing for the server tests: fixed keys for users and for the service, signed
requests, properly signed log proposals, and an in-process client that signs its
requests and reads its answers as the real client does (signatures checked,
sealed records opened with the request's reply key).

Keys are derived from names, so every test (and every store built from one log)
sees the same keys; Ed25519 signatures are deterministic, so a log built twice is
the same log, byte for byte.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import uuid
from collections.abc import Callable, Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from minigit import codec, identity, sealing
from minigit import protocol as p
from minigit_server import access
from minigit_server.apply import Authority
from minigit_server.service import AppliedOffsets, Handled, MemoryWire, ServerIdentity, Service
from minigit_server.store import MemoryStore, Store

NOW_MS = 1_800_000_000_000
NAMESPACE = "lab-ns"


@functools.cache
def user_key(name: str) -> Ed25519PrivateKey:
    """The test key of ``name`` (any label: "alice", "mallory", "alice-new")."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"minigit test key\n" + name.encode()).digest())


def key_text(key: Ed25519PrivateKey) -> str:
    return identity.public_key_text(key.public_key())


SERVER_KEY = user_key("*the service*")
SERVER = ServerIdentity(NAMESPACE, SERVER_KEY)
AUTHORITY: Authority = SERVER.authority


def add_accounts(store: Store, *users: str) -> None:
    """Put accounts straight into a store, each with its user's test key (for tests
    that are not about registration; the log holds no record of them)."""
    for user in users:
        store.put_account(access.Account(user, key_text(user_key(user))))


def make_service(
    store: Store | None = None,
    *,
    users: Iterable[str] = ("u",),
    clock_ms: Callable[[], int] = lambda: NOW_MS,
    wire_class: type[MemoryWire] = MemoryWire,
    server: ServerIdentity = SERVER,
    replica_id: str = "7",
    **options,
) -> Service:
    """A Service over a memory wire (every append applied at once), ``users``
    registered with their test keys."""
    store = store if store is not None else MemoryStore()
    applied = AppliedOffsets({})
    wire = wire_class(store, applied, authority=server.authority)
    add_accounts(store, *users)
    return Service(replica_id, store, wire, applied, server, clock_ms=clock_ms, **options)


# ---------------------------------------------------------------- requests


def digest_of(chunks: Iterable[p.Chunk] | str) -> str:
    """The chunks digest a request names (its ``chunks`` field, signed like every
    other): of chunk records, or given as it is."""
    if isinstance(chunks, str):
        return chunks
    return identity.chunks_digest(identity.ChunkDigest.of(chunk) for chunk in chunks)


def signed(
    request: p.Request,
    key: Ed25519PrivateKey | None = None,
    chunks: Iterable[p.Chunk] | str = (),
    *,
    signed_ms: int | None = NOW_MS,
    namespace: str = NAMESPACE,
) -> p.Request:
    """``request`` naming the digest of ``chunks`` and signed (by its user's test key
    unless ``key`` says otherwise) for ``namespace``, stamped ``signed_ms`` (None: as
    it is)."""
    if signed_ms is not None:
        request = dataclasses.replace(request, signed_ms=signed_ms)
    key = key if key is not None else user_key(request.user)
    return identity.sign_request(key, request, digest_of(chunks), namespace)


# ---------------------------------------------------------------- log proposals

# The request each proposal is made from (service.Service.handle_*).
REQUEST_OF: dict[type[p.Proposal], type[p.Request]] = {
    p.CreateProposal: p.InitRequest,
    p.PushProposal: p.PushRequest,
    p.ShareProposal: p.ShareRequest,
    p.VisibilityProposal: p.VisibilityRequest,
    p.RegisterProposal: p.RegisterRequest,
    p.RotateProposal: p.RotateRequest,
    p.SettleProposal: p.OutcomeRequest,
}


def request_for(kind: type[p.Proposal], signed_ms: int, **fields) -> p.Request:
    """The request a client sends for a ``kind`` proposal with ``fields``."""
    return REQUEST_OF[kind](**fields, reply_partition=0, signed_ms=signed_ms)


def signed_write(
    request: p.Request,
    key: Ed25519PrivateKey | None = None,
    chunks: str = identity.NO_CHUNKS,
    *,
    server_key: Ed25519PrivateKey | None = SERVER_KEY,
    namespace: str = NAMESPACE,
    named_key: str | None = None,
) -> p.SignedWrite:
    """What an owner carries into the log for ``request`` (already signed, or signed
    here by ``key``, naming ``chunks``): the request, the key (``named_key``, by
    default the signer's) and the service's attestation of it (none for a
    registration, or with ``server_key=None``)."""
    if not request.signature:
        request = signed(request, key, chunks, signed_ms=None, namespace=namespace)
    author = named_key or key_text(key if key is not None else user_key(request.user))
    attest = server_key is not None and not isinstance(request, p.RegisterRequest)
    return p.SignedWrite(
        request=request.to_bytes().decode(),
        key=author,
        attestation=access.attest(server_key, namespace, request, author) if attest else "",
    )


def signed_proposal(
    kind: type[p.Proposal],
    *,
    time_ms: int,
    proposer: str = "r0",
    key: Ed25519PrivateKey | None = None,
    signed_ms: int | None = None,
    chunks: str = identity.NO_CHUNKS,
    server_key: Ed25519PrivateKey | None = SERVER_KEY,
    namespace: str = NAMESPACE,
    named_key: str | None = None,
    **fields,
) -> p.Proposal:
    """A ``kind`` proposal as an owner writes it: its fields, and the request they
    came from signed by ``key`` (the user's test key by default) ``signed_ms``
    (default: ``time_ms``) naming the digest ``chunks`` of its uploads, with
    ``named_key`` (default: the signer's) as the author's key, attested by
    ``server_key``."""
    request = request_for(kind, time_ms if signed_ms is None else signed_ms, **fields)
    key = key if key is not None else user_key(request.user)
    request = signed(request, key, chunks, signed_ms=None, namespace=namespace)
    proof = signed_write(request, key, chunks, server_key=server_key, namespace=namespace, named_key=named_key)
    return kind(**access.proposal_fields(request), time_ms=time_ms, proposer=proposer, signed=proof)


def admin_proposal(
    user: str,
    op: p.AdminOp,
    public_key: str = "",
    *,
    request_id: str | None = None,
    time_ms: int = NOW_MS,
    signer: Ed25519PrivateKey = SERVER_KEY,
    namespace: str = NAMESPACE,
) -> p.AdminProposal:
    """An operator's account change, signed by ``signer`` (the service's key)."""
    proposal = p.AdminProposal(
        request_id=request_id or uuid.uuid4().hex,
        repo=user,
        user=user,
        time_ms=time_ms,
        proposer="operator",
        op=op,
        public_key=public_key,
    )
    return access.sign_operator(signer, proposal, namespace)


def delete_proposal(
    repo: str,
    *,
    request_id: str | None = None,
    time_ms: int = NOW_MS,
    signer: Ed25519PrivateKey = SERVER_KEY,
    namespace: str = NAMESPACE,
) -> p.DeleteProposal:
    """An operator's deletion of ``repo``, signed by ``signer`` (the service's key)."""
    proposal = p.DeleteProposal(
        request_id=request_id or uuid.uuid4().hex, repo=repo, user="operator", time_ms=time_ms, proposer="operator"
    )
    return access.sign_operator(signer, proposal, namespace)


# ---------------------------------------------------------------- a client in the same process


class Client:
    """One user talking to a Service, as the real client does: it uploads chunks,
    and signs a request at each sending, naming the digest of the chunks it
    uploaded under that request id for that sending; it reads what came back on
    its reply partition, checking each reply's signature by the service's key and
    opening sealed records with its reply key."""

    def __init__(
        self,
        service: Service,
        user: str,
        key: Ed25519PrivateKey | None = None,
        reply_partition: int = 1,
        namespace: str = NAMESPACE,
    ) -> None:
        self.service, self.user = service, user
        self.key = key if key is not None else user_key(user)
        self.reply_partition, self.namespace = reply_partition, namespace
        self.reply_key: X25519PrivateKey = sealing.new_reply_key()
        self.opener = sealing.StreamOpener(self.reply_key)
        self.pending: dict[str, list[p.Chunk]] = {}  # uploaded since the request was last sent
        self.sent: dict[str, tuple[p.Request, list[p.Chunk]]] = {}  # as last sent (signed), with its chunks

    @property
    def reply_key_text(self) -> str:
        return sealing.reply_key_text(self.reply_key.public_key())

    def request(self, cls: type[p.Request], repo: str, request_id: str | None = None, **fields) -> p.Request:
        """An unsigned request of this client's, with its reply key."""
        values = dict(
            request_id=request_id or uuid.uuid4().hex,
            repo=repo,
            user=self.user,
            reply_partition=self.reply_partition,
            reply_key=self.reply_key_text,
        )
        return cls(**{**values, **fields})

    def upload(self, request_id: str, repo: str, data: bytes) -> str:
        """Send one blob's chunks under ``request_id``; its sha."""
        blob = codec.BlobSource.from_bytes(data)
        for chunk in p.blob_chunks(request_id, repo, blob):
            self.send_chunk(chunk)
        return blob.sha

    def send_chunk(self, chunk: p.Chunk) -> None:
        self.pending.setdefault(chunk.request_id, []).append(chunk)
        assert self.service.handle(NOW_MS, chunk.to_bytes()) is None  # chunks go to the log, unanswered

    def sign(self, request: p.Request, **options) -> p.Request:
        """``request`` signed with this client's key, naming the digest of what it
        uploaded for it since it was last sent (``options``: those of ``signed``)."""
        options.setdefault("namespace", self.namespace)
        return signed(request, self.key, self.pending.get(request.request_id, ()), **options)

    def send(self, request: p.Request, *, sign: bool = True, received_ms: int = NOW_MS, **options) -> Handled | None:
        """Sign ``request`` (unless told not to) and hand it to the service."""
        if sign:
            request = self.sign(request, **options)
        self.sent[request.request_id] = (request, self.pending.pop(request.request_id, []))
        return self.service.handle(received_ms, request.to_bytes())

    def resend(
        self, request_id: str, *, chunks: bool = True, received_ms: int = NOW_MS, signed_ms: int | None = None
    ) -> Handled | None:
        """What the client's retry does: the chunks sent with the request again
        (unless told not to: lost on the way), then the same request (same id and
        contents) signed again ``signed_ms`` (default: ``received_ms``), naming the
        same chunks."""
        request, uploaded = self.sent[request_id]
        self._upload_again(uploaded, chunks)
        signed_ms = received_ms if signed_ms is None else signed_ms
        request = signed(request, self.key, uploaded, signed_ms=signed_ms, namespace=self.namespace)
        self.sent[request_id] = (request, uploaded)
        return self.service.handle(received_ms, request.to_bytes())

    def replay(self, request_id: str, *, chunks: bool = True, received_ms: int = NOW_MS) -> Handled | None:
        """What anyone who reads repo-requests can do: the chunks sent with the
        request again (unless told not to), then the very same signed request, byte
        for byte, as it was last sent."""
        request, uploaded = self.sent[request_id]
        self._upload_again(uploaded, chunks)
        return self.service.handle(received_ms, request.to_bytes())

    def _upload_again(self, uploaded: list[p.Chunk], chunks: bool) -> None:
        if chunks:
            for chunk in uploaded:
                assert self.service.handle(NOW_MS, chunk.to_bytes()) is None

    def records(self, request_id: str) -> list[p.Message]:
        """Every record sent for ``request_id`` on this client's reply partition,
        sealed ones opened (SealBroken if one does not open with the reply key);
        every reply's signature is the service's."""
        found = []
        for partition, message in self.service.wire.replies:
            if partition != self.reply_partition or message.request_id != request_id:
                continue
            if isinstance(message, p.Sealed):
                message = p.parse_message(self.opener.open(message), allowed=(p.Chunk, p.Reply))
                assert message.request_id == request_id
            if isinstance(message, p.Reply):
                server = self.service.server
                assert sealing.reply_signed_by(server.public_key, message, server.namespace), message
            found.append(message)
        return found

    def answers(self, request_id: str) -> list[p.Message]:
        """The records of the answer(s): all but "working" replies."""
        return [m for m in self.records(request_id) if getattr(m, "status", None) != p.Status.WORKING]

    def answer(self, request_id: str) -> p.Reply:
        """The last reply to ``request_id``."""
        replies = [m for m in self.answers(request_id) if isinstance(m, p.Reply)]
        assert replies, f"no answer to {request_id}"
        return replies[-1]

    def call(self, cls: type[p.Request], repo: str, **fields) -> p.Reply:
        """Send a new signed request; its answer."""
        request = self.request(cls, repo, **fields)
        self.send(request)
        return self.answer(request.request_id)

    def commit(
        self,
        cls: type[p.InitRequest] | type[p.PushRequest],
        repo: str,
        files: dict[str, bytes],
        request_id: str | None = None,
        **fields,
    ) -> p.Reply:
        """Upload ``files`` and their tree, then init or push it; the answer."""
        request_id = request_id or uuid.uuid4().hex
        manifest = {path: p.FileEntry(self.upload(request_id, repo, data), len(data)) for path, data in files.items()}
        tree = self.upload(request_id, repo, p.encode_tree(manifest))
        self.send(self.request(cls, repo, request_id, tree=tree, **fields))
        return self.answer(request_id)


def register(service: Service, user: str, key: Ed25519PrivateKey | None = None) -> Ed25519PrivateKey:
    """Register ``user`` through ``service`` (a signed RegisterRequest, decided in
    the log); its key (the user's test key unless ``key`` says otherwise)."""
    client = Client(service, user, key)
    reply = client.call(p.RegisterRequest, user, public_key=key_text(client.key))
    assert reply.status == p.Status.ACCEPTED, reply
    return client.key

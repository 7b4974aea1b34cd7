"""minigit.protocol: the wire schema, the path and name rules, trees and chunks."""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigit import codec
from minigit import protocol as p
from minigit.errors import MinigitError, ProtocolError, UnsafePath

RID = "0123456789abcdef0123456789abcdef"
RID2 = "fedcba9876543210fedcba9876543210"
SHA = "a" * 64
SHA2 = "b" * 64
# Key and signature texts as they travel (the fields' contents are checked by
# minigit.identity and minigit.sealing; protocol bounds their length only): the
# public keys of RFC 8032 tests 1 and 2, RFC 7748's Alice, two Ed25519 signatures.
ED_KEY = "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
ED_KEY2 = "ed25519:PUAXw+hDiVqStwqnTRt+vJyYLM8uxJaMwM1V8Sr0Zgw="
X_KEY = "x25519:hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
SIGNATURE = "zNBHgYZZAZIAVURT8Fo6BPcqI4Exknvn1V8MTiqzX93fFohJtitzX7/7lawSI1zZJgRmIAVxulZqOdGAmdbRAw=="
SIGNATURE2 = "10dWSGFm1zN+dWJ57b5RJhDhD+yFr3o19YWwVWLwz3OzyA60Xu6Mvahd861rPAU3LQIsPNgrKgvCxbXi6vbSDA=="
SIGNED = {"signed_ms": 1_700_000_000_000, "chunks": SHA2, "reply_key": X_KEY, "signature": SIGNATURE}


def signed_write(request: p.Request) -> p.SignedWrite:
    return p.SignedWrite(request=request.to_bytes().decode(), key=ED_KEY, attestation=SIGNATURE2)


# ---------------------------------------------------------------- sample messages


def samples() -> dict[type[p.Message], p.Message]:
    init = p.InitRequest(
        request_id=RID, repo="repo", user="alice", reply_partition=2, tree=SHA, message="first ünïcode", **SIGNED
    )
    push = p.PushRequest(
        request_id=RID, repo="repo", user="carol", reply_partition=7, base=4, tree=SHA2, message="msg",
        base_tree=SHA, **SIGNED,
    )  # fmt: skip
    share = p.ShareRequest(
        request_id=RID, repo="repo", user="alice", reply_partition=1, member="bob", level=p.Access.WRITE, **SIGNED
    )
    visibility = p.VisibilityRequest(
        request_id=RID, repo="repo", user="alice", reply_partition=1, visibility=p.Visibility.PUBLIC, **SIGNED
    )
    register = p.RegisterRequest(
        request_id=RID, repo="frank", user="frank", reply_partition=3, public_key=ED_KEY, **SIGNED
    )
    rotate = p.RotateRequest(request_id=RID, repo="frank", user="frank", reply_partition=3, new_key=ED_KEY2, **SIGNED)
    proposed = {"request_id": RID, "time_ms": 456, "proposer": "r1"}
    return {
        p.Chunk: p.Chunk(
            request_id=RID,
            repo="repo",
            sha=SHA,
            index=1,
            count=3,
            encoding="raw",
            payload=b"hello",
            stream="s1",
            reply_partition=2,
        ),
        p.InitRequest: init,
        p.PullRequest: p.PullRequest(
            request_id=RID,
            repo="repo",
            user="bob",
            reply_partition=0,
            timeout_ms=5000,
            version=3,
            lost=[SHA, SHA2],
            target=2,
            base_tree=SHA2,
        ),
        p.PushRequest: push,
        p.LogRequest: p.LogRequest(
            request_id=RID,
            repo="repo",
            user="dave",
            reply_partition=1,
            limit=10,
            paths=["src", "docs/a.md"],
            changes=True,
            **SIGNED,
        ),
        p.ReposRequest: p.ReposRequest(
            request_id=RID, repo="dave", user="dave", reply_partition=1, after="lab", limit=50, **SIGNED
        ),
        p.OutcomeRequest: p.OutcomeRequest(
            request_id=RID, repo="repo", user="dave", reply_partition=1, of_request=RID2, tree=SHA, **SIGNED
        ),
        p.PingRequest: p.PingRequest(request_id=RID, repo="repo", user="eve", reply_partition=0),
        p.ShareRequest: share,
        p.VisibilityRequest: visibility,
        p.RegisterRequest: register,
        p.RotateRequest: rotate,
        p.Reply: p.Reply(
            request_id=RID,
            action="push",
            stream="stream-1",
            replica="r1",
            status=p.Status.ACCEPTED,
            message="accepted as version 5",
            version=5,
            head=5,
            tree=SHA,
            blob_count=2,
            blob_bytes=10,
            entries=[
                p.LogEntry(
                    version=5,
                    author="carol",
                    time_ms=1_700_000_000_000,
                    message="m",
                    signed=signed_write(push),
                    tree=SHA2,
                    changes=[
                        p.FileChange(path="a.txt", kind=p.ChangeKind.ADDED, size=3),
                        p.FileChange(path="bin/run", kind=p.ChangeKind.MODIFIED, size=9, mode=p.FileMode.EXECUTABLE),
                    ],
                    changes_more=4,
                )
            ],
            repos=[
                p.RepoInfo(
                    name="lab",
                    head=3,
                    time_ms=1_700_000_000_000,
                    author="carol",
                    visibility=p.Visibility.PUBLIC,
                    access="public",
                )
            ],
            more=True,
            server_key=ED_KEY2,
            signature=SIGNATURE2,
        ),
        p.CreateProposal: p.CreateProposal(
            request_id=RID,
            repo="repo",
            user="alice",
            tree=SHA,
            message="",
            time_ms=123,
            proposer="r0",
            signed=signed_write(init),
            visibility=p.Visibility.PUBLIC,
        ),
        p.PushProposal: p.PushProposal(
            request_id=RID,
            repo="repo",
            user="alice",
            tree=SHA,
            message="m",
            time_ms=456,
            proposer="r1",
            base=2,
            base_tree=SHA2,
        ),
        p.ShareProposal: p.ShareProposal(
            **proposed, repo="repo", user="alice", member="bob", level=p.Access.WRITE, signed=signed_write(share)
        ),
        p.VisibilityProposal: p.VisibilityProposal(
            **proposed, repo="repo", user="alice", visibility=p.Visibility.PUBLIC, signed=signed_write(visibility)
        ),
        p.RegisterProposal: p.RegisterProposal(
            **proposed, repo="frank", user="frank", public_key=ED_KEY, signed=signed_write(register)
        ),
        p.RotateProposal: p.RotateProposal(
            **proposed, repo="frank", user="frank", new_key=ED_KEY2, signed=signed_write(rotate)
        ),
        p.SettleProposal: p.SettleProposal(**proposed, repo="repo", user="dave", of_request=RID2, tree=SHA),
        p.DeleteProposal: p.DeleteProposal(**proposed, repo="repo", user="operator", operator_signature=SIGNATURE),
        p.AdminProposal: p.AdminProposal(
            **proposed, repo="frank", user="frank", op=p.AdminOp.ADD, public_key=ED_KEY, operator_signature=SIGNATURE
        ),
        p.Sealed: p.Sealed(
            request_id=RID, stream="stream-1", sender_key=X_KEY, nonce="AAECAwQFBgcICQoL", box=b"sealed"
        ),
        p.Heartbeat: p.Heartbeat(
            replica="r0",
            host="h",
            pid=42,
            started_ms=1,
            sent_ms=2,
            serving=[0, 1],
            applied={0: 10},
            log_end={0: 12},
            repos={"repo": p.RepoReport(head=3, digest="d", partition=0, changed_at=9)},
            partitions={1: p.PartitionReport(repos=1, digest="e" * 64, pages=[""] * (p.REPORT_PAGES - 1) + ["ab"])},
            stopping=True,
            quarantined=[p.DamagedObject(partition=0, sha=SHA, problem="does not match", repaired=False)],
            quarantined_count=3,
            scrub=p.ScrubReport(
                request=RID,
                started_ms=5,
                finished_ms=9,
                objects=4,
                bytes=100,
                damaged=[p.DamagedObject(partition=1, sha=SHA2, problem="chunk 1 of 2 is missing", repaired=True)],
                damaged_count=1,
            ),
        ),
        p.ScrubRequest: p.ScrubRequest(request=RID, requested_ms=1_700_000_000_000),
        p.RepoPage: p.RepoPage(
            replica="r0",
            partition=1,
            page=p.report_page_of("repo"),
            applied=12,
            digest="0123456789abcdef",
            repos={"repo": p.RepoReport(head=3, digest="d", partition=1, changed_at=9)},
        ),
    }


MESSAGE_CLASSES = list(samples())


# Where the JSON form of before kept a binary message's bytes, in base64.
LEGACY_FIELDS = {p.Chunk: ("data", "payload"), p.Sealed: ("box", "box")}


def sample_doc(cls: type[p.Message]) -> dict:
    """A sample's JSON object; a binary message's in the JSON form of before (still read)."""
    message = samples()[cls]
    doc = message.to_dict()
    if cls in LEGACY_FIELDS:
        name, attribute = LEGACY_FIELDS[cls]
        doc[name] = base64.b64encode(getattr(message, attribute)).decode()
    return doc


def encode(doc: object) -> bytes:
    return json.dumps(doc).encode()


def test_every_wired_class_has_a_sample():
    wired = set(p._registry.values())
    assert wired == set(MESSAGE_CLASSES)


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.__name__)
def test_message_round_trip(cls):
    message = samples()[cls]
    raw = message.to_bytes()
    parsed = p.parse_message(raw)
    assert type(parsed) is cls
    assert parsed == message
    assert parsed.to_bytes() == raw
    doc = p.unframe(raw)[0] if cls.binary else json.loads(raw)
    assert doc["v"] == p.PROTOCOL_VERSION
    assert doc["type"] == cls.type


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.__name__)
def test_defaults_are_filled_in(cls):
    """Optional fields may be left out on the wire."""
    doc = sample_doc(cls)
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            del doc[f.name]
    parsed = p.parse_message(encode(doc))
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            assert getattr(parsed, f.name) == f.default
        elif f.default_factory is not dataclasses.MISSING:
            assert getattr(parsed, f.name) == f.default_factory()


def test_new_requests_default_to_private_unsigned_and_without_a_reply_key():
    doc = sample_doc(p.InitRequest)
    for name in ("visibility", "signed_ms", "reply_key", "signature"):
        del doc[name]
    request = p.parse_message(encode(doc))
    assert (request.visibility, request.signed_ms, request.reply_key, request.signature) == (
        p.Visibility.PRIVATE,
        0,
        "",
        "",
    )
    assert p.parse_message(encode({**sample_doc(p.CreateProposal), "signed": None})).signed is None


@pytest.mark.parametrize(
    "cls", [cls for cls in MESSAGE_CLASSES if cls.__dict__.get("action")], ids=lambda c: c.__name__
)
def test_every_action_names_one_class_of_its_type(cls):
    doc = json.loads(samples()[cls].to_bytes())
    assert (doc["type"], doc["action"]) == (cls.type, cls.action)
    assert p._registry[(cls.type, cls.action)] is cls


def test_request_actions_and_reply_action():
    assert json.loads(samples()[p.PushRequest].to_bytes())["action"] == "push"
    assert json.loads(samples()[p.PullRequest].to_bytes())["action"] == "pull"
    assert json.loads(samples()[p.CreateProposal].to_bytes())["type"] == "propose"
    assert json.loads(samples()[p.CreateProposal].to_bytes())["action"] == "init"
    # a reply names the action it answers, whatever it is
    doc = sample_doc(p.Reply)
    doc["action"] = "pull"
    reply = p.parse_message(encode(doc))
    assert isinstance(reply, p.Reply) and reply.action == "pull"


def test_unknown_fields_are_ignored():
    doc = sample_doc(p.PushRequest)
    doc["future_field"] = {"x": 1}
    assert p.parse_message(encode(doc)) == samples()[p.PushRequest]


# ---------------------------------------------------------------- malformed messages


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"not json",
        b'{"v": 1, "type": "chunk"',
        b"\xff\xfe\x00",
        '{"v": 1}'.encode("utf-16"),
    ],
)
def test_parse_rejects_malformed_json(raw):
    with pytest.raises(ProtocolError, match="not UTF-8 JSON"):
        p.parse_message(raw)


@pytest.mark.parametrize("doc", [[], [1, 2], "text", 1, None, True, 1.5])
def test_parse_rejects_non_objects(doc):
    with pytest.raises(ProtocolError, match="not a JSON object"):
        p.parse_message(encode(doc))


@pytest.mark.parametrize("version", [0, 2, "1", None, [1], -1])
def test_parse_rejects_wrong_protocol_version(version):
    doc = sample_doc(p.PushRequest)
    doc["v"] = version
    with pytest.raises(ProtocolError, match="unsupported protocol version"):
        p.parse_message(encode(doc))


def test_parse_rejects_missing_protocol_version():
    doc = sample_doc(p.PushRequest)
    del doc["v"]
    with pytest.raises(ProtocolError, match="unsupported protocol version"):
        p.parse_message(encode(doc))


@pytest.mark.parametrize("version", [True, 1.0])
def test_parse_rejects_protocol_version_of_wrong_type(version):
    doc = sample_doc(p.PushRequest)
    doc["v"] = version
    with pytest.raises(ProtocolError):
        p.parse_message(encode(doc))


@pytest.mark.parametrize(
    "type_, action",
    [
        ("nope", None),
        ("request", None),
        ("request", "delete"),
        ("propose", "pull"),
        ("propose", None),
        (None, None),
        ("Request", "push"),
        ("request", "PUSH"),
        (5, None),
    ],
)
def test_parse_rejects_unknown_type_or_action(type_, action):
    doc = sample_doc(p.PushRequest)
    doc["type"] = type_
    if action is None:
        del doc["action"]
    else:
        doc["action"] = action
    with pytest.raises(ProtocolError, match=r"unknown message type|must be strings"):
        p.parse_message(encode(doc))


@pytest.mark.parametrize(
    "doc",
    [
        {"v": 1, "type": ["chunk"]},
        {"v": 1, "type": {"a": 1}},
        {"v": 1, "type": "request", "action": ["push"]},
        {"v": 1, "type": "propose", "action": {}},
    ],
)
def test_parse_rejects_unhashable_type_or_action(doc):
    with pytest.raises(ProtocolError):
        p.parse_message(encode(doc))


def _required_fields(cls):
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


@pytest.mark.parametrize(
    "cls, name",
    [(cls, name) for cls in MESSAGE_CLASSES for name in _required_fields(cls)],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_parse_rejects_missing_fields(cls, name):
    doc = sample_doc(cls)
    if LEGACY_FIELDS.get(cls, (None, None))[1] == name:  # a frame's bytes: missing from the JSON form
        name = LEGACY_FIELDS[cls][0]
    del doc[name]
    with pytest.raises(ProtocolError, match=f"missing field '{name}'"):
        p.parse_message(encode(doc))


def _wrong_values(annotation) -> list:
    origin = typing.get_origin(annotation)
    optional = False
    if origin in (typing.Union, __import__("types").UnionType):
        optional = True
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        origin = typing.get_origin(annotation)
    expected = origin or annotation
    if isinstance(expected, type) and issubclass(expected, enum.Enum):
        expected = str
    if isinstance(expected, type) and issubclass(expected, p.Record):
        expected = dict  # a nested record is a JSON object
    wrong = {
        str: [5, 1.5, True, [], {}],
        int: ["5", 1.5, True, False, [], {}],
        list: ["x", 5, {}, True],
        dict: ["x", 5, [], True],
        bool: ["true", [], {}],
    }[expected]
    if not optional:
        wrong.append(None)
    return wrong


def _type_cases():
    for cls in MESSAGE_CLASSES:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            name, annotation = f.name, hints[f.name]
            if annotation is bytes:  # a frame's bytes: base64 text in the JSON form
                name, annotation = LEGACY_FIELDS[cls][0], str
            for value in _wrong_values(annotation):
                if expected_bool_ok(annotation, value):
                    continue
                yield pytest.param(cls, name, value, id=f"{cls.__name__}.{name}={value!r}")


def expected_bool_ok(annotation, value) -> bool:
    # bool fields accept True/False (and ints are not bools, so they are wrong)
    return annotation is bool and isinstance(value, bool)


@pytest.mark.parametrize("cls, name, value", list(_type_cases()))
def test_parse_rejects_wrong_types(cls, name, value):
    doc = sample_doc(cls)
    doc[name] = value
    # 'action' is part of the message's identity, checked before the fields
    match = (
        "'type' and 'action' must be strings|field 'action' must be" if name == "action" else f"field '{name}' must be"
    )
    with pytest.raises(ProtocolError, match=match):
        p.parse_message(encode(doc))


@pytest.mark.parametrize("field_name", ["reply_partition", "base", "timeout_ms"])
def test_bool_is_not_an_int(field_name):
    doc = sample_doc(p.PushRequest)
    doc[field_name] = True
    with pytest.raises(ProtocolError, match="must be int"):
        p.parse_message(encode(doc))


def test_optional_int_accepts_null_and_rejects_bool():
    doc = sample_doc(p.Reply)
    doc["version"] = None
    doc["head"] = None
    doc["tree"] = None
    reply = p.parse_message(encode(doc))
    assert reply.version is None and reply.head is None and reply.tree is None
    doc["version"] = False
    with pytest.raises(ProtocolError, match="'version' must be int"):
        p.parse_message(encode(doc))


BAD_IDS = [
    "",
    "0123456789ABCDEF0123456789ABCDEF",
    "0123456789abcdef0123456789abcde",
    "0123456789abcdef0123456789abcdef0",
    "0123456789abcdef0123456789abcdeg",
    "01234567-89ab-cdef-0123-456789abcdef",
    " 0123456789abcdef0123456789abcdef",
]


@pytest.mark.parametrize(
    "cls",
    [
        p.Chunk,
        p.PushRequest,
        p.PullRequest,
        p.RegisterRequest,
        p.Reply,
        p.PushProposal,
        p.CreateProposal,
        p.ShareProposal,
        p.AdminProposal,
        p.Sealed,
    ],
)
@pytest.mark.parametrize("rid", BAD_IDS)
def test_parse_rejects_bad_request_ids(cls, rid):
    doc = sample_doc(cls)
    doc["request_id"] = rid
    with pytest.raises(ProtocolError, match="request_id"):
        p.parse_message(encode(doc))


def test_parse_rejects_request_id_with_trailing_newline():
    doc = sample_doc(p.PushRequest)
    doc["request_id"] = RID + "\n"
    with pytest.raises(ProtocolError):
        p.parse_message(encode(doc))


BAD_NAMES = ["", ".", "..", "-x", "_x", ".hidden", "a b", "a/b", "a\\b", "é", "x" * 65, "a\x00", "a:b"]


@pytest.mark.parametrize("field_name", ["repo", "user"])
@pytest.mark.parametrize("name", BAD_NAMES)
def test_parse_rejects_bad_names(field_name, name):
    doc = sample_doc(p.PushRequest)
    doc[field_name] = name
    with pytest.raises(ProtocolError, match="name"):
        p.parse_message(encode(doc))


@pytest.mark.parametrize("cls", [p.Chunk, p.CreateProposal, p.PushProposal, p.InitRequest])
def test_parse_rejects_bad_repo_name_everywhere(cls):
    doc = sample_doc(cls)
    doc["repo"] = "../etc"
    with pytest.raises(ProtocolError, match="invalid repository name"):
        p.parse_message(encode(doc))


def _with(cls, **changes) -> bytes:
    doc = sample_doc(cls)
    doc.update(changes)
    return encode(doc)


@pytest.mark.parametrize(
    "raw, match",
    [
        (_with(p.Chunk, index=3, count=3), "index out of range"),
        (_with(p.Chunk, index=-1), "index.* out of range"),
        (_with(p.Chunk, index=0, count=0), "index out of range"),
        (_with(p.Chunk, encoding="gzip"), "unknown chunk encoding"),
        (_with(p.Chunk, sha="A" * 64), "invalid object id"),
        (_with(p.Chunk, sha="a" * 63), "invalid object id"),
        (_with(p.PushRequest, reply_partition=-1), "reply_partition"),
        (_with(p.PushRequest, timeout_ms=0), "timeout_ms"),
        (_with(p.PushRequest, base=0), "base must be"),
        (_with(p.PushRequest, tree="xyz"), "invalid object id"),
        (_with(p.PushRequest, message="m" * (p.MAX_MESSAGE_LENGTH + 1)), "message longer"),
        (_with(p.InitRequest, tree="g" * 64), "invalid object id"),
        (_with(p.InitRequest, message="m" * (p.MAX_MESSAGE_LENGTH + 1)), "message longer"),
        (_with(p.PullRequest, version=-1), "version.* out of range"),
        (_with(p.PullRequest, lost=[SHA] * (p.MAX_LOST + 1)), "lost lists more"),
        (_with(p.PullRequest, lost=["nope"]), "invalid object id"),
        (_with(p.PullRequest, lost=[5]), "field 'lost\\[0\\]' must be str"),
        (_with(p.LogRequest, limit=0), "limit"),
        (_with(p.LogRequest, limit=1001), "limit"),
        (_with(p.LogRequest, paths=["a"] * (p.MAX_LOG_PATHS + 1)), "paths lists more than 100"),
        (_with(p.LogRequest, paths=[3]), r"field 'paths\[0\]' must be str"),
        (_with(p.LogRequest, changes="yes"), "field 'changes' must be bool"),
        (_with(p.PullRequest, target=-1), "target.* out of range"),
        (_with(p.PullRequest, target=True), "field 'target' must be int"),
        (_with(p.PullRequest, base_tree="nope"), "invalid object id"),
        (_with(p.PushRequest, base_tree="nope"), "invalid object id"),
        (_with(p.PushProposal, base_tree=SHA.upper()), "invalid object id"),
        (_with(p.ReposRequest, repo="other"), "repo must equal user"),
        (_with(p.ReposRequest, after="../x"), "invalid repository name"),
        (_with(p.ReposRequest, limit=0), "limit must be between 1 and 1000"),
        (_with(p.ReposRequest, limit=1001), "limit must be between 1 and 1000"),
        (_with(p.OutcomeRequest, of_request="nope"), "request_id must be 32"),
        (_with(p.OutcomeRequest, of_request=RID), "of_request must name another request"),
        (_with(p.OutcomeRequest, tree="nope"), "invalid object id"),
        (_with(p.SettleProposal, of_request=RID.upper()), "request_id must be 32"),
        (_with(p.SettleProposal, tree=SHA.upper()), "invalid object id"),
        (_with(p.DeleteProposal, operator_signature="s" * 89), "operator_signature longer than 88"),
        (_with(p.Reply, more=1), "field 'more' must be bool"),
        (_with(p.Reply, status="canceled"), "'status' has an unknown value"),
        (_with(p.Reply, tree="nope"), "invalid object id"),
        (_with(p.PushProposal, tree="nope"), "invalid object id"),
        (_with(p.PushProposal, user="no body"), "invalid user name"),
        (_with(p.CreateProposal, message="m" * (p.MAX_MESSAGE_LENGTH + 1)), "message longer"),
        (_with(p.CreateProposal, visibility="secret"), "'visibility' has an unknown value 'secret'"),
        (_with(p.PushRequest, reply_key="x" * (p.MAX_KEY_TEXT + 1)), "reply_key longer than 60"),
        (_with(p.PushRequest, signature="s" * (p.MAX_SIGNATURE_TEXT + 1)), "signature longer than 88"),
        (_with(p.PingRequest, signature="s" * 10_000_000), "signature longer than 88"),
        (_with(p.PushRequest, signed_ms=-1), "signed_ms.* out of range"),
        (_with(p.PushRequest, signed_ms=p.MAX_INT), "signed_ms.* out of range"),
        (_with(p.PushRequest, chunks="nope"), "invalid object id"),
        (_with(p.PingRequest, chunks=SHA.upper()), "invalid object id"),
        (_with(p.InitRequest, visibility="secret"), "'visibility' has an unknown value"),
        (_with(p.ShareRequest, member="no body"), "invalid user name"),
        (_with(p.ShareRequest, level="owner"), "'level' has an unknown value 'owner'"),
        (_with(p.VisibilityRequest, visibility="hidden"), "'visibility' has an unknown value"),
        (_with(p.RegisterRequest, repo="someone"), "repo must equal user"),
        (_with(p.RegisterRequest, public_key="k" * (p.MAX_KEY_TEXT + 1)), "public_key longer than 60"),
        (_with(p.RotateRequest, user="someone"), "repo must equal user"),
        (_with(p.RotateRequest, new_key="k" * (p.MAX_KEY_TEXT + 1)), "new_key longer than 60"),
        (_with(p.Reply, server_key="k" * (p.MAX_KEY_TEXT + 1)), "server_key longer than 60"),
        (_with(p.Reply, signature="s" * (p.MAX_SIGNATURE_TEXT + 1)), "signature longer than 88"),
        (_with(p.ShareProposal, member="../x"), "invalid user name"),
        (_with(p.ShareProposal, level="root"), "'level' has an unknown value"),
        (_with(p.RegisterProposal, public_key="k" * (p.MAX_KEY_TEXT + 1)), "public_key longer than 60"),
        (_with(p.RotateProposal, new_key="k" * (p.MAX_KEY_TEXT + 1)), "new_key longer than 60"),
        (_with(p.AdminProposal, op="promote"), "'op' has an unknown value 'promote'"),
        (_with(p.AdminProposal, public_key="k" * (p.MAX_KEY_TEXT + 1)), "public_key longer than 60"),
        (_with(p.AdminProposal, operator_signature="s" * 89), "operator_signature longer than 88"),
        (_with(p.Sealed, sender_key="k" * (p.MAX_KEY_TEXT + 1)), "sender_key longer than 60"),
        (_with(p.Sealed, nonce="n" * 33), "nonce longer than 32"),
        (_with(p.Sealed, box="b" * (p.MAX_SEALED_BOX_CHARS + 1)), "box' is longer than"),
    ],
)
def test_parse_applies_validation_rules(raw, match):
    with pytest.raises(ProtocolError, match=match):
        p.parse_message(raw)


def _with_signed(cls, **changes) -> bytes:
    doc = sample_doc(cls)
    doc["signed"].update(changes)
    return encode(doc)


@pytest.mark.parametrize(
    "raw, match",
    [
        (_with_signed(p.CreateProposal, key=5), r"field 'signed\.key' must be str"),
        (_with_signed(p.ShareProposal, key="k" * (p.MAX_KEY_TEXT + 1)), "key longer than 60"),
        (_with_signed(p.RotateProposal, attestation="a" * 89), "attestation longer than 88"),
        (_with_signed(p.VisibilityProposal, request="r" * (p.MAX_SIGNED_REQUEST_BYTES + 1)), "larger than 65536 bytes"),
        (_with_signed(p.VisibilityProposal, request="é" * (p.MAX_SIGNED_REQUEST_BYTES // 2 + 1)), "larger than"),
        (_with_signed(p.RegisterProposal, request=5), r"field 'signed\.request' must be str"),
        (_with(p.PushProposal, signed="text"), "field 'signed' must be SignedWrite"),
        (_with(p.PushProposal, signed={"request": "{}"}), r"missing field 'signed\.key'"),
    ],
)
def test_a_proof_of_authorship_is_checked_like_every_field(raw, match):
    with pytest.raises(ProtocolError, match=match):
        p.parse_message(raw)


def test_a_signed_request_inside_a_proof_is_only_parsed_when_asked():
    """A proposal whose signed request is not one parses (every replica then skips it alike)."""
    proposal = p.parse_message(_with_signed(p.ShareProposal, request='{"v": 1, "type": "nope"}'))
    with pytest.raises(ProtocolError, match="unknown message type"):
        proposal.signed.parsed_request()
    chunk_json = encode(sample_doc(p.Chunk)).decode()
    with pytest.raises(ProtocolError, match="not expected here"):
        dataclasses.replace(proposal.signed, request=chunk_json).parsed_request()
    share = samples()[p.ShareRequest]
    assert signed_write(share).parsed_request() == share


def test_a_signed_write_is_kept_as_text_and_read_back():
    proof = signed_write(samples()[p.PushRequest])
    text = proof.to_text()
    assert p.SignedWrite.from_text(text) == proof and json.loads(text)["key"] == ED_KEY
    for bad, match in [("[]", "not a JSON object"), ("nope", "not UTF-8 JSON"), ('{"request": "x"}', "missing field")]:
        with pytest.raises(ProtocolError, match=match):
            p.SignedWrite.from_text(bad)
    with pytest.raises(ProtocolError, match="key longer than 60"):
        p.SignedWrite.from_text(json.dumps({**proof.to_dict(), "key": "k" * (p.MAX_KEY_TEXT + 1)}))


def test_validation_boundaries_accepted():
    assert p.parse_message(_with(p.PushRequest, reply_key="k" * p.MAX_KEY_TEXT)).reply_key == "k" * p.MAX_KEY_TEXT
    assert p.parse_message(_with(p.PushRequest, signature="s" * 88)).signature == "s" * 88
    assert p.parse_message(_with(p.PushRequest, chunks="")).chunks == ""  # names no digest (not signed yet)
    assert p.parse_message(_with(p.Sealed, nonce="n" * 32)).nonce == "n" * 32
    big = "r" * p.MAX_SIGNED_REQUEST_BYTES
    assert p.parse_message(_with_signed(p.VisibilityProposal, request=big)).signed.request == big
    assert (
        p.parse_message(_with(p.PushRequest, message="m" * p.MAX_MESSAGE_LENGTH)).message == "m" * p.MAX_MESSAGE_LENGTH
    )
    assert p.parse_message(_with(p.PullRequest, lost=[SHA] * p.MAX_LOST)).lost == [SHA] * p.MAX_LOST
    assert p.parse_message(_with(p.LogRequest, limit=1000)).limit == 1000
    assert p.parse_message(_with(p.LogRequest, limit=1)).limit == 1
    assert p.parse_message(_with(p.PullRequest, version=0)).version == 0
    assert p.parse_message(_with(p.Chunk, index=0, count=1)).index == 0
    assert p.parse_message(_with(p.PushRequest, base=1)).base == 1


def test_parsed_message_can_be_encoded_again():
    raw = _with(p.PushRequest, message="\ud800")
    try:
        message = p.parse_message(raw)
    except ProtocolError:
        return  # rejecting it is fine too
    message.to_bytes()


# ---------------------------------------------------------------- allowed=


def test_allowed_filters_by_base_class():
    s = samples()
    requests = [cls for cls in MESSAGE_CLASSES if issubclass(cls, p.Request)]
    proposals = [cls for cls in MESSAGE_CLASSES if issubclass(cls, p.Proposal)]
    assert len(requests) == 11 and len(proposals) == 9
    for cls in (p.Chunk, *requests):
        assert type(p.parse_message(s[cls].to_bytes(), allowed=p.REQUEST_TYPES)) is cls
    for cls in (p.Reply, p.Sealed, p.Heartbeat, *proposals):
        with pytest.raises(ProtocolError, match="not expected here"):
            p.parse_message(s[cls].to_bytes(), allowed=p.REQUEST_TYPES)
    for cls in (p.Chunk, *proposals):
        assert type(p.parse_message(s[cls].to_bytes(), allowed=p.LOG_RECORD_TYPES)) is cls
    for cls in (p.Reply, p.Sealed, p.Heartbeat, *requests):
        with pytest.raises(ProtocolError, match="not expected here"):
            p.parse_message(s[cls].to_bytes(), allowed=p.LOG_RECORD_TYPES)
    for cls in (p.Chunk, p.Reply, p.Sealed):
        assert type(p.parse_message(s[cls].to_bytes(), allowed=p.REPLY_TYPES)) is cls
    for cls in (p.PushRequest, *proposals):
        with pytest.raises(ProtocolError, match="not expected here"):
            p.parse_message(s[cls].to_bytes(), allowed=p.REPLY_TYPES)
    assert set(p.ACCOUNT_REQUESTS) == {p.RegisterRequest, p.RotateRequest}
    assert set(p.ACCOUNT_PROPOSALS) == {p.RegisterProposal, p.RotateProposal, p.AdminProposal}
    assert type(p.parse_message(s[p.Heartbeat].to_bytes(), allowed=(p.Heartbeat,))) is p.Heartbeat


def test_allowed_empty_means_anything():
    for cls, message in samples().items():
        assert type(p.parse_message(message.to_bytes(), allowed=())) is cls


# ---------------------------------------------------------------- peek_reply_address


def test_peek_reply_address_of_valid_request():
    assert p.peek_reply_address(samples()[p.PushRequest].to_bytes()) == (RID, 7)


def test_peek_reply_address_of_an_invalid_request_that_names_where_to_reply():
    raw = encode({"v": 99, "type": "garbage", "request_id": RID, "reply_partition": 0})
    with pytest.raises(ProtocolError):
        p.parse_message(raw)
    assert p.peek_reply_address(raw) == (RID, 0)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff",
        b"not json",
        encode([RID, 0]),
        encode("x"),
        encode(5),
        encode({"request_id": RID}),
        encode({"reply_partition": 0}),
        encode({"request_id": RID, "reply_partition": -1}),
        encode({"request_id": RID, "reply_partition": True}),
        encode({"request_id": RID, "reply_partition": "0"}),
        encode({"request_id": RID, "reply_partition": 1.0}),
        encode({"request_id": RID.upper(), "reply_partition": 0}),
        encode({"request_id": 5, "reply_partition": 0}),
        encode({"request_id": RID[:-1], "reply_partition": 0}),
    ],
)
def test_peek_reply_address_none(raw):
    assert p.peek_reply_address(raw) is None


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["a", "A", "0", "repo", "my-repo_1.2", "x" * 64, "a..b", "a-", "Z9"])
def test_check_name_accepts(name):
    assert p.check_name("repository", name) == name


@pytest.mark.parametrize("name", [*BAD_NAMES, None, 5, ["a"]])
def test_check_name_rejects(name):
    with pytest.raises(ProtocolError):
        p.check_name("repository", name)


def test_check_name_messages_name_the_kind():
    with pytest.raises(ProtocolError, match="user name is missing"):
        p.check_name("user", "")
    with pytest.raises(ProtocolError, match="longer than 64"):
        p.check_name("user", "u" * 65)
    with pytest.raises(ProtocolError, match="invalid repository name"):
        p.check_name("repository", "a b")


@pytest.mark.parametrize("name", ["repo\n", "alice\n"])
def test_check_name_rejects_trailing_newline(name):
    with pytest.raises(ProtocolError):
        p.check_name("repository", name)


def test_check_sha_rejects_trailing_newline():
    with pytest.raises(ProtocolError):
        p.check_sha(SHA + "\n")


@pytest.mark.parametrize("value", ["", "a" * 63, "a" * 65, "A" * 64, "g" * 64, None, 5, " " + "a" * 63])
def test_check_sha_rejects(value):
    with pytest.raises(ProtocolError):
        p.check_sha(value)


def test_check_sha_accepts_real_digest():
    sha = p.hash_bytes(b"hello")
    assert p.check_sha(sha) == sha == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


def test_request_ids():
    ids = {p.new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(p._ID_RE.fullmatch(i) for i in ids)


# ---------------------------------------------------------------- paths


GOOD_PATHS = [
    "a",
    "a.txt",
    "dir/file.txt",
    "a/b/c/d/e/f/g.bin",
    "with space/and more spaces.txt",
    " leading space",
    "ünïcödé/файл.txt",
    "日本語/ファイル",
    "emoji/😀.txt",
    "...",
    "..a",
    "a..",
    ".hidden",
    ".minigitignore",
    "x.minigit",
    ".minigit2",
    "minigit",
    "tab\tname",
    "new\nline",
    "x" * 255,
    "é" * 127,
]


@pytest.mark.parametrize("path", GOOD_PATHS)
def test_check_path_accepts(path):
    assert p.check_path(path) == path


BAD_PATHS = [
    ("", "empty path"),
    ("..", "'..' part"),
    ("../x", "'..' part"),
    ("a/../b", "'..' part"),
    ("a/..", "'..' part"),
    (".", "'.' part"),
    ("./a", "'.' part"),
    ("a/./b", "'.' part"),
    ("a//b", "empty part"),
    ("a/", "empty part"),
    ("/a", "absolute path"),
    ("/", "absolute path"),
    ("//a", "absolute path"),
    ("a\\b", "backslash"),
    ("..\\x", "backslash"),
    ("C:\\x", "backslash"),
    ("a\x00b", "NUL"),
    (".minigit", "reserved"),
    (".MINIGIT", "reserved"),
    (".MiniGit", "reserved"),
    ("a/.minigit", "reserved"),
    (".minigit/x", "reserved"),
    (".minigit.lock", "reserved"),
    ("a/.Minigit.Lock", "reserved"),
    ("x" * 256, "too long"),
    ("é" * 128, "too long"),
    ("a/" + "x" * 256 + "/b", "too long"),
    ("\ud800", "UTF-8"),
    ("a/\udcff.txt", "UTF-8"),
]


@pytest.mark.parametrize("path, reason", BAD_PATHS)
def test_check_path_rejects(path, reason):
    with pytest.raises(UnsafePath, match=reason):
        p.check_path(path)


@pytest.mark.parametrize("value", [None, 5, b"a", ["a"]])
def test_check_path_rejects_non_strings(value):
    with pytest.raises(UnsafePath):
        p.check_path(value)


def test_check_path_total_length_boundary():
    # parts of 200 bytes: 20 parts + 19 slashes = 4019; one more part to hit 4096 exactly
    path = "/".join(["p" * 200] * 20)
    path += "/" + "q" * (p.MAX_PATH_LENGTH - len(path) - 1)
    assert len(path.encode()) == p.MAX_PATH_LENGTH
    assert p.check_path(path) == path
    with pytest.raises(UnsafePath, match="too long"):
        p.check_path(path + "q")
    # the limit counts bytes, not characters
    multibyte = "/".join(["é" * 100] * 20)  # 20 * 200 + 19 bytes
    assert len(multibyte.encode()) == 4019
    assert p.check_path(multibyte)
    with pytest.raises(UnsafePath, match="too long"):
        p.check_path(multibyte + "/" + "é" * 40)


def test_unsafe_path_is_a_minigit_error():
    with pytest.raises(MinigitError):
        p.check_path("../x")


_part_alphabet = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\x00")
path_parts = st.text(_part_alphabet, min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..") and not p.is_reserved_name(s)
)
good_paths = st.lists(path_parts, min_size=1, max_size=4).map("/".join)


@given(good_paths)
def test_generated_paths_are_accepted(path):
    assert p.check_path(path) == path


@given(
    st.lists(path_parts, min_size=0, max_size=3),
    st.lists(path_parts, min_size=0, max_size=3),
    st.sampled_from(["..", ".", "", ".minigit", ".MINIGIT.LOCK", "a\\b", "a\x00", "\udc80"]),
)
def test_a_bad_part_anywhere_is_rejected(before, after, bad):
    path = "/".join([*before, bad, *after])
    with pytest.raises(UnsafePath):
        p.check_path(path)


@given(good_paths)
def test_absolute_versions_are_rejected(path):
    with pytest.raises(UnsafePath):
        p.check_path("/" + path)


# ---------------------------------------------------------------- trees


def entry(seed: str, size: int = 1) -> p.FileEntry:
    return p.FileEntry(p.hash_bytes(seed.encode()), size)


def test_empty_tree_sha():
    assert p.hash_bytes(p.encode_tree({})) == p.EMPTY_TREE_SHA
    assert p.decode_tree(p.encode_tree({})) == {}


def test_tree_round_trip_and_canonical_bytes():
    manifest = {"b/c.txt": entry("1", 3), "a": entry("2", 0), "ü/ß": entry("3", 10**12)}
    reordered = dict(reversed(list(manifest.items())))
    assert p.encode_tree(manifest) == p.encode_tree(reordered)
    assert p.decode_tree(p.encode_tree(manifest)) == manifest
    # the canonical form: sorted keys, no spaces, ASCII only
    data = p.encode_tree(manifest)
    assert b" " not in data and data.isascii()
    assert json.loads(data) == {
        "v": 1,
        "files": {path: {"sha": e.sha, "size": e.size} for path, e in manifest.items()},
    }


def test_different_manifests_give_different_trees():
    a = {"x": entry("1")}
    assert p.encode_tree(a) != p.encode_tree({"x": entry("2")})
    assert p.encode_tree(a) != p.encode_tree({"y": entry("1")})
    assert p.encode_tree(a) != p.encode_tree({"x": entry("1", 2)})


def _clash_free(manifest):
    return p.find_file_directory_clash(manifest) is None


shas = st.binary(min_size=0, max_size=8).map(p.hash_bytes)
file_entries = st.builds(p.FileEntry, shas, st.integers(min_value=0, max_value=2**53))
manifests = st.dictionaries(good_paths, file_entries, max_size=8).filter(_clash_free)


@given(manifests)
def test_tree_round_trip_property(manifest):
    data = p.encode_tree(manifest)
    assert p.decode_tree(data) == manifest
    # equal manifests built in another order give the same bytes and sha
    shuffled = dict(sorted(manifest.items(), reverse=True))
    assert p.hash_bytes(p.encode_tree(shuffled)) == p.hash_bytes(data)
    assert p.manifest_from_json(json.loads(json.dumps(p.manifest_to_json(manifest)))) == manifest


def _tree(files, v=1) -> bytes:
    """Canonically spelled, whatever it holds: so that a test of a rule tests that rule."""
    return json.dumps({"v": v, "files": files}, sort_keys=True, separators=(",", ":")).encode()


GOOD_FILE = {"sha": SHA, "size": 1}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        b"[]",
        b"5",
        b'"files"',
        b"null",
        b"{}",
        json.dumps({"v": 1}).encode(),
        _tree({}, v=2),
        _tree({}, v=None),
        json.dumps({"files": {}}).encode(),
        _tree([]),
        _tree(None),
        _tree({"a": {"sha": "nope", "size": 1}}),
        _tree({"a": {"sha": SHA.upper(), "size": 1}}),
        _tree({"a": {"sha": None, "size": 1}}),
        _tree({"a": {"sha": SHA, "size": -1}}),
        _tree({"a": {"sha": SHA, "size": 1.5}}),
        _tree({"a": {"sha": SHA, "size": "1"}}),
        _tree({"a": {"sha": SHA, "size": True}}),
        _tree({"a": {"sha": SHA, "size": None}}),
        _tree({"a": {"sha": SHA}}),
        _tree({"a": {"size": 1}}),
        _tree({"a": [SHA, 1]}),
        _tree({"a": "x"}),
        _tree({"a": None}),
        _tree({"a": GOOD_FILE, "a/b": GOOD_FILE}),
        _tree({"x/a/b/c": GOOD_FILE, "x/a": GOOD_FILE}),
        _tree({"d/e": GOOD_FILE, "d/e/f/g": GOOD_FILE}),
    ],
)
def test_decode_tree_rejects(data):
    with pytest.raises(ProtocolError, match="invalid tree"):
        p.decode_tree(data)


@pytest.mark.parametrize(
    "path, reason",
    [
        ("../x", "'..' part"),
        ("/etc/passwd", "absolute"),
        ("a\\b", "backslash"),
        ("a/.minigit", "reserved"),
        ("", "empty path"),
        ("a//b", "empty part"),
        ("a\x00", "NUL"),
    ],
)
def test_decode_tree_rejects_unsafe_paths(path, reason):
    # (an unsafe path surfaces as UnsafePath, not as ProtocolError("invalid tree"): both are MinigitErrors)
    with pytest.raises(MinigitError, match=reason):
        p.decode_tree(_tree({"ok": GOOD_FILE, path: GOOD_FILE}))


def test_decode_tree_accepts_siblings_with_common_prefix():
    data = _tree({"a": GOOD_FILE, "ab/c": GOOD_FILE, "a.d/e": GOOD_FILE})
    assert set(p.decode_tree(data)) == {"a", "ab/c", "a.d/e"}


def test_find_file_directory_clash():
    assert p.find_file_directory_clash({"a": 1, "a/b": 1}) == "a"
    assert p.find_file_directory_clash({"a/b": 1, "a/b/c/d": 1}) == "a/b"
    assert p.find_file_directory_clash({"a": 1, "ab": 1, "a.b/c": 1}) is None
    assert p.find_file_directory_clash({}) is None


@pytest.mark.parametrize(
    "doc",
    [
        [],
        "x",
        {"../a": [SHA, 1]},
        {"a": [SHA]},
        {"a": [SHA, 1, 2]},
        {"a": [SHA, -1]},
        {"a": [SHA, True]},
        {"a": [SHA, "1"]},
        {"a": ["zz", 1]},
        {"a": {"sha": SHA, "size": 1}},
        {"a": (SHA, 1)},
    ],
)
def test_manifest_from_json_rejects(doc):
    with pytest.raises(MinigitError):
        p.manifest_from_json(doc)


def test_manifest_to_json_is_sorted():
    out = p.manifest_to_json({"b": entry("1", 1), "a": entry("2", 2)})
    assert list(out) == ["a", "b"]
    assert out["a"] == [entry("2").sha, 2]


# ---------------------------------------------------------------- nested records


def test_a_log_entry_missing_a_field_is_a_protocol_error():
    doc = sample_doc(p.Reply)
    del doc["entries"][0]["time_ms"]
    with pytest.raises(ProtocolError, match=r"Reply: missing field 'entries\[0\]\.time_ms'"):
        p.parse_message(encode(doc))


@pytest.mark.parametrize(
    "field_name, value, match",
    [
        (
            "entries",
            [{"version": "5", "author": "a", "time_ms": 1, "message": ""}],
            r"'entries\[0\]\.version' must be int",
        ),
        ("entries", ["not an object"], r"'entries\[0\]' must be LogEntry"),
        ("serving", [0, "1"], r"'serving\[1\]' must be int"),
        ("applied", {"zero": 1}, "key that is not a number"),
        ("applied", {"01": 1}, "key that is not a number"),
        ("applied", {"-1": 1}, "key that is not a number"),
        ("log_end", {"0": -5}, "out of range"),
        ("repos", {"r": {"head": 1, "digest": "d", "partition": 0}}, r"missing field 'repos\['r'\]\.changed_at'"),
        ("repos", {"r": {"head": True, "digest": "d", "partition": 0, "changed_at": 1}}, "must be int"),
        ("repos", {"\ud800": {"head": 1, "digest": "d", "partition": 0, "changed_at": 1}}, "not valid UTF-8"),
    ],
)
def test_nested_fields_are_checked(field_name, value, match):
    cls = p.Reply if field_name == "entries" else p.Heartbeat
    doc = sample_doc(cls) | {field_name: value}
    with pytest.raises(ProtocolError, match=match):
        p.parse_message(json.dumps(doc).encode())


def test_an_unknown_status_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="'status' has an unknown value 'maybe'"):
        p.parse_message(_with(p.Reply, status="maybe"))


def test_partition_keys_travel_as_strings_and_come_back_as_ints():
    beat = samples()[p.Heartbeat]
    assert json.loads(beat.to_bytes())["applied"] == {"0": 10}
    assert p.parse_message(beat.to_bytes()).applied == {0: 10}


def test_peek_request_id():
    assert p.peek_request_id(encode({"request_id": RID, "v": 99})) == RID
    assert p.peek_request_id(encode({"request_id": "nope"})) is None
    assert p.peek_request_id(b"\xff") is None


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000, b'{"v":1,"type":"chunk","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", b'{"a":' * 50_000],
)
def test_deeply_nested_json_is_a_protocol_error(raw):
    with pytest.raises(ProtocolError, match="not UTF-8 JSON"):
        p.parse_message(raw)
    assert p.peek_request_id(raw) is None and p.peek_reply_address(raw) is None


def test_a_nesting_bomb_tree_is_an_invalid_tree():
    with pytest.raises(ProtocolError, match="invalid tree"):
        p.decode_tree(b"[" * 100_000)


def test_a_record_without_a_value_is_a_protocol_error():
    """A tombstone (null value) can land on any topic: it is malformed, not a crash."""
    with pytest.raises(ProtocolError, match="no value"):
        p.parse_message(None)
    assert p.peek_request_id(None) is None and p.peek_reply_address(None) is None


@pytest.mark.parametrize("changes", [{"replica": "[/x]"}, {"replica": ""}, {"repos": {"[bold]r": {}}}])
def test_a_heartbeat_names_its_replica_and_repositories_by_the_name_rules(changes):
    doc = sample_doc(p.Heartbeat)
    if "repos" in changes:
        changes = {"repos": {"[bold]r": doc["repos"]["repo"]}}
    with pytest.raises(ProtocolError, match="name"):
        p.parse_message(encode(doc | changes))


# ---------------------------------------------------------------- trees are read only in their canonical form


@pytest.mark.parametrize(
    "spelling",
    [
        {},  # json.dumps' default spaces
        {"separators": (",", ":")},  # keys in insertion order
        {"separators": (",", ":"), "sort_keys": True, "ensure_ascii": False},
    ],
)
def test_a_tree_spelled_otherwise_is_invalid(spelling):
    files = {"b": GOOD_FILE, "é": GOOD_FILE}
    data = json.dumps({"v": 1, "files": files}, **spelling).encode()
    assert json.loads(data) == json.loads(p.encode_tree({k: p.FileEntry(SHA, 1) for k in files}))
    with pytest.raises(ProtocolError, match="invalid tree"):
        p.decode_tree(data)


@pytest.mark.parametrize(
    "body",
    [
        b'"a":{"sha":"S","size":1},"a":{"sha":"S","size":1}',  # a path twice
        b'"b":{"sha":"S","size":1},"a":{"sha":"S","size":1}',  # out of order
        b'"\\u0061":{"sha":"S","size":1}',  # an escape json.dumps would not write
        b'"a":{"sha":"S","size":01}',
        b'"a":{"sha":"S","size":1},',
        b'"a":{"size":1,"sha":"S"}',
        b'"a":{"sha":"S","size":1,"x":1}',
    ],
)
def test_a_tree_that_is_not_canonical_is_invalid(body):
    data = b'{"files":{' + body.replace(b"S", SHA.encode()) + b'},"v":1}'
    with pytest.raises(ProtocolError, match="invalid tree"):
        p.decode_tree(data)


def test_a_tree_of_objects_that_are_not_entries_is_refused_before_decoding_any():
    """16 MiB of '{},' compresses to a few KB and decoded to hundreds of MB."""
    data = b'{"files":{"a":[' + b"{}," * (p.MAX_TREE_BYTES // 4) + b'{}]},"v":1}'
    with pytest.raises(ProtocolError, match="not in canonical form at byte 10"):
        p.decode_tree(data)


def test_a_tree_with_one_file_too_many_is_refused_while_it_is_read():
    manifest = {f"f{n:06d}": p.FileEntry(SHA, 1) for n in range(p.MAX_TREE_ENTRIES + 1)}
    with pytest.raises(ProtocolError, match=f"tree too large: more than {p.MAX_TREE_ENTRIES} files"):
        p.decode_tree(p.encode_tree(manifest))


# ---------------------------------------------------------------- history: log changes, repository listings


def _reply_with(**changes) -> bytes:
    return encode({**sample_doc(p.Reply), **changes})


def _entry(**changes) -> dict:
    return {**sample_doc(p.Reply)["entries"][0], **changes}


def _repo(**changes) -> dict:
    return {**sample_doc(p.Reply)["repos"][0], **changes}


@pytest.mark.parametrize(
    "raw, match",
    [
        (_reply_with(entries=[_entry(tree="nope")]), "invalid object id"),
        (_reply_with(entries=[_entry(changes_more=-1)]), r"'entries\[0\]\.changes_more' is out of range"),
        (_reply_with(entries=[_entry(changes=[{"path": "a", "kind": "R", "size": 1}])]), r"kind' has an unknown"),
        (_reply_with(entries=[_entry(changes=[{"path": "a", "kind": "A", "size": 1, "mode": "w"}])]), "unknown"),
        (_reply_with(entries=[_entry(changes=[{"path": "a", "kind": "A"}])]), r"missing field .*changes\[0\]\.size"),
        (
            _reply_with(entries=[_entry(changes=[{"path": "a", "kind": "A", "size": 1}] * (p.MAX_LOG_CHANGES + 1))]),
            "more than 1000 changes",
        ),
        (_reply_with(entries=[_entry()] * (p.MAX_LOG_LIMIT + 1)), "more than 1000 log entries"),
        (_reply_with(repos=[_repo()] * (p.MAX_REPOS_LIMIT + 1)), "more than 1000 repositories"),
        (_reply_with(repos=[_repo(access="member")]), "unknown access 'member'"),
        (_reply_with(repos=[_repo(name="../x")]), "invalid repository name"),
        (_reply_with(repos=[_repo(author="a b")]), "invalid user name"),
        (_reply_with(repos=[_repo(visibility="hidden")]), "visibility' has an unknown value"),
        (_reply_with(repos=[{"name": "lab"}]), r"missing field 'repos\[0\]\.head'"),
    ],
)
def test_history_fields_of_a_reply_are_checked(raw, match):
    with pytest.raises(ProtocolError, match=match):
        p.parse_message(raw)


@pytest.mark.parametrize("path", ["/etc", "a/../b", ".minigit", "a//b"])
def test_unsafe_paths_are_refused_in_log_requests_and_changes(path):
    with pytest.raises(UnsafePath):
        p.parse_message(_with(p.LogRequest, paths=["ok", path]))
    with pytest.raises(UnsafePath):
        p.parse_message(_reply_with(entries=[_entry(changes=[{"path": path, "kind": "D", "size": 0}])]))


def test_history_fields_default_to_todays_behaviour():
    pull = p.PullRequest(request_id=RID, repo="r", user="u", reply_partition=0)
    log = p.LogRequest(request_id=RID, repo="r", user="u", reply_partition=0)
    repos = p.ReposRequest(request_id=RID, repo="u", user="u", reply_partition=0)
    assert (pull.target, pull.base_tree, log.paths, log.changes, repos.after, repos.limit) == (
        0,
        "",
        [],
        False,
        "",
        100,
    )
    entry = p.LogEntry(version=1, author="u", time_ms=1, message="m")
    assert (entry.tree, entry.changes, entry.changes_more) == (None, [], 0)
    change = p.FileChange(path="a", kind=p.ChangeKind.MODIFIED, size=1)
    assert (
        change.mode == ""
        and change.kind == "M"
        and change.to_dict() == {"path": "a", "kind": "M", "size": 1, "mode": ""}
    )


def test_history_boundaries_are_accepted():
    entry = _entry(changes=[{"path": f"f{i}", "kind": "A", "size": i} for i in range(p.MAX_LOG_CHANGES)])
    reply = p.parse_message(_reply_with(entries=[entry], repos=[_repo(access=a) for a in p.REPO_ACCESS_KINDS]))
    assert len(reply.entries[0].changes) == p.MAX_LOG_CHANGES and len(reply.repos) == 5
    assert p.parse_message(_with(p.LogRequest, paths=["a"] * p.MAX_LOG_PATHS)).paths == ["a"] * p.MAX_LOG_PATHS
    assert p.parse_message(_with(p.ReposRequest, after="", limit=p.MAX_REPOS_LIMIT)).limit == p.MAX_REPOS_LIMIT
    assert p.parse_message(_with(p.PullRequest, target=0, base_tree="")).target == 0
    assert p.Status("cancelled") is p.Status.CANCELLED


def test_an_upload_chunk_carries_its_reply_partition_and_an_answer_s_does_not():
    """Chunks written before upload notices existed (and an answer's chunks) have no
    reply_partition: left out of the header while null, so they keep their bytes."""
    piece = codec.Piece(0, "raw", b"x")
    answer = p.Chunk.of_piece(RID, "repo", SHA, 1, piece, "s1")
    assert "reply_partition" not in p.unframe(answer.to_bytes())[0]
    upload = p.Chunk.of_piece(RID, "repo", SHA, 1, piece)
    upload.reply_partition = 4
    assert p.unframe(upload.to_bytes())[0]["reply_partition"] == 4
    assert p.parse_message(upload.to_bytes()).reply_partition == 4
    [made] = p.blob_chunks(RID, "repo", codec.BlobSource.from_bytes(b"x"), reply_partition=4)
    assert made.reply_partition == 4
    header = p.unframe(upload.to_bytes())[0]
    for bad in (-1, "4", True):
        with pytest.raises(ProtocolError):
            p.parse_message(p.frame({**header, "reply_partition": bad}, b"x"))


def test_a_push_s_base_tree_is_written_only_when_set():
    """Pushes in repo-log were signed before base_tree existed: left out while empty,
    such a push keeps its bytes, so its signature still checks (identity.signing_payload)."""
    for cls in (p.PushRequest, p.PushProposal):
        message = dataclasses.replace(samples()[cls], base_tree="")
        assert "base_tree" not in message.to_dict()
        assert p.parse_message(message.to_bytes()) == message
        assert samples()[cls].to_dict()["base_tree"] == samples()[cls].base_tree != ""
    pull = dataclasses.replace(samples()[p.PullRequest], base_tree="")
    assert pull.to_dict()["base_tree"] == ""  # a read, never in the log: written as it always was

"""etcd3's messages built on protobuf's C runtime (ringd.etcdpb): pure, no etcd."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from google.protobuf.internal import api_implementation

from ringd import etcdpb

if TYPE_CHECKING:
    from pathlib import Path


def test_etcd3_uses_the_modules_built_from_descriptors() -> None:
    from etcd3 import etcdrpc
    from etcd3.etcdrpc import kv_pb2

    assert api_implementation.Type() == "upb"  # not the pure-Python runtime
    assert not hasattr(sys.modules["etcd3.etcdrpc.rpc_pb2"], "__file__")  # ours, not etcd3's
    request = etcdrpc.RangeRequest(
        key=b"/a", range_end=b"/b", sort_order=etcdrpc.RangeRequest.ASCEND
    )
    assert etcdrpc.RangeRequest.FromString(request.SerializeToString()) == request
    event = kv_pb2.Event(type=kv_pb2.Event.DELETE, kv=kv_pb2.KeyValue(key=b"k", lease=7))
    assert kv_pb2.Event.FromString(event.SerializeToString()).kv.lease == 7
    assert etcdrpc.WatchStub is not None  # the gRPC stubs import on top of them


def test_a_fresh_interpreter_imports_etcd3_after_it() -> None:
    code = "import ringd.etcdpb, etcd3; print(etcd3.etcdrpc.PutRequest(key=b'x').key)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "b'x'"


def test_without_it_etcd3_does_not_import() -> None:
    """Why the module exists: if this starts passing, protobuf runs etcd3's own code."""
    result = subprocess.run(
        [sys.executable, "-c", "import etcd3"], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "Descriptors cannot be created directly" in result.stderr


def test_a_file_without_a_descriptor_is_a_clear_import_error(tmp_path: Path) -> None:
    path = tmp_path / "other_pb2.py"
    path.write_text("DESCRIPTOR = None\n")
    with pytest.raises(ImportError, match="no serialized descriptor"):
        etcdpb._serialized_descriptor(path)

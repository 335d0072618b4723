"""etcd3's protobuf messages, built by the protobuf runtime installed (its C
"upb" one), instead of the module code etcd3 0.12 ships.

etcd3 0.12 ships code generated for protobuf 3 (``_descriptor.FieldDescriptor(...)``
calls), which protobuf 4 and later refuse to run unless the slow pure-Python
runtime is forced (``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python``, set before
the first import). That runtime cost the daemon a quarter of its CPU in
(de)serialising, and it holds the GIL while it does. The generated modules also
carry each file's serialized descriptor; ``install`` builds the same modules
from those bytes the way current protoc output does
(``AddSerializedFile`` + ``builder``) and registers them under etcd3's own
names, so that ``import etcd3`` afterwards uses them. Importing this module
does it: ``ringd.etcd`` imports it before etcd3, and so must anything else that
imports etcd3 (tests, benchmarks); without it, ``import etcd3`` fails.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

from google.protobuf import descriptor_pool
from google.protobuf.internal import builder

# Dependency order: rpc.proto imports kv.proto and auth.proto.
_FILES = ("kv_pb2", "auth_pb2", "rpc_pb2")
_PACKAGE = "etcd3.etcdrpc"


def _serialized_descriptor(path: Path) -> bytes:
    """The ``serialized_pb`` argument of the generated module, read without running it."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.keyword) and node.arg == "serialized_pb":
            value = node.value.args[0] if isinstance(node.value, ast.Call) else node.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str | bytes):
                text = value.value
                return text.encode("latin-1") if isinstance(text, str) else text
    raise ImportError(f"{path}: no serialized descriptor (not the etcd3 0.12 layout)")


def install() -> None:
    """Register etcd3's message modules, built from their descriptors (idempotent)."""
    if f"{_PACKAGE}.rpc_pb2" in sys.modules:
        return
    spec = importlib.util.find_spec("etcd3")
    if spec is None or spec.origin is None:
        raise ImportError("etcd3 is not installed")
    directory = Path(spec.origin).parent / "etcdrpc"
    pool = descriptor_pool.Default()
    for name in _FILES:
        full = f"{_PACKAGE}.{name}"
        module = types.ModuleType(full)
        descriptor = pool.AddSerializedFile(_serialized_descriptor(directory / f"{name}.py"))
        module.DESCRIPTOR = descriptor  # type: ignore[attr-defined]
        builder.BuildMessageAndEnumDescriptors(descriptor, module.__dict__)
        builder.BuildTopDescriptorsAndMessages(descriptor, full, module.__dict__)
        sys.modules[full] = module


install()

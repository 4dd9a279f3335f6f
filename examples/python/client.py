"""Concord from Python, through grpcio.

Stubs are generated at start-up from the repository's proto/ folder with
grpcio-tools, so nothing generated is checked in. The script walks through
siblings, contexts, deletes and error codes; with --check it asserts what
it sees and exits non-zero on any surprise.

    python -m venv .venv && .venv/bin/pip install -r examples/python/requirements.txt
    .venv/bin/python examples/python/client.py --endpoint 127.0.0.1:7379
"""

import argparse
import importlib
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "proto")


def load_stubs():
    """Compiles the Concord protos into a temporary package and imports it."""
    out = tempfile.mkdtemp(prefix="concord-py-")
    files = ["concord/v1/kv.proto", "concord/v1/admin.proto"]
    # grpc_tools ships the well-known protos; include them too.
    wkt = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{wkt}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if code != 0:
        sys.exit(f"protoc failed with code {code}")
    sys.path.insert(0, out)
    kv = importlib.import_module("concord.v1.kv_pb2")
    kv_grpc = importlib.import_module("concord.v1.kv_pb2_grpc")
    admin = importlib.import_module("concord.v1.admin_pb2")
    admin_grpc = importlib.import_module("concord.v1.admin_pb2_grpc")
    return kv, kv_grpc, admin, admin_grpc


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default=os.environ.get("CONCORD_ENDPOINT", "127.0.0.1:7379"))
    parser.add_argument("--bucket", default="python-demo")
    parser.add_argument("--check", action="store_true", help="assert the expected outcomes")
    args = parser.parse_args()

    kv, kv_grpc, admin, admin_grpc = load_stubs()
    channel = grpc.insecure_channel(args.endpoint)
    store = kv_grpc.KvStub(channel)
    ops = admin_grpc.AdminStub(channel)
    failures = []

    def expect(cond, what):
        if not cond:
            failures.append(what)
            print(f"  UNEXPECTED: {what}")

    bucket, key = args.bucket, b"greeting"

    # Start clean: delete whatever an earlier run left.
    old = store.Get(kv.GetRequest(bucket=bucket, key=key))
    if old.context:
        store.Delete(kv.DeleteRequest(bucket=bucket, key=key, context=old.context))

    # Two writes without a context are concurrent: both are kept.
    store.Put(kv.PutRequest(bucket=bucket, key=key, value=b"hello"))
    store.Put(kv.PutRequest(bucket=bucket, key=key, value=b"bonjour"))
    got = store.Get(kv.GetRequest(bucket=bucket, key=key))
    values = sorted(s.value for s in got.siblings if not s.deleted)
    print(f"siblings after two concurrent puts: {[v.decode() for v in values]}")
    expect(values == [b"bonjour", b"hello"], "two siblings")

    # Writing with the read's context replaces exactly what was read.
    put = store.Put(kv.PutRequest(bucket=bucket, key=key, value=b"hello, bonjour", context=got.context))
    print(f"merged; siblings now: {put.sibling_count}, acked by {list(put.acked_by)}")
    expect(put.sibling_count == 1, "one sibling after the merge")

    # Deletes are writes of a tombstone; the key then reads as not found.
    got = store.Get(kv.GetRequest(bucket=bucket, key=key))
    store.Delete(kv.DeleteRequest(bucket=bucket, key=key, context=got.context))
    got = store.Get(kv.GetRequest(bucket=bucket, key=key))
    print(f"after delete: found={got.found}")
    expect(not got.found, "deleted key is not found")

    # Bad input gets a clear INVALID_ARGUMENT and changes nothing.
    try:
        store.Put(kv.PutRequest(bucket="no spaces allowed", key=key, value=b"x"))
        expect(False, "a bad bucket name is refused")
    except grpc.RpcError as e:
        print(f"bad bucket name: {e.code().name}: {e.details()}")
        expect(e.code() == grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT for a bad name")

    props = ops.GetBucket(admin.GetBucketRequest(name=bucket))
    print(f"bucket {props.name}: n={props.n} r={props.r} w={props.w} max_siblings={props.max_siblings}")

    if args.check and failures:
        sys.exit(f"{len(failures)} unexpected outcome(s): {failures}")
    print("ok")


if __name__ == "__main__":
    main()

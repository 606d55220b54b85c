#!/usr/bin/env python3
"""A non-Rust client of blobsyncd's control socket, using only gRPC server reflection.

It proves that an app in another language needs nothing but the socket: no .proto file,
no generated code. It lists the services through reflection, builds the message classes
from the descriptors the daemon serves, asks the health service, calls
blobsync.v1.Control/Status and GetVersion, and prints one JSON document:

    {"services": [...], "health": "SERVING", "version": {...}, "status": {...}}

Usage: control_client.py SOCKET_PATH
Needs: pip install grpcio grpcio-reflection (protobuf comes with them).
Exit codes: 0 ok, 1 a call failed (message on stderr).
"""

import json
import sys

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def unary(channel, pool, service, method, request_fields):
    """Calls service/method with a request built from reflection; returns a dict."""
    svc = pool.FindServiceByName(service)
    m = svc.FindMethodByName(method)
    req_cls = message_factory.GetMessageClass(m.input_type)
    resp_cls = message_factory.GetMessageClass(m.output_type)
    call = channel.unary_unary(
        f"/{service}/{method}",
        request_serializer=req_cls.SerializeToString,
        response_deserializer=resp_cls.FromString,
    )
    resp = call(req_cls(**request_fields), timeout=20)
    return json_format.MessageToDict(resp, preserving_proto_field_name=True)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    # The daemon's HTTP/2 stack (Rust's h2) rejects an `:authority` that is a file path,
    # which is what grpc-core sends for unix: targets by default; "localhost" is the
    # convention grpc-go and tonic use for Unix sockets.
    channel = grpc.insecure_channel(
        f"unix://{sys.argv[1]}", options=[("grpc.default_authority", "localhost")]
    )
    try:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(db.get_services())
        pool = DescriptorPool(db)
        health = unary(
            channel, pool, "grpc.health.v1.Health", "Check", {"service": "blobsync.v1.Control"}
        )
        version = unary(channel, pool, "blobsync.v1.Control", "GetVersion", {})
        status = unary(channel, pool, "blobsync.v1.Control", "Status", {})
    except grpc.RpcError as e:
        print(f"control_client.py: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    print(
        json.dumps(
            {
                "services": services,
                "health": health.get("status", "UNKNOWN"),
                "version": version,
                "status": status,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""A plain grpcio server (no xDS) standing in for one pod of `echo`, for
tests/grpc_proxyless_e2e.rs.

One method, `/crossmesh.test.Echo/Hello` (raw bytes, no protobuf): the reply is
JSON naming this pod (`--name`). Request metadata `sleep-ms: N` makes it wait
N milliseconds before answering (the route timeout test). Prints `listening`
once it serves.
"""

import argparse
import json
import sys
import time
from concurrent import futures

import grpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True, help="IP:PORT to listen on")
    ap.add_argument("--name", required=True, help="the pod name the reply carries")
    args = ap.parse_args()

    def hello(request, context):
        md = dict(context.invocation_metadata())
        sleep_ms = int(md.get("sleep-ms", "0") or 0)
        if sleep_ms > 0:
            time.sleep(sleep_ms / 1000.0)
        return json.dumps({"pod": args.name}).encode()

    handler = grpc.method_handlers_generic_handler(
        "crossmesh.test.Echo",
        {"Hello": grpc.unary_unary_rpc_method_handler(hello)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(args.address) == 0:
        print(f"cannot listen on {args.address}", file=sys.stderr, flush=True)
        return 1
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())

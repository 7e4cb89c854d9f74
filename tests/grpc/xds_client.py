#!/usr/bin/env python3
"""A proxyless gRPC client for tests/grpc_proxyless_e2e.rs: grpcio's built-in
xDS resolver (`xds:///HOST:PORT`, bootstrap from $GRPC_XDS_BOOTSTRAP).

Long-lived, so that one channel (and one xDS stream) serves the whole test:
it reads one JSON command per line on stdin and answers one JSON line on
stdout. A command is

    {"target": "xds:///echo.test.svc.cluster.local:7070", "calls": 100,
     "metadata": [["x-pod", "c2"]], "timeout": 5.0}

and the answer counts what happened:

    {"pods": {"echo-c1": 80, "echo-c2": 20}, "codes": {"OK": 100},
     "max_seconds": 0.01, "details": ["first error text", ...]}

Calls go one after another on one channel per target (channels are kept).
"""

import json
import sys
import time

import grpc

METHOD = "/crossmesh.test.Echo/Hello"


def main():
    channels = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        target = cmd["target"]
        ch = channels.get(target)
        if ch is None:
            ch = grpc.insecure_channel(target)
            channels[target] = ch
        call = ch.unary_unary(METHOD)
        md = [tuple(kv) for kv in cmd.get("metadata", [])]
        timeout = float(cmd.get("timeout", 5.0))
        pods, codes, details = {}, {}, []
        max_seconds = 0.0
        for _ in range(int(cmd.get("calls", 1))):
            start = time.monotonic()
            try:
                reply = json.loads(call(b"hello", metadata=md, timeout=timeout))
                pods[reply["pod"]] = pods.get(reply["pod"], 0) + 1
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
                if len(details) < 3:
                    details.append(e.details() or "")
            max_seconds = max(max_seconds, time.monotonic() - start)
            codes[code] = codes.get(code, 0) + 1
        print(json.dumps({"pods": pods, "codes": codes, "max_seconds": max_seconds,
                          "details": details}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

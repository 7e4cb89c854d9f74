#!/usr/bin/env python3
"""One call of `/crossmesh.test.Echo/Hello` for tests/grpc_server_e2e.rs.

--target: `IP:PORT` (a direct channel) or `xds:///HOST:PORT` (gRPC's xDS
resolver, bootstrap from $GRPC_XDS_BOOTSTRAP). --creds: `insecure` (plaintext,
no certificate) or `xds` (`grpc.xds_channel_credentials`: mTLS as the
cluster's UpstreamTlsContext says, plaintext fallback).

Prints one JSON line: {"ok": true, "reply": {...}} or
{"ok": false, "code": "UNAVAILABLE", "details": "..."}; exits 0 either way.
"""

import argparse
import json
import sys

import grpc
import grpc.experimental


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--creds", choices=["insecure", "xds"], default="insecure")
    ap.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args()
    if args.creds == "xds":
        channel = grpc.secure_channel(
            args.target, grpc.xds_channel_credentials(grpc.experimental.insecure_channel_credentials()))
    else:
        channel = grpc.insecure_channel(args.target)
    call = channel.unary_unary("/crossmesh.test.Echo/Hello")
    try:
        reply = call(b"hello", timeout=args.timeout)
        print(json.dumps({"ok": True, "reply": json.loads(reply)}), flush=True)
    except grpc.RpcError as e:
        print(json.dumps({"ok": False, "code": e.code().name, "details": e.details() or ""}),
              flush=True)
    finally:
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

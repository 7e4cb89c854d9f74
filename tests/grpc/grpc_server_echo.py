#!/usr/bin/env python3
"""A proxyless gRPC server for tests/grpc_server_e2e.rs.

grpcio's xDS-enabled server (gRFC A36): it asks the control plane named in
$GRPC_XDS_BOOTSTRAP for the listener `xds.istio.io/grpc/lds/inbound/ADDRESS`
and serves only once it has it, with the security the listener says (gRFC
A29, `grpc.xds_server_credentials`: plaintext, or mTLS with the certificate
files of the bootstrap's `file_watcher` provider).

One method, `/crossmesh.test.Echo/Hello` (raw bytes, no protobuf): the reply
is JSON naming this server (`--name`) and what the transport says about the
caller: its security type and the URI SANs of its certificate.
"""

import argparse
import json
import sys
from concurrent import futures

import grpc


def peer_identity(context):
    auth = context.auth_context()
    out = {
        "transport": [v.decode() for v in auth.get("transport_security_type", [])],
        "uri_sans": [v.decode() for v in auth.get("x509_subject_alternative_name", [])
                     if v.startswith(b"spiffe://")],
        "spiffe_id": [v.decode() for v in auth.get("peer_spiffe_id", [])],
    }
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True, help="IP:PORT to listen on")
    ap.add_argument("--name", required=True, help="the pod name put in replies")
    args = ap.parse_args()

    def hello(request, context):
        reply = {"server": args.name, "peer": peer_identity(context)}
        return json.dumps(reply).encode()

    handler = grpc.method_handlers_generic_handler(
        "crossmesh.test.Echo",
        {"Hello": grpc.unary_unary_rpc_method_handler(hello)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), xds=True)
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.xds_server_credentials(grpc.insecure_server_credentials())
    server.add_secure_port(args.address, creds)
    server.start()
    print(f"grpc_server_echo: {args.name} listening on {args.address}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())

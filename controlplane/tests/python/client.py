#!/usr/bin/env python3
"""An independent client of the patronus.v1 API, in Python with grpcio.

usage: client.py ADDR PROTO_DIR TOKEN

Generates stubs from the repository's .proto files with grpcio-tools, checks
health with the standard grpc.health.v1 protocol, lists the services through
server reflection, then creates, reads and lists a site and checks that an
invalid one is refused with a google.rpc.BadRequest naming the field.
Prints "ok" last; exits non-zero on any failure.
"""

import importlib
import os
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status
from grpc_tools import protoc
from google.rpc import error_details_pb2


def main():
    addr, proto_dir, token = sys.argv[1:4]
    out = tempfile.mkdtemp()
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    files = ["patronus/v1/resources.proto", "patronus/v1/control_plane.proto"]
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", *files])
    assert rc == 0, f"protoc failed: {rc}"
    sys.path.insert(0, out)
    cp = importlib.import_module("patronus.v1.control_plane_pb2")
    cp_grpc = importlib.import_module("patronus.v1.control_plane_pb2_grpc")
    res = importlib.import_module("patronus.v1.resources_pb2")

    channel = grpc.insecure_channel(addr)
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="patronus.v1.ControlPlane"), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING, health

    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "patronus.v1.ControlPlane" in services, services

    stub = cp_grpc.ControlPlaneStub(channel)
    auth = [("authorization", f"Bearer {token}")]
    site = res.Site(
        metadata=res.ObjectMeta(name="py-site", labels={"lang": "python"}),
        spec=res.SiteSpec(site_id="py-site", region="us-east-1",
                          tunnel_endpoint=res.Endpoint(address="192.0.2.1", port=51820)))
    created = stub.CreateSite(cp.CreateSiteRequest(site=site), metadata=auth, timeout=10).site
    assert created.metadata.resource_version > 0 and created.metadata.uid, created
    got = stub.GetSite(cp.GetSiteRequest(name="py-site"), metadata=auth, timeout=10).site
    assert got == created, (got, created)
    listed = stub.ListSites(cp.ListSitesRequest(page_size=10), metadata=auth, timeout=10)
    assert [s.metadata.name for s in listed.sites] == ["py-site"], listed

    bad = res.Site()
    bad.CopyFrom(site)
    bad.metadata.name = "py-bad"
    bad.spec.tunnel_endpoint.port = 0
    try:
        stub.CreateSite(cp.CreateSiteRequest(site=bad), metadata=auth, timeout=10)
        raise AssertionError("an invalid site was accepted")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        status = rpc_status.from_call(err)
        fields = []
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                request = error_details_pb2.BadRequest()
                detail.Unpack(request)
                fields += [v.field for v in request.field_violations]
        assert fields == ["site.spec.tunnel_endpoint.port"], fields

    # A server stream: the retained events, ending because follow is false.
    events = list(stub.WatchEvents(cp.WatchEventsRequest(site_id="py-site"), metadata=auth, timeout=10))
    created_events = [e for e in events if e.type == res.EVENT_TYPE_RESOURCE_CREATED]
    assert [(e.kind, e.name) for e in created_events] == [("site", "py-site")], events

    try:
        stub.ListSites(cp.ListSitesRequest(), timeout=10)
        raise AssertionError("an unauthenticated call was served")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
    print("ok")


if __name__ == "__main__":
    main()

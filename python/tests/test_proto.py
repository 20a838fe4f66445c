import importlib.util
import sys

from conftest import REPO


def test_generated_messages_match_the_proto():
    spec = importlib.util.spec_from_file_location("gen_proto", REPO / "python" / "scripts" / "gen_proto.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    current = gen.TARGET.read_text()
    assert current == gen.generate(), "sidecar_pb2.py is stale: run python/scripts/gen_proto.py"
    assert "_runtime_version" not in current


def test_service_name_matches_the_proto():
    from anyaccel_sidecar import SERVICE, sidecar_pb2

    service = sidecar_pb2.DESCRIPTOR.services_by_name["Sidecar"]
    assert service.full_name == SERVICE
    assert sorted(m.name for m in service.methods) == sorted(
        ["Health", "GetCapabilities", "EncodeText", "BeginDenoise", "DenoiseStep", "EndDenoise", "VaeDecode", "VaeEncode"]
    )

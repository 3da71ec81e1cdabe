"""The committed gRPC stubs must match the .proto files (run `make protos` when this fails)."""

from services.common.protogen import generated_matches, proto_files


def test_protos_exist():
    names = {p.name for p in proto_files()}
    assert "common.proto" in names


def test_generated_stubs_up_to_date():
    stale = generated_matches()
    assert not stale, f"stubs out of date with protos/: {stale}; run `make protos` and commit"

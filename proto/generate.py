"""Generate the Python stubs for the BuildKit control API subset.

Run as ``python proto/generate.py [OUT_DIR]`` (``make proto``). The stubs land
in ``OUT_DIR/sidecar/protocol`` (default: the repository root, i.e. the
committed package). ``tests/test_protocol_stubs.py`` generates into a temporary
directory and compares byte for byte, so a stub that is stale against
``proto/`` fails the test suite.

grpcio-tools and mypy-protobuf are pinned exactly in pyproject.toml: the
output (and the version checks the generated code embeds) depends on them.
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = Path("sidecar") / "protocol"


def _plugin(name: str) -> str:
    """Locate a protoc plugin installed beside this interpreter."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"protoc plugin {name!r} not found: pip install -e '.[test]'")
    return found


def generate(out_dir: Path) -> list[Path]:
    """Generate every stub of ``proto/sidecar/protocol`` into ``out_dir``."""
    sources = sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    (out_dir / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    # google/rpc/status.proto ships with googleapis-common-protos.
    googleapis = Path(resources.files("google.rpc").joinpath("status.proto").__fspath__()).parents[2]
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"-I{googleapis}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out=quiet:{out_dir}",
        f"--mypy_grpc_out=quiet:{out_dir}",
        *(str(s.relative_to(PROTO_ROOT)) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out_dir / PACKAGE_DIR).iterdir() if p.suffix in (".py", ".pyi"))


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT.parent
    for path in generate(target):
        print(path)

"""Regenerate the Python code of protos/ into client/gmmserve_proto.

Usage: python scripts/generate_protos.py [--check]

With --check, generate into a temporary folder and exit 1 when the committed
files differ, so CI catches a .proto edited without regenerating.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUTPUT_ROOT = ROOT / "client"
PACKAGE = "gmmserve_proto"


def generate(output_root: Path) -> list[Path]:
    """Run protoc on every .proto and return the generated files."""
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    for proto in protos:
        arguments = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={output_root}",
            f"--pyi_out={output_root}",
            f"--grpc_python_out={output_root}",
            str(proto.relative_to(PROTO_ROOT)),
        ]
        if protoc.main(arguments) != 0:
            raise SystemExit(f"protoc failed on {proto}")
    generated = sorted(
        path for path in (output_root / PACKAGE).rglob("*") if path.suffix in {".py", ".pyi"}
    )
    # Package markers so the generated modules import as gmmserve_proto.v1.
    for folder in {path.parent for path in generated} | {output_root / PACKAGE}:
        marker = folder / "__init__.py"
        if not marker.exists():
            marker.write_text("")
    return generated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="fail when the committed output is stale"
    )
    options = parser.parse_args()
    if not options.check:
        for path in generate(OUTPUT_ROOT):
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        generated = generate(Path(scratch))
        stale = []
        for path in generated:
            committed = OUTPUT_ROOT / path.relative_to(scratch)
            if not committed.exists() or not filecmp.cmp(path, committed, shallow=False):
                stale.append(str(committed.relative_to(ROOT)))
        if stale:
            print("generated code is stale; run: python scripts/generate_protos.py")
            for name in stale:
                print(f"  {name}")
            return 1
    print("generated code is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())

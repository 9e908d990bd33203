#!/usr/bin/env bash
# Regenerates the checked-in protobuf code from the .proto files.
#
# protoc 26.1 (grpcio-tools 1.64.3) writes gencode for protobuf 5.26.1 with no runtime version
# check, which every runtime from 5.26.1 to 7.x loads without a warning; newer protoc releases
# write code that refuses runtimes older than themselves. Keep this version unless the
# supported protobuf range in pyproject.toml changes with it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/protoc"
python3 -m venv "$venv"
"$venv/bin/pip" install -q "grpcio-tools==1.64.3"
protoc=("$venv/bin/python" -m grpc_tools.protoc)
"${protoc[@]}" -I . --python_out=. --pyi_out=. faststream_natspubsub/codecs/envelope.proto
"${protoc[@]}" -I examples --python_out=examples --pyi_out=examples examples/orders.proto
rm -rf "$(dirname "$venv")"

#!/usr/bin/env bash
# Generate the gRPC/protobuf Python modules from proto/ into src/sentistream/protos/.
# The generated files are committed; rerun with `make proto` after editing a .proto file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=src/sentistream/protos
rm -rf "$OUT"/inference "$OUT"/tensorflow "$OUT"/tensorflow_serving
protos=$(cd proto && find . -name '*.proto' | sed 's|^\./||' | sort)
(cd proto && "$OLDPWD/$PY" -m grpc_tools.protoc -I . --python_out="$OLDPWD/$OUT" \
  --grpc_python_out="$OLDPWD/$OUT" --pyi_out="$OLDPWD/$OUT" $protos)
# Generated imports are absolute ("from tensorflow.core..."): anchor them in our package so
# they never collide with a real tensorflow or tritonclient installation.
find "$OUT" -name '*.py' -o -name '*.pyi' | while read -r f; do
  sed -i -E 's/^from (inference|tensorflow_serving|tensorflow)([. ])/from sentistream.protos.\1\2/' "$f"
done
for d in $(find "$OUT" -type d); do touch "$d/__init__.py"; done
echo "generated: $(find "$OUT" -name '*_pb2*.py' | wc -l) modules"

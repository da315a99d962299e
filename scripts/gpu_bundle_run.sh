#!/bin/bash
# The last part of scripts/gpu_bundle.py's bundle: run from the checkout's root on the GPU machine,
# after the earlier parts were copied to /tmp/gpu-bundle. Joins and unpacks the bundle, installs it
# under /tmp/gpu-bundle/bundle/site (nothing of the image is changed), checks that the service's own CUDA
# library preload brings CUDA up, then runs loadtest/gpu_check.py; the report lands in $OUT.
set -u -o pipefail
ROOT=$(pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
export B=/tmp/gpu-bundle  # read by the Python steps below too
OUT=${OUT:-$B/out}
mkdir -p "$B" "$OUT"
cp "$HERE"/p* "$B"/
last=$(basename "$(ls "$HERE"/p*)" | tr -dc 0-9)
for n in $(seq 1 "$last"); do
  [ -f "$B/p$n" ] || { echo "part $n is missing in $B: copy the parts again, in one warm session"; exit 3; }
done
T0=$(date +%s)
cd "$B" && rm -rf bundle && for n in $(seq 1 "$last"); do cat "p$n"; done | xz -dc | tar xf - || exit 4
S=$B/bundle/site
python3 -m pip install -q --no-index --no-deps --no-compile --target "$S" bundle/wheels/*.whl 2>&1 | grep -v "already exists"
python3 - <<'PY' || exit 5
import glob, os, torch
from safetensors.torch import load_file, save_file
bundle = os.environ["B"] + "/bundle"
tensors = load_file(f"{bundle}/model16.safetensors")
tensors = {k: (v.float() if v.dtype == torch.float16 else v) for k, v in tensors.items()}
(model,) = glob.glob(f"{bundle}/site/*/model")
save_file(tensors, f"{model}/model.safetensors", metadata={"format": "pt"})
PY
export PYTHONPATH="$S" PATH="$S/bin:$PATH" PYTHONUNBUFFERED=1
python3 -m pip list 2>/dev/null | grep -i -E "^(torch|numpy|onnx|onnxruntime|onnxruntime-gpu|typer|rich|protobuf|grpcio|uvloop|transformers|tokenizers) "
# bertserve's own preload of CUDA/cuDNN (bertserve.runtime.onnxruntime.preload_cuda_libraries);
# where the image keeps them outside this site-packages, LD_LIBRARY_PATH is the fallback
python3 - <<'PY'
import logging, os, onnxruntime as ort
from onnx import TensorProto, helper
logging.basicConfig(level=logging.INFO)
from bertserve.runtime.onnxruntime import preload_cuda_libraries
preload_cuda_libraries()
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 8])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 8])
model = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "x"], ["y"])], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
session = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
print("CUDA after preload_cuda_libraries:", session.get_providers())
open(os.environ["B"] + "/preload", "w").write(str("CUDAExecutionProvider" in session.get_providers()))
PY
if [ "$(cat "$B/preload" 2>/dev/null)" != True ]; then
  echo "preload did not bring CUDA up; LD_LIBRARY_PATH from the image's nvidia packages instead"
  NV=$(python3 -c "import nvidia; print(list(nvidia.__path__)[0])" 2>/dev/null)
  export LD_LIBRARY_PATH="$(find "$NV" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')${LD_LIBRARY_PATH:-}"
fi
echo "set-up took $(( $(date +%s) - T0 )) s"
# from a folder holding only loadtest/: the checkout's own bertserve/ (no export/ or service/
# inside; pyproject maps them) must not shadow the installed wheel
mkdir -p "$B/run" && ln -sfn "$ROOT/loadtest" "$B/run/loadtest" && cd "$B/run" || exit 6
timeout 460 python3 -m loadtest.gpu_check --work "$B/work" --seconds 3 2>&1 | tee "$OUT/gpu_check.log"
echo "gpu_check rc=$?"
cp "$B"/work/*.json "$OUT/" 2>/dev/null
echo "total $(( $(date +%s) - T0 )) s"

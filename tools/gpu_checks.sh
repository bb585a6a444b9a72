#!/usr/bin/env bash
# The GPU issue's must-shows in one prepared script, for a session that is lent a
# device machine (developer tool; CI never runs it).  Each check prints one
# summary line to $OUT/gpu_checks.txt; the main logs go to $OUT (8 files come back), the rest to /tmp/kvrun-logs.
#
# The models do not fit one device call (64 MiB a call; SmolLM2 is 94 MiB, Gemma 3
# 241 MiB) and the machine cannot download, so they travel in chunks over several
# calls while the machine stays warm (30 s idle: issue the next call at once):
#
#   here:    bash tools/gpu_checks.sh split          # .gpu/: 40 MiB chunks (3 + 7) and the gguf wheel, seconds
#   here:    bash tools/gpu_checks.sh refs &         # the CPU's greedy texts and kv-eval (int8 and float x)
#                                                    # into .gpu/whl: ~10 min a model; needed from `run 0` on
#   device:  carry [".gpu/whl", ".gpu/<first SmolLM2 chunk>"],
#            "bash tools/gpu_checks.sh stage >/dev/null; bash tools/gpu_checks.sh run tests"
#   device:  carry [".gpu/whl", ".gpu/<second chunk>"], "...stage...; bash tools/gpu_checks.sh run 0"
#   device:  one call per Gemma chunk, carry [".gpu/<chunk>"], "bash tools/gpu_checks.sh stage",
#            the last one with ".gpu/whl" and "...; bash tools/gpu_checks.sh run 1"
#
# A machine is lent only now and then (stop 28 was refused one), so `split` and `refs` are worth
# running at a session's start whether or not `status` says one is lent.
#
# Seen on an H200 (stop 27), 15 device minutes in all: start ~30 s; stage + `run tests` (cold
# CuPy and Numba caches, pytest-xdist -n 8) 186 s; stage + `run 0` 146 s; a stage-only call
# ~4 s; stage + `run 1` 106 s: all of it in ~500 s.  The must-shows run first in each model's
# part, the diagnostics after while KVRUN_CHECK_BUDGET (s) lasts.  The device image has
# CuPy (cupy-cuda13x), Numba, click, sentencepiece, tokenizers and jinja2; only gguf travels.
#
# `run` assembles the models, then: the GPU tests (the real-CUDA params, `-m gpu`;
# CI runs the rest), greedy text CPU vs GPU for 32 tokens and the teacher-forced
# agreement (tools/device_agreement.py) on each model, plain and with an eviction
# policy that merges (h2o + KeepKV), `bench --device gpu` (also with a policy, and
# without CUDA graphs), and
# `kv-eval` perplexities GPU vs CPU for --kv-bits 16, 4, 2.  One call may run all
# (`run`), or a part (`run tests`, `run 0`, `run 1`) so each stays under the
# 600 s a device call may take; parts append to the summary.  `run kernels`: only the
# per-kernel device times of the staged models (plain, 4- and 2-bit caches at d512).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PARTS=/tmp/kvrun-parts
MODELS=("SmolLM2-135M-Instruct.Q4_1.gguf" "gemma-3-270m-q4_k_m.gguf")
OUT=${OUT:-/tmp/kvrun-out}
mkdir -p "$OUT"
# the checks' arguments, one place for the CPU references (`refs`) and the device (`run`)
GREEDY=(-p "The history of the printing press" -n 32 --temp 0 --no-stats)
# kv-eval's own default context: 1024 tokens score only 511, where the CPU's int8-x and float-x
# paths alone differ by 1% at 2 bits on SmolLM2; at 2048 by at most 0.17% (stop 28)
CTX=${KVRUN_CHECK_CTX:-2048}
TEXT=/usr/share/common-licenses/GPL-3
[ -f "$TEXT" ] || TEXT=README.md
KVEVAL=(-f "$TEXT" --ctx "$CTX" --configs "16; 4; 2" --json)

case "${1:-}" in
split)
    set -e
    src=${KVRUN_MODELS:-$HOME/.cache/kvrun/models}
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
    rm -rf .gpu && mkdir -p .gpu/whl
    # 40 MiB chunks: with the tracked tree (~18 MiB at stop 42) and the wheel a call stays under its 64 MiB
    for m in "${MODELS[@]}"; do split -b 40M -d "$src/$m" ".gpu/$m.part"; done
    python3 -m pip download --no-deps --only-binary=:all: -d .gpu/whl gguf >/dev/null
    ls -la .gpu .gpu/whl
    ;;
refs)
    # the CPU side of the greedy and kv-eval checks, computed here (it travels with the wheel, so the
    # device runs only its own side): ~10 min for SmolLM2, more for Gemma 3; start the device's
    # `run tests` while it runs.  `refs 0` / `refs 1`: one model.  `run` falls back to computing on
    # the device's CPU what is absent (another CPU: its greedy text may differ at a near-tie).
    set -e
    src=${KVRUN_MODELS:-$HOME/.cache/kvrun/models}
    mkdir -p .gpu/whl
    for i in "${!MODELS[@]}"; do
        m=${MODELS[$i]}
        [ -z "${2:-}" ] || [ "$2" == "$i" ] || continue
        python3 -m kvrun.cli run "$src/$m" "${GREEDY[@]}" --device cpu >".gpu/whl/greedy_cpu_$m.txt"
        # and the CPU with float activations (tools/cpu_float_path.py), what the GPU's arithmetic follows
        OPENBLAS_NUM_THREADS=1 python3 tools/cpu_float_path.py run "$src/$m" "${GREEDY[@]}" --device cpu >".gpu/whl/greedy_cpufloat_$m.txt"
        python3 -m kvrun.cli kv-eval "$src/$m" "${KVEVAL[@]}" --device cpu >".gpu/whl/kveval_cpu_${CTX}_$m.json"
        # and the default CPU with float queries for the keys (a VNNI host scores 2/4-bit keys with int8
        # queries, ops/cpu/qkeys.py; the GPU keeps them float): ~0.4% of 4-bit PPL apart on SmolLM2 at ctx 2048
        KVRUN_INT_KEYS=0 python3 -m kvrun.cli kv-eval "$src/$m" "${KVEVAL[@]}" --device cpu >".gpu/whl/kveval_cpufk_${CTX}_$m.json"
        OPENBLAS_NUM_THREADS=1 python3 tools/cpu_float_path.py kv-eval "$src/$m" "${KVEVAL[@]}" --device cpu \
            >".gpu/whl/kveval_cpufloat_${CTX}_$m.json"
    done
    ls -la .gpu/whl
    ;;
stage)
    mkdir -p "$PARTS"
    cp -v .gpu/*.part* "$PARTS"/ 2>/dev/null || echo "no chunk carried"
    ls -la "$PARTS"
    ;;
run)
    export KVRUN_MODELS=/tmp/kvrun-models PYTHONUNBUFFERED=1
    mkdir -p "$KVRUN_MODELS" /tmp/kvrun-pkg
    # assemble the models whose chunks are staged (a part that needs one still missing says so)
    for m in "${MODELS[@]}"; do
        ls "$PARTS/$m".part* >/dev/null 2>&1 && cat "$PARTS/$m".part* >"$KVRUN_MODELS/$m"
    done
    ls -l "$KVRUN_MODELS"
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl || exit 1
    ln -sfn "$ROOT" /tmp/kvrun-pkg/kvrun  # the repository root is the package
    export PYTHONPATH=/tmp/kvrun-pkg:/tmp/site
    K="python3 -m kvrun.cli"
    DEV=${KVRUN_CHECK_DEVICE:-gpu}  # cpu: a dry run of the script on a machine without a GPU
    S="$OUT/gpu_checks.txt"
    LOGS=/tmp/kvrun-logs  # logs the summary quotes enough of: at most 8 files come back from $OUT
    mkdir -p "$LOGS"
    PART=${2:-all}
    [ "$PART" == all ] && : >"$S"
    # bench_line LABEL LOG SECONDS ARGS...: `kvrun bench $p --device $DEV ARGS` into LOG, its speed,
    # graph-replay and error lines into the summary behind LABEL
    bench_line() {
        local label=$1 log=$2 secs=$3
        shift 3
        timeout "$secs" $K bench "$p" --device $DEV "$@" >"$log" 2>&1
        grep -sE "pp[0-9]+|tg[0-9]+|CUDA graphs|rror" "$log" | sed "s/  */ /g; s/^/$label/" >>"$S"
    }
    # kernel_times MODEL N TOP [--kv SPEC]: tools/gpu_kernel_times.py at d512, appended to kernel_times.log
    kernel_times() {
        local model=$1 n=$2 top=$3
        shift 3
        timeout 120 python3 tools/gpu_kernel_times.py "$model" --depth 512 -n "$n" --top "$top" "$@" >>"$OUT/kernel_times.log" 2>&1
    }
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >>"$S" 2>&1
    # (the tiny writers' files, whose hashes the fixtures hold, depend on these: stop 42's sentencepiece differed)
    python3 -c "import numpy, sentencepiece, gguf; print('numpy', numpy.__version__, 'sentencepiece', sentencepiece.__version__)" >>"$S" 2>&1
    # without CuPy (or a device it sees) every GPU test would skip and the run would look green
    if [ "$DEV" == gpu ] && ! python3 -c "import cupy, sys; n = cupy.cuda.runtime.getDeviceCount(); print('cupy', cupy.__version__, 'devices', n); sys.exit(n == 0)" >>"$S" 2>&1; then
        echo "ABORT: CuPy cannot be imported or sees no device; nothing below would test the GPU" >>"$S"
        cat "$S"
        exit 1
    fi

    if [ "$PART" == all ] || [ "$PART" == tests ]; then
        # the device has 16 cores and pytest-xdist: workers cut the cold compiles' wall time
        # serial: workers sharing numba's on-disk cache crashed 23 of 24 workers on the H100 (stop 42)
        XD=""
        python3 -c "import pytest_timeout" 2>/dev/null && XD="$XD --timeout 120"  # a hung kernel fails one test, not the call
        timeout 200 python3 -m pytest -q -p no:cacheprovider $XD -rfE -m gpu tests/ >"$OUT/pytest.log" 2>&1
        echo "gpu tests: $(tail -1 "$OUT/pytest.log")" >>"$S"
        # the engine on the device (unmarked: with a GPU they run it, not the emulator), CUDA graphs included
        timeout 100 python3 -m pytest -q -p no:cacheprovider $XD -rfE tests/test_gpu_engine.py >"$OUT/pytest_engine.log" 2>&1
        echo "gpu engine tests: $(tail -1 "$OUT/pytest_engine.log")" >>"$S"
    fi

    if [ "$PART" == kernels ]; then
        # only the per-kernel device times (tools/gpu_kernel_times.py) of the staged models at d512:
        # plain, 4- and 2-bit caches; a quick look before and after a kernel change
        for m in "${MODELS[@]}"; do
            [ -s "$KVRUN_MODELS/$m" ] || continue
            for kvs in "" "--kv 4" "--kv 2"; do
                kernel_times "$KVRUN_MODELS/$m" 16 14 $kvs
            done
        done
        cat "$OUT/kernel_times.log"
        exit 0
    fi

    for i in "${!MODELS[@]}"; do
        m=${MODELS[$i]}
        [ "$PART" == all ] || [ "$PART" == "$i" ] || continue
        p="$KVRUN_MODELS/$m"
        t0=$SECONDS
        if [ ! -s "$p" ]; then echo "$m: not staged, skipped" >>"$S"; continue; fi
        # the must-shows first (greedy text, bench, kv-eval); the diagnostics after, while time is left
        if [ -s ".gpu/whl/greedy_cpu_$m.txt" ]; then  # computed by `refs`, on the CPU machine
            a=$(cat ".gpu/whl/greedy_cpu_$m.txt")
        else
            a=$($K run "$p" "${GREEDY[@]}" --device cpu 2>>"$OUT/greedy.log")
        fi
        b=$(timeout 200 $K run "$p" "${GREEDY[@]}" --device $DEV 2>>"$OUT/greedy.log")
        if [ -z "$a" ] || [ -z "$b" ]; then r="NO TEXT (see greedy.log)"; elif [ "$a" == "$b" ]; then r=EQUAL; else r=DIFFERENT; fi
        printf '%s\ncpu: %s\ngpu: %s\n' "$m" "$a" "$b" >>"$OUT/greedy.log"
        if [ -s ".gpu/whl/greedy_cpufloat_$m.txt" ]; then  # the CPU with float activations, as the GPU keeps them
            [ "$(cat ".gpu/whl/greedy_cpufloat_$m.txt")" == "$b" ] && r="$r; EQUAL to the CPU's float-x path" || r="$r; DIFFERENT from the CPU's float-x path"
        fi
        echo "greedy 32 tokens $m: $r ($((SECONDS - t0)) s)" >>"$S"
        bench_line "" "$OUT/bench_$m.log" 150 -p 512 -n 128 -r 3
        if [ -s ".gpu/whl/kveval_cpu_${CTX}_$m.json" ]; then  # computed by `refs`
            cp ".gpu/whl/kveval_cpu_${CTX}_$m.json" "$OUT/kveval_cpu_$m.json"
        else
            timeout 300 $K kv-eval "$p" "${KVEVAL[@]}" --device cpu >"$OUT/kveval_cpu_$m.json" 2>"$LOGS/kveval_cpu_$m.log"
        fi
        timeout 300 $K kv-eval "$p" "${KVEVAL[@]}" --device $DEV \
            >"$OUT/kveval_device_$m.json" 2>"$LOGS/kveval_${DEV}_$m.log"
        python3 - "$OUT/kveval_device_$m.json" "$OUT/kveval_cpu_$m.json" ".gpu/whl/kveval_cpufloat_${CTX}_$m.json" \
            ".gpu/whl/kveval_cpufk_${CTX}_$m.json" >>"$S" <<'EOF'
import json, os, sys
try:
    g, c = (json.load(open(f)) for f in sys.argv[1:3])
    fl, fk = (json.load(open(f)) if os.path.exists(f) else [None] * len(g) for f in sys.argv[3:5])
    for a, b, f, k in zip(g, c, fl, fk):
        line = f"kv-eval {a['config']}: gpu ppl {a['ppl']:.4f} cpu {b['ppl']:.4f} ({100 * (a['ppl'] / b['ppl'] - 1):+.2f}%)"
        if k:  # the default CPU with float queries for the keys, as the GPU's
            line += f", cpu float-keys {k['ppl']:.4f} ({100 * (a['ppl'] / k['ppl'] - 1):+.2f}%)"
        if f:  # the CPU with float activations (and float-query keys), as the GPU keeps them
            line += f", cpu float-x {f['ppl']:.4f} ({100 * (a['ppl'] / f['ppl'] - 1):+.2f}%)"
        print(line)
except Exception as e:  # a failed run: its log says why
    print(f"kv-eval: no result ({e})")
EOF
        echo "must-shows $m: $((SECONDS - t0)) s" >>"$S"
        # diagnostics, each only while this model's budget (KVRUN_CHECK_BUDGET s from its start) lasts
        left() { [ $((SECONDS - t0)) -lt "${KVRUN_CHECK_BUDGET:-400}" ]; }
        # device time per kernel, eager, plain vs 2-bit cache at depth 512: where the compressed
        # cache's 3-4x slower decode goes (stop 27); the full tables in kernel_times.log
        for kvs in "" "--kv 2"; do
            left && kernel_times "$p" 32 8 $kvs &&
                tail -10 "$OUT/kernel_times.log" | sed "s/^/$m kernels ${kvs:-fp16}: /" >>"$S"
        done
        # with --texts: the three greedy texts (CPU decode, CPU batch path = float activations as the GPU, GPU decode)
        left && timeout 180 python3 tools/device_agreement.py "$p" --device $DEV -n 32 --texts 2>>"$OUT/greedy.log" | sed "s/^/$m: /" >>"$S"
        # decode without CUDA graphs (every kernel launched from Python): what the graphs gain
        left && KVRUN_CUDA_GRAPHS=0 bench_line "no graphs: " "$LOGS/bench_eager_$m.log" 100 -p 0 -n 128 -r 2
        # the 2-bit cache past its fp16 window: steady-state steps replay a graph, slots planned on the host
        left && bench_line "kv-bits 2: " "$LOGS/bench_kv2_$m.log" 100 -p 0 -n 128 -d 512 -r 2 --kv-bits 2
        # an eviction policy with merging: its decode steps pick, demote and merge on the device
        left && timeout 120 python3 tools/device_agreement.py "$p" --device $DEV -n 32 --kv "2,policy=h2o,budget=64,residual=16,merge=keepkv" \
            2>>"$OUT/greedy.log" | sed "s/^/$m h2o+keepkv: /" >>"$S"
        # (past its budget its decode steps replay a CUDA graph too; the prompt's chunks go in with one launch each)
        left && bench_line "h2o budget 256: " "$LOGS/bench_policy_$m.log" 100 -p 512 -n 128 -d 512 -r 2 --kv-bits 4 --kv-policy h2o --kv-budget 256
        # fp16 pools behind the window (--kv-budget alone): stored by kvquant.cu on the device since stop 33, unrun on a GPU until then
        left && bench_line "fp16 budget 1024: " "$LOGS/bench_budget16_$m.log" 100 -p 256 -n 32 -d 2048 -r 2 --kv-budget 1024
        # several sequences in one forward (stop 42): a batch of decode steps replays a graph of its own
        left && bench_line "batched: " "$LOGS/bench_np_$m.log" 100 -p 0 -n 128 -r 2 -np 1,2,4,8
        # a chat saved on the GPU resumes on the CPU with the same next tokens (device-independent files, stop 42)
        left && { timeout 120 $K run "$p" -p "The capital of France" -n 8 --temp 0 --no-stats --device $DEV --prompt-cache /tmp/kvrun-pc.kvs >/dev/null 2>&1
                  a=$(timeout 120 $K run "$p" -p "The capital of France" -n 16 --temp 0 --no-stats --device cpu --prompt-cache /tmp/kvrun-pc.kvs 2>/dev/null)
                  b=$(timeout 120 $K run "$p" -p "The capital of France" -n 16 --temp 0 --no-stats --device cpu 2>/dev/null)
                  [ "$a" == "$b" ] && r=EQUAL || r=DIFFERENT; echo "$m session gpu->cpu: $r" >>"$S"; rm -f /tmp/kvrun-pc.kvs; }
        echo "all checks $m: $((SECONDS - t0)) s" >>"$S"
    done
    cat "$S"
    ;;
*)
    echo "usage: bash tools/gpu_checks.sh split|refs [i]|stage|run [tests|kernels|i]" >&2
    exit 2
    ;;
esac

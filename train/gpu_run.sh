#!/usr/bin/env bash
# The GPU session's one command: train the default recipe, export everything the app serves,
# benchmark our training step against torchvision's, and pack the results into $OUT.
#
#   OUT=/some/folder bash train/gpu_run.sh            # from the repository root, on the GPU box
#
# On the device machine the tool sets $OUT (the folder that comes back). The run needs the data
# pack inside the checkout (data/ is git-ignored, so the call carries it) and nothing from assets/:
#
#   mkdir -p data && cp ../shared/data/cifar10-jpeg.tar.gz data/
#   run(command="bash train/gpu_run.sh", carry=["data/cifar10-jpeg.tar.gz"], timeout_s=600)
#   bash train/gpu_unpack.sh FILES_AT assets          # back here: re-join, check sha256, install
#
# $OUT receives at most 8 files of at most 16 MiB: the float16 weights split into 15 MiB parts
# (resnet50_cifar10.safetensors.part-NN) and a tar of everything else, split the same way
# (results.tar.part-NN): card, history, evaluation, test gallery, samples, replay, channel atlas,
# weights.sha256 and logs/. The summary is printed last.
#
# The call's limit is 600 s: the trainer gets SIGTERM at TRAIN_TIMEOUT, saves a checkpoint and
# stops; an unfinished run is then exported as it stands (its card says so), so the minutes spent
# still give weights. The CPU rehearsal (tests/test_train_gpu_run.py) runs this very file with tiny
# settings through these variables:
#   DATA (data/cifar10-jpeg.tar.gz)  DEVICE (cuda)  EPOCHS (the recipe's)  RUNS (runs)
#   PYTHON (python3: the GPU box's; the rehearsal passes the interpreter running the tests)
#   TRAIN_ARGS, BENCH_ARGS (extra flags)  TRAIN_TIMEOUT (420 s)  BENCH_TIMEOUT (90 s)
# Worst case 420 + 20 (grace) + 60 (export of an unfinished run) + 90 + packing < 600 s; the expected
# case is ~300 s of training plus ~40 s of data loading, compile warm-up and export, then ~40 s of benchmark.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder whose files come back}"
DATA=${DATA:-data/cifar10-jpeg.tar.gz}
DEVICE=${DEVICE:-cuda}
RUNS=${RUNS:-runs}
TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-420}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-90}
PYTHON=${PYTHON:-python3}
RUN=$RUNS/gpu
EXPORT=$RUNS/gpu-export
LOGS=$EXPORT/logs
WEIGHTS=resnet50_cifar10.safetensors
export PYTHONUNBUFFERED=1
started=$(date +%s)

rm -rf "$EXPORT"
mkdir -p "$OUT" "$LOGS"
{
    echo "started $(date -u +%FT%TZ) on $(hostname); git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$LOGS/environment.log"

# 1. Train and export (the default recipe; --overwrite: a leftover runs/gpu must not stop it).
epochs=()
[ -n "${EPOCHS:-}" ] && epochs=(--epochs "$EPOCHS")
# shellcheck disable=SC2086  # TRAIN_ARGS is a list of flags
timeout -s TERM -k 20 "$TRAIN_TIMEOUT" "$PYTHON" -m train --data "$DATA" --device "$DEVICE" --out "$RUN" \
    --overwrite --export-to "$EXPORT" "${epochs[@]}" ${TRAIN_ARGS:-} 2>&1 | tee "$LOGS/train.log"
train_rc=${PIPESTATUS[0]}
echo "$PYTHON -m train exited with $train_rc after $(( $(date +%s) - started )) s" | tee -a "$LOGS/train.log"

if [ ! -f "$EXPORT/model_card.json" ] && [ -f "$RUN/checkpoint.pt" ]; then
    timeout -s TERM -k 5 60 "$PYTHON" -m train.export --run "$RUN" --to "$EXPORT" --data "$DATA" --device "$DEVICE" \
        --allow-unfinished --notes "UNFINISHED: the GPU job's time limit stopped training before its last epoch." \
        2>&1 | tee "$LOGS/export.log"
fi

# 2. Throughput: ours vs torchvision's ResNet-50, same step, bf16 + channels_last + compile, batch 512.
# shellcheck disable=SC2086
timeout -s TERM -k 5 "$BENCH_TIMEOUT" "$PYTHON" bench/train_throughput.py --device "$DEVICE" ${BENCH_ARGS:-} \
    2>&1 | tee "$LOGS/bench.log"
bench_rc=${PIPESTATUS[0]}

# 3. Pack: weights in 15 MiB parts, everything else as one tar in 15 MiB parts.
rm -f "$OUT"/*.part-*
weights_sha=missing
if [ -f "$EXPORT/$WEIGHTS" ]; then
    (cd "$EXPORT" && sha256sum "$WEIGHTS" > weights.sha256)
    weights_sha=$(cut -d' ' -f1 "$EXPORT/weights.sha256")
    split -b 15M -d "$EXPORT/$WEIGHTS" "$OUT/$WEIGHTS.part-"
fi
echo "whole job $(( $(date +%s) - started )) s before packing" >> "$LOGS/train.log"
tar -C "$EXPORT" --exclude "./$WEIGHTS" -cf - . | split -b 15M -d - "$OUT/results.tar.part-"
ls -l "$OUT"

# 4. The summary, last.
echo "=== GPU job summary ==="
"$PYTHON" - "$EXPORT" "$LOGS/bench.log" "$train_rc" "$bench_rc" "$weights_sha" "$(( $(date +%s) - started ))" "$OUT" <<'PY'
import json, os, sys
export, bench_log, train_rc, bench_rc, sha, job_seconds, out = sys.argv[1:]
try:
    card = json.load(open(os.path.join(export, "model_card.json")))
except (OSError, ValueError) as exc:
    card = {}
    print(f"no model card ({exc}): training and export failed; see logs/train.log")
bench = {}
try:
    bench = json.loads(open(bench_log).read().strip().splitlines()[-1])
except (OSError, ValueError, IndexError):
    print("no benchmark result; see logs/bench.log")
if card:
    replay = card.get("replay") or {}
    print(f"device {card['device']}, torch {card['torch_version']}, {card['epochs']} epochs of {card['config']['epochs']}")
    print(f"test accuracy {card['test_accuracy']:.2%} (flip TTA {card['test_accuracy_tta']:.2%}) on "
          f"{card['test_images']:,} images of {card['dataset']}, {card['evaluation_precision']}")
    print(f"training {card['training_seconds']:.1f} s first step to last ({card['training_images_per_second']:,.0f} img/s "
          f"overall, {card['steady_images_per_second']:,.0f} img/s median epoch); whole command "
          f"{card['command_seconds']:.1f} s; whole job {job_seconds} s")
    if replay:
        print(f"replay {replay['snapshots']} snapshots recorded in {replay['recording_seconds']:.1f} s "
              f"({replay['share_of_training']:.2%} of training); atlas {card.get('atlas_seconds')} s")
if bench:
    ips = bench["images_per_second"]
    print(f"throughput ours {ips['ours']:,.0f} img/s, torchvision {ips['torchvision']:,.0f} img/s: "
          f"ratio {bench['ratio_ours_over_torchvision']:.3f} (goal >= 1.0; batch {bench['batch_size']}, "
          f"compile {bench['compile']}, {bench['device']})")
files = sorted(os.listdir(out))
print(f"exit codes: train {train_rc}, bench {bench_rc}; weights sha256 {sha}; {len(files)} files to fetch: {', '.join(files)}")
PY

#!/usr/bin/env bash
# Install what train/gpu_run.sh packed: re-join the weights, check their sha256, unpack the rest.
#
#   bash train/gpu_unpack.sh FILES_AT [ASSETS]        # ASSETS defaults to assets/
#
# FILES_AT holds resnet50_cifar10.safetensors.part-NN and results.tar.part-NN. Nothing in ASSETS
# changes unless the re-joined weights match the sha256 the GPU job computed; the job's logs go
# to runs/gpu-logs/ (or $LOGS_TO).
set -euo pipefail
src=${1:?usage: bash train/gpu_unpack.sh FILES_AT [ASSETS]}
dest=${2:-assets}
cd "$(dirname "$0")/.."
logs=${LOGS_TO:-runs/gpu-logs}
WEIGHTS=resnet50_cifar10.safetensors

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat "$src"/results.tar.part-* | tar -x -C "$work"
cat "$src/$WEIGHTS".part-* > "$work/$WEIGHTS"
(cd "$work" && sha256sum -c weights.sha256)

mkdir -p "$dest" "$logs"
cp -r "$work/logs/." "$logs/"
rm -rf "$work/logs" "$work/weights.sha256"
cp -r "$work/." "$dest/"
echo "installed into $dest: $(cd "$dest" && ls | tr '\n' ' ')"
echo "logs in $logs; check with: python -m train.evaluate --weights $dest/$WEIGHTS --data data/cifar10-jpeg.tar.gz --out /tmp/eval"

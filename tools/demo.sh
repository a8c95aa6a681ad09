#!/usr/bin/env bash
# The main job end to end on synthetic studies, from nothing to a triaged worklist (`make demo`):
#
#   1. synthesize a training set (400 studies, 40 % positive) and 24 studies to triage (1024 px, DICOM);
#   2. train the gate (classifier) and the positive-only U-Net (segmenter) with the CPU preset `small` on
#      folds 1-3 of 4 (an inner slice of them chooses the epoch); fold 0 is predicted out of fold;
#   3. choose the gate and the triplet with the threshold search (`triage train thresholds`) on those
#      out-of-fold predictions (the cascade's Dice per image), written into the run cards;
#   4. export both to a bundle (ONNX, parity-checked against PyTorch) with the searched thresholds;
#   5. `triage predict` the 24 studies: results.jsonl, worklist.csv, overlays, DICOM SEG and SC; then what
#      it flagged against the truth (the studies' metadata.csv).
#
# Usage: tools/demo.sh [OUT]  (default demo-out). A few minutes on 2 CPU cores. Needs the training
# extra (the Makefile installs it); the bundle it makes runs with the runtime alone.
set -euo pipefail

out="${1:-demo-out}"
bin="$(dirname "$0")/../.venv/bin"
triage="$bin/triage"
[ -x "$triage" ] || { echo "demo: $triage not found; run 'make demo' (it installs .venv)" >&2; exit 2; }

step() { printf '\n== %s\n' "$*"; }

rm -rf "$out"
mkdir -p "$out"

step "1/5 synthesize: 400 training studies (40 % positive), 24 studies to triage (1024 px)"
"$triage" synth "$out/train" --studies 400 --positive-fraction 0.4 --seed 7
"$triage" synth "$out/studies" --studies 24 --size 1024 --seed 8 --contact-sheet "$out/contact_sheet.png"

step "2/5 train the gate and the positive-only U-Net (preset small; folds 1-3 of 4 train, fold 0 is held out)"
"$triage" train classifier --data "$out/train" --out "$out/runs/classifier" --preset small --folds 4 --fold 0 \
    --cache "$out/cache"
"$triage" train segmenter --data "$out/train" --out "$out/runs/segmenter" --preset small --folds 4 --fold 0 \
    --cache "$out/cache"

step "3/5 search the gate and the triplet on the held-out fold's predictions"
"$triage" train thresholds --classifier "$out/runs/classifier" --segmenter "$out/runs/segmenter"

step "4/5 export both runs to a bundle (ONNX, parity check; the thresholds from the run cards)"
"$triage" export "$out/runs/classifier" "$out/runs/segmenter" --out "$out/bundle" --name demo --version 1

step "5/5 triage the 24 studies"
rc=0
"$triage" predict "$out/studies/dicom-images-train" --model "$out/bundle" --out "$out/results" || rc=$?

echo
"$bin/python" "$(dirname "$0")/demo_truth.py" "$out/results/worklist.csv" "$out/studies/metadata.csv" || rc=$?

# the most urgent study (first row of the worklist): its overlay is the one to look at first
top="$(sed -n 2p "$out/results/worklist.csv" 2>/dev/null | cut -d, -f10)"
overlay="$(find "$out/results/${top:-studies}" -name '*_overlay.png' 2>/dev/null | head -n 1)"
cat <<EOF

Demo outputs ($out/):
  worklist (most urgent first): $out/results/worklist.csv
  one record per image:         $out/results/results.jsonl
  per study (overlay PNG, mask PNG, DICOM SEG and SC): $out/results/studies/<StudyInstanceUID>/
  the most urgent overlay:      ${overlay:-none}
  the studies, with the true outlines: $out/contact_sheet.png
  the model bundle:             $out/bundle/card.json
The models are demo-sized (small preset, a few minutes of CPU training on synthetic data): not for patients.
EOF
exit "$rc"

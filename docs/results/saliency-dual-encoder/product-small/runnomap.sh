#!/bin/bash
# the same dual-encoder runs with the U-Net trained without the map loss (--cls-weight 1)
cd .
export OMP_NUM_THREADS=1
T=triage
D=bench
for s in 0 1 2; do
  echo "seed $s nomap saliency+fusion $(date -u +%T)"
  $T train saliency --data $D/train --out nomap-s$s --preset small --fold 0 --seed $s --cls-weight 1 --dual-encoder cls-s$s --cache CACHE --quiet
done
echo "bench $(date -u +%T)"
python -m training.saliency.dual_runs --runs sal-s0 sal-s1 sal-s2 --control nomap-s0 nomap-s1 nomap-s2 --test $D/test --out bench-control --cache CACHE
echo "end $(date -u +%T)"

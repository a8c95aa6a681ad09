#!/bin/bash
cd .
export OMP_NUM_THREADS=1
T=triage
D=bench
for s in 0 1 2; do
  echo "seed $s classifier $(date -u +%T)"
  $T train classifier --data $D/train --out cls-s$s --preset small --fold 0 --seed $s --cache CACHE --quiet
  echo "seed $s saliency+fusion $(date -u +%T)"
  $T train saliency --data $D/train --out sal-s$s --preset small --fold 0 --seed $s --dual-encoder cls-s$s --cache CACHE --quiet
done
echo "bench $(date -u +%T)"
python -m training.saliency.dual_runs --runs sal-s0 sal-s1 sal-s2 --test $D/test --out bench --cache CACHE
echo "end $(date -u +%T)"

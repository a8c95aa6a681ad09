#!/bin/bash
cd .
export OMP_NUM_THREADS=1
T=triage
D=bench
one() { s=$1
  rm -rf sal20-s$s; cp -r sal-s$s sal20-s$s; rm -rf sal20-s$s/model.json sal20-s$s/fusion
  $T train saliency --data $D/train --out sal20-s$s --preset small --fold 0 --seed $s --dual-encoder cls-s$s --fusion-epochs 20 --cache CACHE --quiet --resume
}
echo "start $(date -u +%T)"
one 0 & one 1 & wait
one 2
echo "bench $(date -u +%T)"
python -m training.saliency.dual_runs --runs sal20-s0 sal20-s1 sal20-s2 --test $D/test --out bench20 --cache CACHE
echo "end $(date -u +%T)"

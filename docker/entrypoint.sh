#!/bin/sh
# Entrypoint of the veripo images (docker/Dockerfile, docker/Dockerfile.cpu).
#
#   docker run IMAGE                        -> the image's CMD: python -m veripo.run output_dir=/runs
#   docker run IMAGE grpo.steps=2 ...       -> Hydra-style arguments (key=value, -m, --help) go to
#                                              python -m veripo.run, with output_dir=/runs unless given
#   docker run IMAGE ray start ... / bash   -> any other command runs as it is
#
# VERIPO_RAY_JOIN=HOST:PORT (the compose file's driver sets it): before the command, join that Ray cluster
# as a node offering no CPUs or GPUs, since a Ray driver must run on a node of its cluster, then wait up
# to VERIPO_RAY_WAIT_S seconds (default 600) until the head and VERIPO_RAY_WAIT_WORKERS worker nodes are up.
set -e

case "${1:-}" in
  *=*|-*)
    out=
    for arg in "$@"; do
      case "$arg" in output_dir=*) out=given ;; esac
    done
    [ -n "$out" ] || set -- "$@" "output_dir=${VERIPO_OUTPUT_DIR:-/runs}"
    set -- python -m veripo.run "$@"
    ;;
esac

if [ -n "${VERIPO_RAY_JOIN:-}" ]; then
  ray start --address="$VERIPO_RAY_JOIN" --num-cpus=0 --num-gpus=0 --disable-usage-stats
  python -c '
import os, sys, time

import ray

want = 2 + int(os.environ.get("VERIPO_RAY_WAIT_WORKERS") or 0)  # the head, the workers, this node
limit = float(os.environ.get("VERIPO_RAY_WAIT_S") or 600)
ray.init(address=os.environ["VERIPO_RAY_JOIN"], include_dashboard=False, log_to_driver=False)
start = time.time()
while True:
    alive = sum(1 for n in ray.nodes() if n["Alive"])
    if alive >= want:
        break
    if time.time() - start > limit:
        sys.exit(f"veripo: {alive} of {want} Ray nodes (the head, {want - 2} worker node(s), this driver) joined "
                 f"within {limit:.0f} s. Fix: read the worker logs: docker-compose logs ray-worker")
    time.sleep(2)
print(f"veripo: Ray cluster ready: {alive} nodes, {ray.cluster_resources()}", flush=True)
ray.shutdown()
'
fi

exec "$@"

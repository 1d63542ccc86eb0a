#!/usr/bin/env bash
# Issue 4's GPU checks in ONE command, for a CUDA machine with torch + triton and no ROS (the
# device tool's H100/H200: Python 3.12). Run from anywhere; logs and JSON go to $OUT (the
# device tool's result folder) or ./gpu_out:
#   * the GPU tests: Triton kernels compiled for CUDA against the torch reference, the device
#     frame path (CUDA graph, pinned buffers), the torch frame, the SGM matcher, the ray-cast;
#   * `geo-depth bench` (matcher stages, CUDA events, graph) at 1280x720 with 8 and 4 paths;
#   * `geo-depth bench --pipeline` of the node's frame path (DepthPipeline.process with the
#     calibrated sigma, CUDA graph) at 1280x720 and 640x480;
#   * the same with the DEM (--scene synth-georef: pose, Triton ray-cast, sigma points,
#     fusion) when rosbags, rasterio and pyproj import (carry their wheels otherwise);
#   * start-up: DepthPipeline.warm_up (Triton compile) and the first three frames' times.
# The DEM run needs wheels the GPU image lacks; fetch them here once (about 50 MB) and name
# .whl in the device tool's `carry`; this script installs them into /tmp/site:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl rasterio==1.4.4 pyproj==3.7.2 rosbags==0.11.9 \
#     transforms3d==0.4.2 affine cligj click-plugins apsw backports.zstd lz4 ruamel.yaml \
#     ruamel.yaml.clib
# Exit status: non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_out}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
rc=0
if compgen -G '.whl/*.whl' > /dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
"$py" - <<'EOF' | tee "$out/device.txt"
import torch, triton
print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
EOF
"$py" -m pytest -q -p no:cacheprovider -rs test/test_triton_kernels.py test/test_torch_frame.py \
    test/test_device_path.py test/test_sgm.py test/test_raycast.py 2>&1 | tee "$out/pytest.log" || rc=1
bench="$py -m geo_depth_node.tools.bench"
for paths in 8 4; do
    $bench --device cuda --size 1280x720 --disparities 128 --paths "$paths" --iters 50 --json \
        > "$out/bench_1280x720_p$paths.json" || rc=1
done
for size in 1280x720 640x480; do
    $bench --pipeline --device cuda --matcher sgm_torch --size "$size" --disparities 128 \
        --iters 50 --json > "$out/pipeline_$size.json" || rc=1
    $bench --pipeline --device cuda --matcher sgm_torch --size "$size" --disparities 128 \
        --iters 20 --set stereo.cuda_graph=false --json > "$out/pipeline_${size}_eager.json" || rc=1
done
if "$py" -c 'import rosbags, rasterio, pyproj' 2>/dev/null; then
    $bench --pipeline --device cuda --matcher sgm_torch --scene synth-georef --size 1280x720 \
        --disparities 128 --iters 8 --warmup 2 --json > "$out/pipeline_georef_1280x720.json" || rc=1
else
    echo 'rosbags / rasterio / pyproj missing: no --scene synth-georef run' | tee "$out/georef_skipped.txt"
fi
# start-up: DepthPipeline.warm_up (Triton compile, as the node does at start) and the first
# two frames at 1280x720 (the first also captures the CUDA graph)
"$py" - > "$out/first_frames.json" <<'EOF2' || rc=1
import json, time
import numpy as np
from geo_depth_node.core.camera import CameraModel
from geo_depth_node.core.cloud import pack_points
from geo_depth_node.core.pipeline import DepthPipeline
from geo_depth_node.core.scene import render_scene
t = time.perf_counter()
pl = DepthPipeline({'stereo.matcher': 'sgm_torch', 'stereo.device': 'cuda'})
made = time.perf_counter() - t
took = pl.warm_up()
s = render_scene(1280, 720, seed=0)
models = [CameraModel.from_arrays(1280, 720, s.K, np.zeros(5), np.eye(3), P)
          for P in (s.P_left, s.P_right)]
frames = []
for _ in range(3):
    t = time.perf_counter()
    pack_points(pl.process(s.left, s.right, *models))
    frames.append(round((time.perf_counter() - t) * 1e3, 2))
print(json.dumps({'pipeline_s': round(made, 2), 'warm_up_s': took, 'frames_ms': frames}))
EOF2
for f in "$out"/*.json; do echo "== $f"; cat "$f"; echo; done
exit $rc

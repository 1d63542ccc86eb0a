"""The torch frame path of :class:`core.pipeline.DepthPipeline` (matcher ``sgm_torch``).

Per frame, on the matcher's device::

    host images --(1 host->device copy)--> match -> calibrated sigma -> triangulate -> pack
                                                      --(1 device->host copy)--> FrameResult

The device part ("body") writes ONE flat uint8 buffer: the packed cloud (H*W*24 bytes,
``contract.POINT_DTYPE``) followed by four (H, W) float32 images (depth, depth sigma,
disparity, disparity sigma). The host views of the FrameResult point into the downloaded
copy of that buffer (no per-field copies).

On CUDA (``stereo.cuda_graph``, default on) the body is captured once per image size,
calibration and mask layout as a CUDA graph and replayed per frame: the ~25 kernel launches
then cost one launch, and the frame reads its images from static input buffers. The host
side of both copies is page-locked (pinned): the images are staged in a pinned buffer, and
the result lands in one of a small ring of pinned buffers (:class:`HostRing`), each reused
only when no FrameResult view of an earlier frame still refers to it. A capture that fails
falls back to eager launches, logged once.

With DEM sources the frame dict of the stereo part goes through the DEM prior and fusion on
the device (core.georef_torch: ray-cast, sigma points, height gate, fusion, ENU output) before
it is packed: still one upload and one download; only the pose comes from the host. The
graph then covers the stereo part; the fusion runs eagerly.

On the CPU the same body runs eagerly (the tests and a GPU-less machine).
"""
from __future__ import annotations

import logging
import weakref
from typing import Any, Callable, Mapping

import numpy as np

from .camera import StereoModel
from .contract import POINT_DTYPE

_LOG = logging.getLogger(__name__)

#: float32 (H, W) images after the packed cloud in the device buffer, in this order.
IMAGE_NAMES = ('depth', 'depth_sigma', 'disparity', 'sigma_disparity')


class HostRing:
    """Host buffers for the device -> host copy, reused once nothing refers to them.

    Each :meth:`acquire` hands out a 1-D uint8 numpy array over a (pinned, on CUDA) torch
    buffer. The ring keeps only a weak reference to the array: as long as the caller, or any
    numpy view of it (views keep their base alive), is alive, the buffer is busy; once all are
    gone it is reused. Page-locking memory is slow (milliseconds), so buffers are kept; at most
    ``max_buffers`` of them; while all are referenced, a transient pageable buffer is used.

    Args:
        pin: allocate page-locked memory (CUDA); False for the CPU path and tests.
        max_buffers: most pinned buffers kept.
    """

    def __init__(self, pin: bool, max_buffers: int = 4) -> None:
        if max_buffers < 1:
            raise ValueError(f'max_buffers must be >= 1, got {max_buffers}')
        self.pin = bool(pin)
        self.max_buffers = int(max_buffers)
        self._slots: list[tuple[Any, weakref.ReferenceType]] = []
        self.allocations = 0  # buffers allocated (pinned or not); for tests and diagnostics

    def acquire(self, nbytes: int) -> tuple[Any, np.ndarray]:
        """A free buffer of ``nbytes``: (torch uint8 tensor, numpy uint8 array over it).

        The tensor is the target of the copy; the array (and views of it) is what the caller
        keeps. Buffers of another size are dropped.
        """
        import torch

        self._slots = [(t, ref) for t, ref in self._slots if t.numel() == nbytes]
        for i, (t, ref) in enumerate(self._slots):
            if ref() is None:
                arr = t.numpy()
                self._slots[i] = (t, weakref.ref(arr))
                return t, arr
        keep = len(self._slots) < self.max_buffers
        t = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin and keep)
        self.allocations += 1
        arr = t.numpy()
        if keep:
            self._slots.append((t, weakref.ref(arr)))
        else:
            _LOG.debug('all %d result buffers are still referenced; using a transient one',
                       self.max_buffers)
        return t, arr


class DeviceFramePath:
    """Run the device frame path for one matcher, sigma model and parameter set.

    Args:
        params: validated parameters (core.params).
        matcher: a ``core.sgm.TorchSGMMatcher`` (its device is the path's device).
        sigma_model: the calibrated ``core.sigma_model.SigmaModel`` or None (constant model).
        use_graph: capture and replay CUDA graphs (ignored off CUDA).
        use_triton: Triton kernels for triangulation / packing (None = on CUDA with triton).
    """

    def __init__(self, params: Mapping[str, Any], matcher: Any, sigma_model: Any = None,
                 use_graph: bool = True, use_triton: bool | None = None) -> None:
        from .torch_frame import TorchFrame

        self.params = params
        self.matcher = matcher
        self.sigma_model = sigma_model
        self.device = matcher.device
        self.cuda = self.device.type == 'cuda'
        self.use_graph = bool(use_graph) and self.cuda
        self.frame = TorchFrame(params, self.device, use_triton=use_triton)
        self.ring = HostRing(pin=self.cuda)
        self._staging: Any = None  # pinned (K, H, W) uint8 host staging of the inputs
        self._static_in: Any = None  # (K, H, W) uint8 device input buffer
        self._graph: Any = None
        self._graph_out: Any = None
        self._graph_key: tuple | None = None
        self.graph_failed = False  # capture failed once: eager from then on (logged)
        self.captures = 0  # graphs captured (a new one per size / calibration / mask layout)

    # -- the device body -------------------------------------------------------------------
    def stereo_body(self, inputs: Any, stereo: StereoModel) -> dict[str, Any]:
        """(K, H, W) uint8 device tensor (left, right[, left valid, right valid]) -> the frame
        dict of ``TorchFrame.triangulate`` plus 'disparity': matching, calibrated sigma,
        triangulation. No host sync."""
        import torch

        left, right = inputs[0], inputs[1]
        lv = rv = None
        if inputs.shape[0] == 4:
            lv, rv = inputs[2].view(torch.bool), inputs[3].view(torch.bool)
        m = self.matcher.match_tensors(left, right, lv, rv)
        sigma_d = None
        if self.sigma_model is not None:
            sigma_d = self.sigma_model.sigma_d_torch(m, m['disparity'])
        tri = self.frame.triangulate(m['disparity'], m['lr_diff'], m['flags'], stereo, sigma_d)
        tri['disparity'] = m['disparity']
        return tri

    def finish(self, tri: dict[str, Any]) -> Any:
        """Frame dict -> flat uint8 device buffer: packed cloud, then the :data:`IMAGE_NAMES`
        images."""
        import torch

        packed = self.frame.pack(tri)
        images = torch.stack([tri[name] for name in IMAGE_NAMES])
        return torch.cat([packed.reshape(-1), images.view(torch.uint8).reshape(-1)])

    def body(self, inputs: Any, stereo: StereoModel) -> Any:
        """:meth:`stereo_body` then :meth:`finish` (the whole frame without DEM priors)."""
        return self.finish(self.stereo_body(inputs, stereo))

    # -- per frame ----------------------------------------------------------------------------
    def _stage(self, arrays: list[np.ndarray]) -> Any:
        """Copy the host images into the (pinned) staging buffer; returns it (K, H, W)."""
        import torch

        shape = (len(arrays), *arrays[0].shape)
        if self._staging is None or tuple(self._staging.shape) != shape:
            self._staging = torch.empty(shape, dtype=torch.uint8, pin_memory=self.cuda)
        host = self._staging.numpy()
        for i, a in enumerate(arrays):
            np.copyto(host[i], a.view(np.uint8) if a.dtype == np.bool_ else a)
        return self._staging

    def _capture(self, fn: Callable[[Any, StereoModel], Any], stereo: StereoModel) -> None:
        """Warm up on a side stream, then capture ``fn`` (:meth:`body` or :meth:`stereo_body`)
        on the static inputs."""
        import torch

        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # Triton JIT, allocator pools, cached constants
                fn(self._static_in, stereo)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn(self._static_in, stereo)
        self._graph, self._graph_out = graph, out
        self.captures += 1

    def run(self, left: np.ndarray, right: np.ndarray, left_valid: np.ndarray | None,
            right_valid: np.ndarray | None, stereo: StereoModel,
            timings: dict[str, float], clock: Callable[[], float],
            georef: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """One frame; returns the host views: 'cloud' (H, W) POINT_DTYPE, 'points' (H, W, 3)
        float32 (x y z of the cloud, a strided view), and the :data:`IMAGE_NAMES` images.

        Args:
            left, right: (H, W) uint8 rectified images.
            left_valid, right_valid: optional (H, W) bool image-data masks (both or neither).
            stereo: the rectified pair.
            timings: stage -> ms, filled in ('upload', 'match_triangulate_pack' or, with
                ``georef``, 'match_triangulate' + its stages + 'pack_download', 'host_views').
                Host clock: on CUDA the kernels run asynchronously until the first host sync,
                so 'match_triangulate' is mostly launch time and the GPU time of the stereo
                part lands in the next stage that waits (the whole frame is exact).
            clock: seconds (time.perf_counter).
            georef: optional callable that fuses the DEM priors into the frame dict on the
                device, in place (core.georef_torch); the graph then covers the stereo part
                and the fusion and packing run eagerly (the ray-cast has host syncs).
        """
        import torch

        h, w = left.shape
        arrays = [left, right] + ([left_valid, right_valid] if left_valid is not None else [])
        t = clock()
        staging = self._stage(arrays)
        fn = self.body if georef is None else self.stereo_body
        key = (tuple(staging.shape), self.frame.geometry_key(stereo), georef is None)
        graph = self.use_graph and not self.graph_failed
        if graph:
            if self._static_in is None or tuple(self._static_in.shape) != tuple(staging.shape):
                self._static_in = torch.empty(tuple(staging.shape), dtype=torch.uint8,
                                              device=self.device)
            self._static_in.copy_(staging, non_blocking=True)
            inputs = self._static_in
        else:
            inputs = staging.to(self.device, non_blocking=True)
        timings['upload'] = (clock() - t) * 1e3
        t = clock()
        out = None
        if graph:
            if self._graph_key != key:
                try:
                    self._capture(fn, stereo)
                    self._graph_key = key
                except RuntimeError as exc:  # e.g. an op that cannot be captured
                    self.graph_failed = True
                    self._graph = self._graph_out = self._graph_key = None
                    _LOG.warning('CUDA graph capture of the frame path failed (%s); running '
                                 'the kernels eagerly from now on', exc)
            if self._graph is not None:
                self._graph.replay()
                out = self._graph_out
        if out is None:
            out = fn(inputs, stereo)
        if georef is not None:
            frame = dict(out)  # the graph's own output dict stays as captured
            timings['match_triangulate'] = (clock() - t) * 1e3
            georef(frame)
            t = clock()
            out = self.finish(frame)
        if self.cuda:  # the one device -> host copy, into a free pinned buffer
            host_t, host = self.ring.acquire(out.numel())
            host_t.copy_(out, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
        else:
            host = out.numpy()
        timings['match_triangulate_pack' if georef is None else 'pack_download'] = (clock() - t) * 1e3
        t = clock()
        n = h * w * POINT_DTYPE.itemsize
        cloud = host[:n].view(POINT_DTYPE).reshape(h, w)
        img = host[n:].view(np.float32).reshape(len(IMAGE_NAMES), h, w)
        # zero-copy view of x, y, z (the first 12 of each point's 24 bytes)
        pts = np.ndarray((h, w, 3), dtype=np.float32, buffer=host,
                         strides=(w * POINT_DTYPE.itemsize, POINT_DTYPE.itemsize, 4))
        views = {'cloud': cloud, 'points': pts}
        views.update({name: img[i] for i, name in enumerate(IMAGE_NAMES)})
        timings['host_views'] = (clock() - t) * 1e3
        return views

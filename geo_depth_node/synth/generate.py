"""Generate a synthetic world: rosbag2 + DEM GeoTIFF + truth + params (``geo-depth synth``).

Output directory layout::

    OUT/bag/            rosbag2 (mcap, or sqlite3 with --storage sqlite3), topics below
    OUT/dem.tif         the "surveyed" DEM: float32 GeoTIFF in the datum's UTM zone,
                        heights in ``dem_vertical_datum`` (EGM96 by default), nodata -9999
    OUT/truth.npz       per-frame truth (format below)
    OUT/world.json      the options, the terrain terms, objects, changes, DEM error statistics
    OUT/params.yaml     a params file for the node (DEM source + extrinsics + datum)

Bag topics (frame ids in brackets):
    /left/image_rect, /right/image_rect      sensor_msgs/Image mono8 (image_raw with --raw)
    /left/camera_info, /right/camera_info    sensor_msgs/CameraInfo   [left|right_camera_optical_frame]
    /imu/data                                sensor_msgs/Imu          [imu_link]
    /gnss/fix                                sensor_msgs/NavSatFix    [gnss_link]
    /tf_static                               tf2_msgs/TFMessage: base_link -> imu_link, gnss_link,
                                             left_camera_optical_frame; left -> right optical
    /ground_truth/odometry                   nav_msgs/Odometry map(ENU at the datum) -> base_link,
                                             50 Hz, TRUTH (never used by the node)

truth.npz (F frames, (H, W) images, rows aligned with the bag's image messages):
    stamps_ns (F,) int64; depth (F, H, W) float32 Z along the LEFT rectified optical axis, m,
    +inf = sky; disparity (F, H, W) float32 = fx * B / depth; surface (F, H, W) uint16 (0 sky,
    1 terrain, 2+k object k of world.json); textureless (F, H, W) bool; occluded (F, H, W) bool
    (left pixel hidden from the right camera); T_enu_left, T_enu_base (F, 4, 4) float64 (maps
    points of that frame to ENU); K (3, 3); P_left, P_right (3, 4); D (5,) raw distortion;
    baseline_m; datum (3,) lat, lon, h (ellipsoidal); imu_t, gnss_t (N,) s; imu_gyro_bias,
    imu_accel_bias (3,); traj_t (M,) s, traj_p (M, 3), traj_q_xyzw (M, 4) base_link in ENU at
    the IMU rate; gnss_p_enu_true (N, 3) antenna; gnss_noise_enu (N, 3); t0_ns (the stamp of t=0).
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import SynthConfig
from .geo import LocalFrame
from .motion import (GnssSamples, ImuSamples, Mounts, Trajectory, matrix_to_quat_xyzw,
                     simulate_gnss, simulate_imu, transform)
from .render import CameraView, WorldRenderer, occlusion_mask, pixel_rays, render_view
from .world import (Bump, DemRaster, Terrain, WorldObject, grid_axis, make_dem, make_waves,
                    terrain_mesh_arrays, world_summary)

_LOG = logging.getLogger(__name__)

START_NS = 1_700_000_000 * 1_000_000_000  # stamp of t = 0 (fixed: deterministic bags)
LEFT_FRAME = 'left_camera_optical_frame'
RIGHT_FRAME = 'right_camera_optical_frame'
BASE_FRAME, IMU_FRAME, GNSS_FRAME, MAP_FRAME = 'base_link', 'imu_link', 'gnss_link', 'map'
TOPICS = {
    'left_image': ('/left/image_rect', 'sensor_msgs/msg/Image'),
    'left_info': ('/left/camera_info', 'sensor_msgs/msg/CameraInfo'),
    'right_image': ('/right/image_rect', 'sensor_msgs/msg/Image'),
    'right_info': ('/right/camera_info', 'sensor_msgs/msg/CameraInfo'),
    'imu': ('/imu/data', 'sensor_msgs/msg/Imu'),
    'gnss': ('/gnss/fix', 'sensor_msgs/msg/NavSatFix'),
    'tf_static': ('/tf_static', 'tf2_msgs/msg/TFMessage'),
    'odom': ('/ground_truth/odometry', 'nav_msgs/msg/Odometry'),
}
_ODOM_RATE_HZ = 50.0
_LOOKAHEAD_M = 70.0


class World:
    """A built (not yet rendered) world: terrain, objects, trajectory, sensors, DEM."""

    def __init__(self, cfg: SynthConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        seeds = np.random.SeedSequence(cfg.seed).spawn(8)
        r_terrain, r_layout, r_dem, r_imu, r_gnss, r_tex, self._r_img, _ = (
            np.random.default_rng(s) for s in seeds)
        self.frame = LocalFrame(cfg.datum_lat_deg, cfg.datum_lon_deg, cfg.datum_height_m)
        waves, window = make_waves(cfg, r_terrain)
        # Lift the terrain so that the start of the route is at z = 0 (datum on the ground).
        self.terrain = Terrain(waves, [], window)
        z0 = float(self.terrain.height(0.0, 0.0))
        self.terrain.waves.append(_constant_wave(-z0))
        self.mounts = Mounts.from_config(cfg)
        self.trajectory = Trajectory(cfg, self.terrain, (0.0, 0.0),
                                     float(r_layout.uniform(0, 2 * math.pi)))
        self.frame_t = np.array(cfg.frame_times_s())
        self._layout(r_layout)
        xy = self._route_xy(np.linspace(0.0, self._s_end(), 200))
        lo, hi = xy.min(axis=0) - 150.0, xy.max(axis=0) + 150.0
        self.xs = grid_axis(lo[0], hi[0], cfg.extent_m, 0.5)
        self.ys = grid_axis(lo[1], hi[1], cfg.extent_m, 0.5)
        self._r_dem = r_dem
        self.imu: ImuSamples = simulate_imu(cfg, self.trajectory, self.mounts, r_imu)
        self.gnss: GnssSamples = simulate_gnss(cfg, self.trajectory, self.mounts, self.frame,
                                               r_gnss)
        self._tex_seed = int(r_tex.integers(2 ** 63))
        self._dem: DemRaster | None = None

    @property
    def dem(self) -> DemRaster:
        """The surveyed DEM raster (built on first use: needs a ray cast of the survey)."""
        if self._dem is None:
            self._dem = make_dem(self.cfg, self.frame, self.survey_renderer(), self._r_dem,
                                 self.hole_centres)
        return self._dem

    # -- layout -----------------------------------------------------------------------------
    def _s_end(self) -> float:
        return float(self.trajectory.arc_length(self.frame_t[-1])) + _LOOKAHEAD_M

    def _route_xy(self, s: np.ndarray) -> np.ndarray:
        tr = self.trajectory
        psi = tr.psi0 + np.asarray(s) / tr.radius
        return tr.centre + tr.radius * np.stack([np.sin(psi), -np.cos(psi)], axis=-1)

    def _beside_route(self, s: float, lateral: float) -> tuple[float, float]:
        """ENU (x, y) at arc length s, ``lateral`` metres to the left of the route."""
        tr = self.trajectory
        psi = tr.psi0 + s / tr.radius
        p = self._route_xy(np.array(s))
        return float(p[0] - lateral * math.sin(psi)), float(p[1] + lateral * math.cos(psi))

    def _layout(self, rng: np.random.Generator) -> None:
        cfg = self.cfg
        s0 = float(self.trajectory.arc_length(self.frame_t[0]))
        s1 = float(self.trajectory.arc_length(self.frame_t[-1]))
        route = self._route_xy(np.linspace(0.0, s1 + 5.0, 400))
        taken: list[tuple[float, float, float]] = []  # (x, y, radius) keep-out circles

        def free(x: float, y: float, r: float, route_clear: float) -> bool:
            if np.min(np.hypot(route[:, 0] - x, route[:, 1] - y)) < r + route_clear:
                return False
            return all(math.hypot(x - a, y - b) > r + c + 1.0 for a, b, c in taken)

        def place(r: float, ahead: tuple[float, float], lat: tuple[float, float],
                  route_clear: float, tries: int = 200) -> tuple[float, float] | None:
            for _ in range(tries):
                s = s0 + rng.uniform(*ahead)
                side = 1.0 if rng.uniform() < 0.5 else -1.0
                x, y = self._beside_route(s, side * rng.uniform(*lat))
                if free(x, y, r, route_clear):
                    taken.append((x, y, r))
                    return x, y
            return None

        changes: list[Bump] = []
        if cfg.changes:
            for name, radius, dz, ahead in (('pit', 5.0, -1.5, (22.0, 32.0)),
                                            ('mound', 6.0, 1.2, (36.0, 48.0))):
                xy = place(radius, ahead, (radius + 3.0, radius + 7.0), 1.5)
                if xy is not None:
                    changes.append(Bump(xy[0], xy[1], radius, dz, name))
        self.terrain.changes = changes

        objects: list[WorldObject] = []

        def box(xy: tuple[float, float], in_survey: bool, textureless: bool, alb: float) -> None:
            sx, sy, sz = (float(rng.uniform(4.0, 9.0)), float(rng.uniform(4.0, 9.0)),
                          float(rng.uniform(3.0, 8.0)))
            yaw = float(rng.uniform(0, math.pi))
            objects.append(self._grounded('box', xy, (sx, sy, sz), yaw, in_survey, textureless,
                                          alb, 0.5 * math.hypot(sx, sy)))

        if cfg.changes:
            xy = place(6.5, (18.0, 30.0), (10.0, 14.0), 1.0)
            if xy is not None:
                box(xy, in_survey=False, textureless=False, alb=150.0)  # built after the survey
        wall_done = False
        for _ in range(cfg.objects):
            kind = rng.choice(['box', 'tree', 'pole'], p=[0.4, 0.35, 0.25])
            if kind == 'box':
                xy = place(6.5, (10.0, _LOOKAHEAD_M), (9.0, 28.0), 1.0)
                if xy is not None:
                    box(xy, True, not wall_done, float(rng.uniform(90.0, 160.0)))
                    wall_done = True
            elif kind == 'tree':
                r = float(rng.uniform(1.0, 2.0))
                xy = place(r, (6.0, _LOOKAHEAD_M), (4.0, 20.0), 1.0)
                if xy is not None:
                    objects.append(self._grounded('tree', xy, (r, 0.0, float(rng.uniform(4, 8))),
                                                  0.0, True, False, 75.0, r))
            else:
                xy = place(0.3, (5.0, _LOOKAHEAD_M), (2.5, 9.0), 1.0)
                if xy is not None:
                    objects.append(self._grounded('pole', xy, (0.08, 0.0,
                                                               float(rng.uniform(3.5, 6.0))),
                                                  0.0, True, False, 60.0, 0.3))
        self.objects = objects

        patches = []
        for _ in range(cfg.textureless_patches):
            r = float(rng.uniform(1.2, 2.5))
            xy = place(r, (7.0, 25.0), (0.0, 4.0), -1.0)  # may cover the route itself
            if xy is not None:
                patches.append((xy[0], xy[1], r))
        self.patches = patches

        self.hole_centres = []
        if cfg.dem_holes:
            self.hole_centres.append(self._beside_route(s0 + float(rng.uniform(45.0, 65.0)),
                                                        float(rng.uniform(-10.0, 10.0))))
            for _ in range(cfg.dem_holes - 1):
                a = float(rng.uniform(0, 2 * math.pi))
                d = float(rng.uniform(150.0, 0.8 * cfg.dem_extent_m))
                self.hole_centres.append((d * math.cos(a), d * math.sin(a)))

    def _grounded(self, kind: str, xy: tuple[float, float], size: tuple[float, float, float],
                  yaw: float, in_survey: bool, textureless: bool, albedo: float,
                  radius: float) -> WorldObject:
        a = np.linspace(0, 2 * math.pi, 12, endpoint=False)
        xs = np.concatenate([[xy[0]], xy[0] + radius * np.cos(a)])
        ys = np.concatenate([[xy[1]], xy[1] + radius * np.sin(a)])
        z0 = float(np.min(self.terrain.height(xs, ys))) - 0.3
        return WorldObject(kind, xy[0], xy[1], z0, size, yaw, in_survey, textureless, albedo)

    # -- cameras ----------------------------------------------------------------------------
    @property
    def K(self) -> np.ndarray:
        """Intrinsics of both cameras (3, 3): square pixels, principal point at the centre."""
        c = self.cfg
        return np.array([[c.fx, 0.0, (c.width - 1) / 2.0], [0.0, c.fx, (c.height - 1) / 2.0],
                         [0.0, 0.0, 1.0]])

    @property
    def D(self) -> np.ndarray:
        """plumb_bob distortion (k1, k2, p1, p2, k3) of the raw images (zeros unless raw)."""
        return np.array([self.cfg.k1, self.cfg.k2, 0.0, 0.0, 0.0]) if self.cfg.raw \
            else np.zeros(5)

    def projection(self, right: bool) -> np.ndarray:
        """Rectified projection P (3, 4), ROS convention Tx = -fx * B for the right camera."""
        p = np.zeros((3, 4))
        p[:, :3] = self.K
        if right:
            p[0, 3] = -self.cfg.fx * self.cfg.baseline_m
        return p

    def camera_pose(self, t: float, right: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(R_enu_cam, p_enu_cam) of the left (or right) optical frame at time t (s)."""
        m = self.mounts.base_left @ (self.mounts.left_right if right else np.eye(4))
        r, p = self.trajectory.frame_pose(np.array(t), m)
        return r, p

    def renderer(self) -> WorldRenderer:
        """The Open3D scene of the true world (builds the mesh; ~1 s). Deterministic."""
        verts, tris = terrain_mesh_arrays(self.terrain, self.xs, self.ys)
        return WorldRenderer(verts, tris, self.objects, self.terrain, self.patches,
                             np.random.default_rng(self._tex_seed))

    def survey_renderer(self) -> WorldRenderer:
        """The world as surveyed: terrain without the changes [+ surveyed objects for a DSM]."""
        verts, tris = terrain_mesh_arrays(self.terrain, self.xs, self.ys, surveyed=True)
        objs = [o for o in self.objects if o.in_survey] if self.cfg.dem_kind == 'dsm' else []
        return WorldRenderer(verts, tris, objs, self.terrain, [], np.random.default_rng(0))


def _constant_wave(z: float):
    from .world import Wave

    # sin(0*x + 0*y + pi/2) = 1 everywhere: a constant term with zero gradient
    return Wave(z, 0.0, 0.0, math.pi / 2, 'sin', True)


def render_frames(world: World, renderer: WorldRenderer | None = None,
                  progress: bool = False) -> list[dict[str, Any]]:
    """Render every frame: images (rect or raw) and the rectified truth. One dict per frame."""
    cfg = world.cfg
    ren = renderer or world.renderer()
    K = world.K
    rect_rays = pixel_rays(cfg.width, cfg.height, K)
    image_rays = pixel_rays(cfg.width, cfg.height, K, world.D) if cfg.raw else rect_rays
    ss_rays = None
    if cfg.supersample > 1:
        n = cfg.supersample
        offs = [((i + 0.5) / n - 0.5, (j + 0.5) / n - 0.5) for j in range(n) for i in range(n)]
        ss_rays = [pixel_rays(cfg.width, cfg.height, K, world.D if cfg.raw else None, o)
                   for o in offs]
    seeds = np.random.SeedSequence(int(world._r_img.integers(2 ** 63))).spawn(2 * cfg.frames)
    frames = []
    for i, t in enumerate(world.frame_t):
        t0 = time.perf_counter()
        rl, pl = world.camera_pose(float(t))
        rr, pr = world.camera_pose(float(t), right=True)
        left = render_view(ren, rl, pl, image_rays, cfg.fx, cfg.noise_dn,
                           np.random.default_rng(seeds[2 * i]), ss_rays)
        right = render_view(ren, rr, pr, image_rays, cfg.fx, cfg.noise_dn,
                            np.random.default_rng(seeds[2 * i + 1]), ss_rays)
        truth: CameraView = left
        if cfg.raw:  # truth on the rectified grid: cast the ideal pinhole rays too
            truth = render_view(ren, rl, pl, rect_rays, cfg.fx, 0.0, np.random.default_rng(0))
        occ = occlusion_mask(ren, truth.points, pr)
        frames.append({
            't': float(t), 'left': left.image, 'right': right.image, 'depth': truth.depth,
            'surface': truth.surface, 'textureless': truth.textureless, 'occluded': occ,
            'T_enu_left': transform(rl, pl), 'T_enu_base': transform(*world.trajectory.pose(
                np.array(float(t))))})
        if progress:
            _LOG.info('frame %d/%d rendered in %.2f s', i + 1, cfg.frames,
                      time.perf_counter() - t0)
    return frames


# -- bag ------------------------------------------------------------------------------------
def _stamp(ts, t_s: float):
    ns = START_NS + int(round(t_s * 1e9))
    return ns, ts.types['builtin_interfaces/msg/Time'](sec=ns // 1_000_000_000,
                                                       nanosec=ns % 1_000_000_000)


def _header(ts, t_s: float, frame_id: str):
    ns, stamp = _stamp(ts, t_s)
    return ns, ts.types['std_msgs/msg/Header'](stamp=stamp, frame_id=frame_id)


def _vec3(ts, v):
    return ts.types['geometry_msgs/msg/Vector3'](x=float(v[0]), y=float(v[1]), z=float(v[2]))


def _quat(ts, q):
    return ts.types['geometry_msgs/msg/Quaternion'](x=float(q[0]), y=float(q[1]), z=float(q[2]),
                                                    w=float(q[3]))


def _tf(ts, t_s: float, parent: str, child: str, m: np.ndarray):
    _, hdr = _header(ts, t_s, parent)
    return ts.types['geometry_msgs/msg/TransformStamped'](
        header=hdr, child_frame_id=child,
        transform=ts.types['geometry_msgs/msg/Transform'](
            translation=_vec3(ts, m[:3, 3]), rotation=_quat(ts, matrix_to_quat_xyzw(m[:3, :3]))))


def bag_messages(world: World, frames: list[dict[str, Any]]) -> list[tuple[int, str, Any]]:
    """(stamp_ns, topic key, rosbags message) for everything in the bag, in time order."""
    from ..tools.scene_bag import camera_info_message, image_message, kilted_typestore

    ts = kilted_typestore()
    cfg = world.cfg
    out: list[tuple[int, int, str, Any]] = []
    order = {k: i for i, k in enumerate(TOPICS)}

    def add(ns: int, key: str, msg: Any) -> None:
        out.append((ns, order[key], key, msg))

    m = world.mounts
    add(START_NS, 'tf_static', ts.types['tf2_msgs/msg/TFMessage'](transforms=[
        _tf(ts, 0.0, BASE_FRAME, IMU_FRAME, m.base_imu),
        _tf(ts, 0.0, BASE_FRAME, GNSS_FRAME, m.base_gnss),
        _tf(ts, 0.0, BASE_FRAME, LEFT_FRAME, m.base_left),
        _tf(ts, 0.0, LEFT_FRAME, RIGHT_FRAME, m.left_right)]))
    Imu = ts.types['sensor_msgs/msg/Imu']
    imu = world.imu
    for k in range(imu.t.size):
        ns, hdr = _header(ts, float(imu.t[k]), IMU_FRAME)
        add(ns, 'imu', Imu(header=hdr, orientation=_quat(ts, imu.q_xyzw[k]),
                           orientation_covariance=imu.orientation_cov.reshape(9).copy(),
                           angular_velocity=_vec3(ts, imu.gyro[k]),
                           angular_velocity_covariance=imu.gyro_cov.reshape(9).copy(),
                           linear_acceleration=_vec3(ts, imu.accel[k]),
                           linear_acceleration_covariance=imu.accel_cov.reshape(9).copy()))
    Fix = ts.types['sensor_msgs/msg/NavSatFix']
    Status = ts.types['sensor_msgs/msg/NavSatStatus']
    g = world.gnss
    for k in range(g.t.size):
        ns, hdr = _header(ts, float(g.t[k]), GNSS_FRAME)
        add(ns, 'gnss', Fix(header=hdr, status=Status(status=int(g.status[k]), service=1),
                            latitude=float(g.lat[k]), longitude=float(g.lon[k]),
                            altitude=float(g.alt[k]),
                            position_covariance=g.cov[k].reshape(9).copy(),
                            position_covariance_type=int(g.cov_type[k])))
    Odom = ts.types['nav_msgs/msg/Odometry']
    t_odom = np.arange(int(cfg.duration_s * _ODOM_RATE_HZ) + 1) / _ODOM_RATE_HZ
    r, p, v, _, w = world.trajectory.kinematics(t_odom, np.eye(4))
    q = matrix_to_quat_xyzw(r)
    for k in range(t_odom.size):
        ns, hdr = _header(ts, float(t_odom[k]), MAP_FRAME)
        pose = ts.types['geometry_msgs/msg/Pose'](
            position=ts.types['geometry_msgs/msg/Point'](x=float(p[k, 0]), y=float(p[k, 1]),
                                                         z=float(p[k, 2])),
            orientation=_quat(ts, q[k]))
        v_body = r[k].T @ v[k]
        twist = ts.types['geometry_msgs/msg/Twist'](linear=_vec3(ts, v_body),
                                                    angular=_vec3(ts, w[k]))
        add(ns, 'odom', Odom(
            header=hdr, child_frame_id=BASE_FRAME,
            pose=ts.types['geometry_msgs/msg/PoseWithCovariance'](pose=pose,
                                                                 covariance=np.zeros(36)),
            twist=ts.types['geometry_msgs/msg/TwistWithCovariance'](twist=twist,
                                                                   covariance=np.zeros(36))))
    K = world.K
    for f in frames:
        ns, _ = _stamp(ts, f['t'])
        for side, frame_id, right in (('left', LEFT_FRAME, False), ('right', RIGHT_FRAME, True)):
            add(ns, f'{side}_info', camera_info_message(ts, ns, frame_id, cfg.width, cfg.height, K,
                                                        world.projection(right), D=world.D))
            add(ns, f'{side}_image', image_message(ts, ns, frame_id, f[side]))
    out.sort(key=lambda e: (e[0], e[1]))
    return [(ns, key, msg) for ns, _, key, msg in out]


def image_topic(cfg: SynthConfig, side: str) -> str:
    """The image topic of one camera (image_rect, or image_raw for --raw)."""
    return f'/{side}/image_raw' if cfg.raw else f'/{side}/image_rect'


def write_bag(world: World, frames: list[dict[str, Any]], bag_dir: Path) -> dict[str, int]:
    """Write the rosbag2; returns message counts per topic."""
    from ..tools.scene_bag import kilted_typestore, new_bag_writer

    ts = kilted_typestore()
    counts: dict[str, int] = {}
    topics = dict(TOPICS)
    for side in ('left', 'right'):
        topics[f'{side}_image'] = (image_topic(world.cfg, side), TOPICS[f'{side}_image'][1])
    with new_bag_writer(bag_dir, world.cfg.storage) as writer:
        conns = {}
        for key, (topic, typ) in topics.items():
            if key == 'tf_static':
                from ..tools.bag_io import transient_local_qos

                conns[key] = writer.add_connection(topic, typ, typestore=ts,
                                                   offered_qos_profiles=transient_local_qos())
            else:
                conns[key] = writer.add_connection(topic, typ, typestore=ts)
        for ns, key, msg in bag_messages(world, frames):
            writer.write(conns[key], ns, bytes(ts.serialize_cdr(msg, topics[key][1])))
            counts[topics[key][0]] = counts.get(topics[key][0], 0) + 1
    return counts


# -- truth, params, everything -------------------------------------------------------------
def write_truth(world: World, frames: list[dict[str, Any]], path: Path) -> None:
    """Write truth.npz (format in the module docstring)."""
    cfg = world.cfg
    depth = np.stack([f['depth'] for f in frames])
    with np.errstate(divide='ignore'):
        disparity = (cfg.fx * cfg.baseline_m / depth).astype(np.float32)
    traj_r, traj_p = world.trajectory.pose(world.imu.t)
    np.savez_compressed(
        path,
        stamps_ns=np.array([START_NS + int(round(f['t'] * 1e9)) for f in frames], np.int64),
        depth=depth, disparity=disparity,
        surface=np.stack([f['surface'] for f in frames]),
        textureless=np.stack([f['textureless'] for f in frames]),
        occluded=np.stack([f['occluded'] for f in frames]),
        T_enu_left=np.stack([f['T_enu_left'] for f in frames]),
        T_enu_base=np.stack([f['T_enu_base'] for f in frames]),
        K=world.K, P_left=world.projection(False), P_right=world.projection(True), D=world.D,
        baseline_m=np.float64(cfg.baseline_m),
        datum=np.array([cfg.datum_lat_deg, cfg.datum_lon_deg, cfg.datum_height_m]),
        imu_t=world.imu.t, gnss_t=world.gnss.t, imu_gyro_bias=world.imu.gyro_bias,
        imu_accel_bias=world.imu.accel_bias, traj_t=world.imu.t, traj_p=traj_p,
        traj_q_xyzw=matrix_to_quat_xyzw(traj_r), gnss_p_enu_true=world.gnss.p_enu_true,
        gnss_noise_enu=world.gnss.noise_enu, t0_ns=np.int64(START_NS))


def load_truth(path: str | Path) -> dict[str, np.ndarray]:
    """Read truth.npz into a dict of arrays."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def generate_world(out_dir: str | Path, cfg: SynthConfig, *, progress: bool = True
                   ) -> dict[str, Any]:
    """Build, render and write a world into ``out_dir`` (layout in the module docstring).

    Returns:
        {'out': dir, 'bag': path, 'dem': path, 'truth': path, 'params': path, 'world': path,
         'counts': messages per topic, 'seconds': wall time per stage}.
    """
    from .params_out import write_node_params

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    secs: dict[str, float] = {}
    t0 = time.perf_counter()
    world = World(cfg)
    secs['build'] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ren = world.renderer()
    secs['mesh'] = time.perf_counter() - t0
    t0 = time.perf_counter()
    frames = render_frames(world, ren, progress=progress)
    secs['render'] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dem_path = out / 'dem.tif'
    world.dem.write_geotiff(str(dem_path), {
        'SURVEY_DATE': cfg.dem_survey_date, 'VERTICAL_DATUM': cfg.dem_vertical_datum,
        'KIND': cfg.dem_kind, 'VERTICAL_SIGMA_M': repr(cfg.dem_sigma_m),
        'HORIZONTAL_SIGMA_M': repr(cfg.dem_sigma_h_m), 'LICENCE': cfg.dem_licence,
        'GENERATOR': f'geo-depth synth seed={cfg.seed}'})
    counts = write_bag(world, frames, out / 'bag')
    write_truth(world, frames, out / 'truth.npz')
    summary = {'config': cfg.to_dict(), 'frames': cfg.frames,
               'fx': cfg.fx, 'utm_epsg': world.frame.utm_epsg,
               'textureless_patches_enu_xyr': [list(p) for p in world.patches],
               **world_summary(world.terrain, world.objects, world.dem)}
    (out / 'world.json').write_text(json.dumps(summary, indent=1, sort_keys=True) + '\n')
    params_path = write_node_params(world, out / 'params.yaml', dem_path)
    secs['write'] = time.perf_counter() - t0
    _LOG.info('world written to %s in %.1f s (%s)', out, sum(secs.values()),
              ', '.join(f'{k} {v:.1f} s' for k, v in secs.items()))
    return {'out': str(out), 'bag': str(out / 'bag'), 'dem': str(dem_path),
            'truth': str(out / 'truth.npz'), 'params': str(params_path),
            'world': str(out / 'world.json'), 'counts': counts, 'seconds': secs}

# Source this from the repository root (bash) to use the built package:
#   source tools/env.sh
# Activates the venv ($GEO_DEPTH_VENV, default ~/.cache/geo_depth_node/venv) and
# the colcon install in .colcon/ (messages + package, geo-depth on PATH).
_gd_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${GEO_DEPTH_VENV:-$HOME/.cache/geo_depth_node/venv}/bin/activate"
# colcon's setup scripts read unset variables; don't let `set -u` kill us.
_gd_restore_u=0; case $- in *u*) _gd_restore_u=1; set +u;; esac
source "$_gd_root/.colcon/install/setup.bash"
[ "$_gd_restore_u" = 1 ] && set -u
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$_gd_root/config/fastdds_shm.xml}"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
unset _gd_root _gd_restore_u

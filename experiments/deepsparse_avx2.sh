#!/bin/sh
# DeepSparse's interpreter held to AVX2 on a CPU that has AVX-512, for bench.ab --deepsparse-python.
#
#     bench.ab ... --deepsparse-python experiments/deepsparse_avx2.sh   (DS_PYTHON: its venv's python,
#                                                                        ~/ds/bin/python if unset)
#
# NM_ARCH=avx2 alone is not enough: DeepSparse reads the CPU's flags from /proc/cpuinfo, and on a CPU that lists
# AVX-512 its "avx2" binary still runs 512-bit code (EVEX gathers and mask registers), which an AVX2-only CPU
# cannot execute. Here it sees a copy of /proc/cpuinfo without the AVX-512 flags, in a mount namespace of its own
# (root, or unprivileged user namespaces), and reports "system=avx2, binary=avx2".
set -eu
python="${DS_PYTHON:-$HOME/ds/bin/python}"
if [ ! -x "$python" ]; then
    echo "error: no DeepSparse interpreter at $python: set DS_PYTHON to its venv's bin/python" >&2
    exit 2
fi
flags=$(mktemp)
sed -E 's/ (avx512[a-z0-9_]*|vaes|vpclmulqdq|gfni|avx_vnni|amx[a-z0-9_]*)\b//g' /proc/cpuinfo > "$flags"
if [ "$(id -u)" = 0 ]; then ns="unshare -m --propagation private"; else ns="unshare -r -m --propagation private"; fi
# the copy is bound over /proc/cpuinfo, then unlinked (the mount keeps it); exec, so that stopping this process
# stops DeepSparse
exec $ns sh -c 'mount --bind "$0" /proc/cpuinfo && rm -f "$0" && NM_ARCH=avx2 exec "$@"' "$flags" "$python" "$@"

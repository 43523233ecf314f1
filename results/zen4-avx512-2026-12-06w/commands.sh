#!/bin/bash
# The results page's Zen 4 runs with the winograd kind: the same interleaved A/Bs as the earlier folder's
# commands.sh (one per batch size, DeepSparse in the run), written here
cd "$(dirname "$0")/../.."
exec bash results/zen4-avx512-2026-12-06/commands.sh results/zen4-avx512-2026-12-06w

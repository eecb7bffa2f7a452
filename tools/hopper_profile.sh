#!/usr/bin/env bash
# The Hopper attention measurement of issue 14 in one command (docs/profiler.md, "Hopper suite").
#
# Runs `python -m l4.profiler profile-attention --suite hopper` from this checkout's src/ (no
# install: the GPU machine has torch, numpy and rich but not the engine's packages), with the
# results in $L4_PROFILE_DIR (default out/hopper-profile) and, after every part, an archive of
# them plus the log in $OUT (the device tool's return folder; ./out/device when unset): at most
# three files, so they fit the tool's return limits. Rerunning it on the same folder resumes:
# finished parts are kept. Extra arguments go to profile-attention, e.g. `--quick --device cpu`
# for the pipeline on tiny shapes here.
set -uo pipefail
cd "$(dirname "$0")/.."
ret=${OUT:-out/device}
work=${L4_PROFILE_DIR:-out/hopper-profile}
mkdir -p "$ret" "$work"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{
    echo "hopper_profile.sh: $(date -u +%FT%TZ) in $PWD, results in $work, returned in $ret"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
        --format=csv,noheader
    "$py" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "gpu", torch.cuda.is_available())'
    # 540 s leaves the device tool's 600 s per command for start-up and the last archive
    "$py" -m l4.profiler profile-attention --suite hopper --out "$work" \
        --archive "$ret/hopper-profile.tar.gz" --deadline-s "${L4_DEADLINE_S:-540}" "$@"
} 2>&1 | tee "$ret/log.txt"
rc=${PIPESTATUS[0]}
cp "$work/suite.json" "$ret/suite.json" 2>/dev/null
echo "hopper_profile.sh: exit $rc" | tee -a "$ret/log.txt"
exit "$rc"

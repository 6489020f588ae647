#!/bin/sh
# A container command job: no flow, just a command in an image, on one of the org's
# machines whose agent runs containers (`cshare agent start --pool-type docker`;
# `cshare machine show NAME` says "Docker: yes"). The input dataset is mounted read-only
# under /inputs/points; what the command writes to /outputs becomes a new version of the
# --output dataset. IMAGE: any image with a POSIX shell (default busybox).
set -eu
cshare job run --image "${IMAGE:-busybox:1.36}" --input points --output points-listing \
    --memory 256 --wait -- \
    sh -c 'find /inputs -type f | tee /outputs/listing.txt'

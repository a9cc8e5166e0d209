#!/bin/sh
# The temp/ expiry of deploy/compose.yaml's S3 server. versitygw has no
# lifecycle rules; its posix backend keeps each object as a file under
# S3_DATA_DIR/<bucket>/<key>, so deleting the files older than
# EXPIRE_AFTER_MINUTES is the rule AWS applies (deploy/aws/lifecycle.json),
# checked hourly. The services delete what they can much sooner.
set -eu

: "${S3_BUCKET_NAME:?}" "${S3_DATA_DIR:?}" "${EXPIRE_AFTER_MINUTES:?}"
dir="$S3_DATA_DIR/$S3_BUCKET_NAME/temp"
while :; do
  if [ -d "$dir" ]; then
    find "$dir" -type f -mmin "+$EXPIRE_AFTER_MINUTES" -delete
    find "$dir" -mindepth 1 -type d -empty -delete
  fi
  [ "${EXPIRE_ONCE:-}" = 1 ] && exit 0 # tests: one pass
  sleep 3600
done

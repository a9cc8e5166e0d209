#!/bin/sh
# One-shot set-up of the S3 server for deploy/compose.yaml, run by the
# s3-init container (minio/mc) once MinIO is healthy. Idempotent: safe on
# every `docker compose up`.
#
#   1. the photo bucket, private (no anonymous access);
#   2. the lifecycle rule that expires everything under temp/ after a day,
#      the backstop that removes originals, previews and clean copies even
#      if a session is abandoned and no service deletes them;
#   3. the bucket's default encryption (SSE-S3 with MinIO's KMS key);
#   4. the services' own user, limited to the bucket's temp/ objects by
#      app-policy.json (the same shape as the IAM policy in docs/deploy.md),
#      so no service holds the root credentials.
set -eu

: "${S3_BUCKET_NAME:?}" "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}"
: "${S3_APP_ACCESS_KEY:?}" "${S3_APP_SECRET_KEY:?}"
endpoint="${S3_INTERNAL_ENDPOINT:-http://minio:9000}"

mc alias set clinimg "$endpoint" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "clinimg/$S3_BUCKET_NAME"
mc anonymous set none "clinimg/$S3_BUCKET_NAME"
mc ilm import "clinimg/$S3_BUCKET_NAME" < /init/lifecycle.json
mc ilm ls "clinimg/$S3_BUCKET_NAME"
if mc encrypt set sse-s3 "clinimg/$S3_BUCKET_NAME" >/dev/null 2>&1; then
  echo "default encryption: SSE-S3"
else
  echo "default encryption: not available (no KMS key configured on this MinIO)"
fi
# The policy names the bucket; fill it in with shell built-ins only (the mc
# image is minimal).
policy=""
while IFS= read -r line || [ -n "$line" ]; do
  while case $line in *BUCKET*) true ;; *) false ;; esac; do
    line="${line%%BUCKET*}${S3_BUCKET_NAME}${line#*BUCKET}"
  done
  policy="$policy$line
"
done < /init/app-policy.json
printf '%s' "$policy" > /tmp/app-policy.json
mc admin policy create clinimg clinimg-app /tmp/app-policy.json
mc admin user add clinimg "$S3_APP_ACCESS_KEY" "$S3_APP_SECRET_KEY"
mc admin policy attach clinimg clinimg-app --user "$S3_APP_ACCESS_KEY" 2>/dev/null || true
echo "bucket $S3_BUCKET_NAME ready"

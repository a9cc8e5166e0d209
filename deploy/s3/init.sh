#!/bin/sh
# One-shot set-up of the S3 server for deploy/compose.yaml, run by the
# s3-init container (the versitygw image, whose binary is also the admin
# client) once versitygw is healthy. Idempotent: safe on every `up`.
#
#   1. the services' own user, role "user": it can reach only the buckets
#      it owns and no admin API, so no service holds the root credentials;
#   2. the photo bucket, owned by that user, private (no ACL grants).
#
# The admin client reads the root credentials and the endpoint from
# ADMIN_ACCESS_KEY_ID, ADMIN_SECRET_ACCESS_KEY and ADMIN_ENDPOINT_URL, so
# the root secret is never on a command line.
set -eu

: "${S3_BUCKET_NAME:?}" "${ADMIN_ENDPOINT_URL:?}" "${ADMIN_ACCESS_KEY_ID:?}" "${ADMIN_SECRET_ACCESS_KEY:?}"
: "${S3_APP_ACCESS_KEY:?}" "${S3_APP_SECRET_KEY:?}"

if versitygw admin list-users | grep -q -- "$S3_APP_ACCESS_KEY"; then
  # Keep the secret the operator set now, not the one of an earlier run.
  versitygw admin update-user --access "$S3_APP_ACCESS_KEY" --secret "$S3_APP_SECRET_KEY" --role user
else
  versitygw admin create-user --access "$S3_APP_ACCESS_KEY" --secret "$S3_APP_SECRET_KEY" --role user
fi
if ! versitygw admin list-buckets | grep -q -- "$S3_BUCKET_NAME"; then
  versitygw admin create-bucket --owner "$S3_APP_ACCESS_KEY" --bucket "$S3_BUCKET_NAME"
fi
versitygw admin change-bucket-owner --bucket "$S3_BUCKET_NAME" --owner "$S3_APP_ACCESS_KEY"
echo "bucket $S3_BUCKET_NAME ready, owned by the services' user"

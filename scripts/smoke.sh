#!/usr/bin/env bash
# A newcomer's run: build and start the local stack as `make run` does, then
# walk the seeds' flow with curl: desktop token, session token, validate,
# presign, PUT to S3, record, read the session. Exits non-zero on any step
# that does not answer as the seeds say.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${SMOKE_PORT:-18080}
base="http://127.0.0.1:$port"
bin=$(mktemp -d)/clinimg-local
log=$(mktemp)
go build -o "$bin" ./deploy/local/cmd/clinimg-local
PORT=$port RELAY_PORT=$((port + 1)) OPS_PORTS=false "$bin" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done

field() { sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p"; }
fail() { echo "smoke: $*" >&2; tail -20 "$log" >&2; exit 1; }

# A photo from the repository itself (a 640x480 JPEG full of metadata to
# strip), so a fresh clone runs this with nothing from outside it.
photo=services/thumbnailer/testdata/gps.jpg
[ -f "$photo" ] || fail "$photo not found: run from the repository's root"

desk=$(curl -sf "$base/dev/token?userId=user_abc" | field token)
[ -n "$desk" ] || fail "no desktop token"
start=$(curl -sf -X POST "$base/api/session-tokens" -H "Authorization: Bearer $desk" -H 'Content-Type: application/json' \
  -d '{"patientId":"12345","encounterId":"enc_789"}')
token=$(echo "$start" | field sessionToken)
echo "$start" | grep -q '"qrCodeUrl":"http' || fail "no qrCodeUrl: $start"
valid=$(curl -sf "$base/api/session-tokens/$token")
echo "$valid" | grep -q '"valid":true' || fail "token not valid: $valid"
phone=$(echo "$valid" | field phoneToken)
pre=$(curl -sf -X POST "$base/api/users/user_abc/presigned-url" -H "Authorization: Bearer $phone" -H 'Content-Type: application/json' \
  -d '{"fileName":"IMG_0001.JPG","contentType":"image/jpeg"}')
url=$(echo "$pre" | field uploadUrl | sed 's/\\u0026/\&/g')
key=$(echo "$pre" | field s3Key)
curl -sf -X PUT "$url" -H 'Content-Type: image/jpeg' --data-binary "@$photo" >/dev/null || fail "PUT to the presigned URL refused"
rec=$(curl -sf -X POST "$base/api/users/user_abc/images" -H "Authorization: Bearer $phone" -H 'Content-Type: application/json' \
  -d "{\"imageId\":\"img_a1b2c3d4\",\"s3Key\":\"$key\",\"source\":\"mobile\",\"metadata\":{\"bodySite\":\"368208006\",\"laterality\":\"left\"}}")
echo "$rec" | grep -q '"success":true' || fail "record: $rec"
sess=$(curl -sf "$base/api/users/user_abc/session" -H "Authorization: Bearer $desk")
echo "$sess" | grep -q '"id":"img_a1b2c3d4"' || fail "session has no image: $sess"
echo "$sess" | grep -q '"patientId":"12345"' || fail "session patient: $sess"
# The thumbnailer makes the preview within seconds.
for _ in $(seq 100); do
  sess=$(curl -sf "$base/api/users/user_abc/session" -H "Authorization: Bearer $desk")
  echo "$sess" | grep -q '"status":"ready"' && break
  sleep 0.1
done
echo "$sess" | grep -q '"status":"ready"' || fail "preview not ready: $sess"
echo "smoke: the seeds' flow works against make run (token, validate, presign, PUT, record, session, preview)"

#!/bin/sh
# The lake of the docker compose stack, prepared by the one-shot `minio-setup` service (minio/mc
# image) once MinIO is healthy and before any Dagster process starts:
#   - the lake bucket;
#   - a policy allowing the lake's operations on that bucket only;
#   - the platform's access key, with that policy. MinIO's root credentials never reach the platform.
# Rerunning changes nothing, except that the key's secret is reset to the value in .env.
set -eu

endpoint="${MINIO_ENDPOINT:?set MINIO_ENDPOINT, e.g. http://minio:9000}"
root_user="${MINIO_ROOT_USER:?set MINIO_ROOT_USER}"
root_password="${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD}"
bucket="${MINIO_LAKE_BUCKET:?set MINIO_LAKE_BUCKET}"
access_key="${MINIO_LAKE_ACCESS_KEY_ID:?set MINIO_LAKE_ACCESS_KEY_ID}"
secret_key="${MINIO_LAKE_SECRET_ACCESS_KEY:?set MINIO_LAKE_SECRET_ACCESS_KEY}"
policy="medallion-lake-readwrite"
config_dir="${TMPDIR:-/tmp}/medallion-mc"

fail() {
  echo "create-lake-bucket: $*" >&2
  exit 1
}

# The rules MinIO and S3 apply, checked here so a bad .env value says which variable is wrong.
case "$bucket" in
  *[!a-z0-9.-]* | [.-]* | *[.-] | *..*) fail "MINIO_LAKE_BUCKET='$bucket' is not a bucket name: lowercase letters, digits, '.' and '-', starting and ending with a letter or digit" ;;
esac
[ "${#bucket}" -ge 3 ] && [ "${#bucket}" -le 63 ] || fail "MINIO_LAKE_BUCKET must be 3 to 63 characters long"
[ "${#access_key}" -ge 3 ] || fail "MINIO_LAKE_ACCESS_KEY_ID must be at least 3 characters long"
[ "${#secret_key}" -ge 8 ] && [ "${#secret_key}" -le 40 ] || fail "MINIO_LAKE_SECRET_ACCESS_KEY must be 8 to 40 characters long"
[ "$access_key" != "$root_user" ] || fail "MINIO_LAKE_ACCESS_KEY_ID must differ from MINIO_ROOT_USER: the platform gets its own key"
[ "$access_key" != "$policy" ] || fail "MINIO_LAKE_ACCESS_KEY_ID must not be '$policy'"

mkdir -p "$config_dir"
mc() { command mc --config-dir "$config_dir" --no-color "$@"; }

mc alias set lake "$endpoint" "$root_user" "$root_password" >/dev/null
mc mb --ignore-existing "lake/$bucket"

# Delta commits and put-if-absent landing need read, write, list and delete (log cleanup, vacuum),
# and multipart uploads for large files; nothing on any other bucket, no bucket administration.
cat > "$config_dir/lake-policy.json" <<EOF
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::$bucket"]
    },
    {
      "Effect": "Allow",
      "Action": [
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts"
      ],
      "Resource": ["arn:aws:s3:::$bucket/*"]
    }
  ]
}
EOF
mc admin policy create lake "$policy" "$config_dir/lake-policy.json"
mc admin user add lake "$access_key" "$secret_key"

# MinIO refuses to attach a policy the user already has, so attach only when it is missing.
info="$(mc admin user info lake "$access_key" --json)"
case "$info" in
  *"\"$policy\""* | *"\"$policy,"* | *",$policy\""* | *",$policy,"*) ;;
  *) mc admin policy attach lake "$policy" --user "$access_key" ;;
esac

echo "lake bucket s3://$bucket ready for access key $access_key"

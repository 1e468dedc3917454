#!/bin/sh
# SSH keys of the docker compose stack, created once by the one-shot `sftp-keys` service.
#   $1  server directory: pinned host key + authorized_keys (mounted into the SFTP server only)
#   $2  client directory: client private key + known_hosts (mounted into the platform containers)
# Existing keys are kept, so the host key the clients pinned never changes under them; delete the
# volumes to rotate. The client directory is handed to the platform image's user (uid 10001).
set -eu

server_dir="${1:?server key directory}"
client_dir="${2:?client key directory}"
host="${MEDALLION_SFTP_HOST:-sftp}"
port="${MEDALLION_SFTP_PORT:-22}"
client_uid="${MEDALLION_CLIENT_UID:-10001}"

mkdir -p "$server_dir" "$client_dir"
if [ ! -f "$server_dir/ssh_host_ed25519_key" ]; then
  ssh-keygen -q -t ed25519 -N '' -C medallion-sftp-host -f "$server_dir/ssh_host_ed25519_key"
fi
if [ ! -f "$client_dir/id_ed25519" ]; then
  ssh-keygen -q -t ed25519 -N '' -C medallion-sftp-client -f "$client_dir/id_ed25519"
fi

# known_hosts names the host as clients dial it: bare on port 22, [host]:port otherwise.
if [ "$port" = 22 ]; then entry="$host"; else entry="[$host]:$port"; fi
printf '%s %s\n' "$entry" "$(cut -d' ' -f1,2 "$server_dir/ssh_host_ed25519_key.pub")" \
  > "$client_dir/known_hosts"
cp "$client_dir/id_ed25519.pub" "$server_dir/authorized_keys"

chmod 600 "$server_dir/ssh_host_ed25519_key" "$client_dir/id_ed25519"
chmod 644 "$server_dir/ssh_host_ed25519_key.pub" "$server_dir/authorized_keys" \
  "$client_dir/id_ed25519.pub" "$client_dir/known_hosts"
if [ "$(id -u)" = 0 ]; then
  chown -R "$client_uid:$client_uid" "$client_dir"
fi
echo "sftp keys ready: host key $(ssh-keygen -l -f "$server_dir/ssh_host_ed25519_key.pub")"

#!/bin/sh
# Runs inside the atmoz/sftp container after it has created the users and before sshd starts:
# serve the pinned host key from the `sftp-server-keys` volume (instead of the one the image
# generated) and accept only the platform's client key.
set -eu
user="${MEDALLION_SFTP_USER:-acme}"

install -m 600 /keys/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key
install -m 644 /keys/ssh_host_ed25519_key.pub /etc/ssh/ssh_host_ed25519_key.pub

install -d -m 700 -o "$user" "/home/$user/.ssh"
install -m 600 -o "$user" /keys/authorized_keys "/home/$user/.ssh/authorized_keys"

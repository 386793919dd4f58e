#!/usr/bin/env bash
# Installs Debian's rustc-web (compiler, std source) and the cross linkers, qemu-user and musl
# for aarch64/armv7. Pins every Rust package to one version: std and compiler must match.
# bookworm-security is limited to amd64+arm64: its armhf index has been seen failing its size check,
# after which apt drops every foreign-arch security index.
set -euo pipefail
V=${RUST_WEB_VERSION:-1.96.0+dfsg1-1~deb12u2}
SRC=$(mktemp -d)
cat > $SRC/debian.sources <<EOS
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Architectures: amd64 arm64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
APT="-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$SRC"
dpkg --add-architecture arm64; dpkg --add-architecture armhf
apt-get $APT update -qq
apt-get $APT install -y -qq rustc-web=$V cargo-web=$V rust-web-src=$V libstd-rust-web-dev=$V \
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross \
  qemu-user-static musl-tools musl-dev:arm64 musl-dev:armhf

#!/usr/bin/env bash
# Installs the Debian packages the firmware stages need, when they are missing; with --with-test-tools also
# what only the tests use (chromium: the browser test renders build/report.html; nginx with WebDAV: the remote
# step cache's test server).
# Without root or apt, prints the exact command to run and fails.
set -euo pipefail
packages=(gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm cmake)
missing=()
command -v arm-none-eabi-gcc >/dev/null || missing+=(gcc-arm-none-eabi)
[ -f /usr/lib/arm-none-eabi/newlib/libc.a ] || [ -f /usr/lib/arm-none-eabi/lib/libc.a ] || missing+=(libnewlib-arm-none-eabi)
command -v qemu-system-arm >/dev/null || missing+=(qemu-system-arm)
# The MCUXpresso SDK and Zephyr flows are CMake projects (their tests configure real CMake projects).
command -v cmake >/dev/null || missing+=(cmake)
if [ "${1:-}" = "--with-test-tools" ]; then
    packages+=(chromium nginx libnginx-mod-http-dav-ext)
    command -v chromium >/dev/null || missing+=(chromium)
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    [ -f /usr/lib/nginx/modules/ngx_http_dav_ext_module.so ] || missing+=(libnginx-mod-http-dav-ext)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
cmd="apt-get update && apt-get install -y ${missing[*]}"
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    echo "bootstrap: installing ${missing[*]} with sudo" >&2
    sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "bootstrap: missing Debian packages: ${missing[*]}" >&2
    echo "bootstrap: run this as root, then retry:  $cmd" >&2
    echo "bootstrap: (all packages: ${packages[*]})" >&2
    exit 1
fi

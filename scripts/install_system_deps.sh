#!/usr/bin/env bash
# Debian packages used by the integration tests: a real PACS (Orthanc + DICOMweb plugin), headless Chromium and
# dicom3tools (dciodvfy, the DICOM conformance checker).
# Best effort: without root or apt the tests that need them are skipped, never failed.
set -u
pkgs=(orthanc orthanc-dicomweb chromium dicom3tools)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: cannot install ${missing[*]} (needs root and apt-get); their tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || echo "note: apt-get could not install ${missing[*]}; their tests will be skipped" >&2
# Debian starts an Orthanc service on install; the tests run their own instances on free loopback ports.
(command -v service >/dev/null && service orthanc stop >/dev/null 2>&1) || true
exit 0

# Sourced by the setup scripts: apt_install TAG PACKAGE... installs the packages
# (as root, or with sudo), after one `apt-get update`; nothing when none are given.
apt_install() {
  local tag=$1
  shift
  [ $# -gt 0 ] || return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "$tag: installing $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

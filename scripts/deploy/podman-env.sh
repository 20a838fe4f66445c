# Sourced by build-cpu-image.sh and smoke-cpu-image.sh: picks podman options
# that work on this host. On a normal host that is nothing. In sandboxes
# without CAP_SYS_RESOURCE (podman's default rlimits cannot be set) and with
# a hybrid cgroup v1/v2 hierarchy (crun refuses it), it falls back to runc
# with modest rlimits, installing runc if needed.
#
#   podman_setup IMAGE   # sets PODMAN (command array) and PODMAN_RUN_OPTS

podman_setup() {
  local probe_image="$1"
  PODMAN=(podman)
  PODMAN_RUN_OPTS=()
  if podman run --rm --network none --entrypoint /bin/true "$probe_image" >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v runc >/dev/null; then
    echo "podman-env: installing runc" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc >/dev/null
  fi
  PODMAN=(podman --runtime runc)
  PODMAN_RUN_OPTS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
  if ! "${PODMAN[@]}" run --rm --network none "${PODMAN_RUN_OPTS[@]}" --entrypoint /bin/true "$probe_image"; then
    echo "podman-env: podman cannot run containers here (tried crun and runc)" >&2
    return 1
  fi
  echo "podman-env: using runc with rlimits ${PODMAN_RUN_OPTS[*]}" >&2
}

# Shared by the one-call device scripts (train_device.sh, train_shield_device.sh); source it, do not run it.

# install_carried_wheels PY DIR: install the wheels carried in DIR (the device's Python lacks them) into
# /tmp/site and put that on PYTHONPATH; nothing when DIR holds none.
install_carried_wheels() {
  if compgen -G "$2/*.whl" >/dev/null; then
    echo "installing carried wheels" >&2
    "$1" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$2"/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
}

# split_for_return FILE PART_MIB: the device tool brings back files of at most 16 MiB, so a FILE larger than
# PART_MIB MiB is replaced by FILE.part00, .part01, ... (join them with: cat FILE.part* > FILE).
split_for_return() {
  if [ "$(stat -c %s "$1")" -gt $(($2 * 1024 * 1024)) ]; then
    split -b "${2}M" -d "$1" "$1.part"
    rm "$1"
    echo "weights in $1.part*; join with cat" >&2
  else
    echo "weights in $1" >&2
  fi
}

#!/usr/bin/env bash
# Build the Dockerfile's CPU image without a Docker engine, then run it the way the chart does (CI: .ci/run).
#
#   1. tools: buildah, mmdebstrap and bubblewrap from Debian, installed where missing;
#   2. the base: the registry of the Dockerfile's base (python:3.11.14-slim-bookworm) is out of reach here, so a
#      stand-in of the same name is made locally, once (remade when its recipe changes): Debian's minbase of
#      the same suite from this machine's apt mirror (mmdebstrap) with python3 (bookworm's is 3.11),
#      python3-venv and ca-certificates, plus this machine's CA bundle (PIP_CERT) and pip index settings, so
#      that pip in the build reaches PyPI exactly as this machine's pip does;
#   3. `buildah bud` of the Dockerfile as it is (chroot isolation, vfs storage, no layer cache: pip installs
#      from PyPI every time), docker format so that HEALTHCHECK is kept;
#   4. the image's config (user 10001:10001, entrypoint, working directory, /models) and its size;
#   5. the image run by bubblewrap on a read-only root (a tmpfs at /tmp, a writable folder owned by 10001 at
#      the working directory, a model repository read-only at /models; the host's network), as uid 10001
#      with no capabilities and no_new_privs, as the chart runs it:
#      - `serve`: GET /readyz 200, POST /v1/classify with a real image 200 with results, /metrics, and the
#        image's HEALTHCHECK command (the image's default CMD where port 8080 is free);
#      - `consume` against a Kafka broker on the host (scripts/kafka.sh) after `labelaudit produce` from the
#        host: every message audited into the SQLite store in the writable folder;
#      - `report` over that store: report.html and report.json, which count the same images.
#
#   bash scripts/build-image.sh          all of it (a few minutes on 2 cores); exits non-zero on any failed check
#   bash scripts/build-image.sh --keep   also keep the work folder (build log, logs, store, report)
#
# Needs root (buildah's chroot isolation, bubblewrap's mounts, apt), and what scripts/setup.sh installs: the
# host's labelaudit with the train extra and Debian's Fashion-MNIST (a one-epoch model repository is trained
# and exported here for the run), Java and the broker's jars. Storage: ~/.cache/labelaudit/buildah (the base
# and the last image, localhost/labelaudit:ci; `rm -rf` it to start over).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=localhost/labelaudit:ci
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/labelaudit"
STORAGE="$CACHE/buildah"
BASE_PACKAGES=python3,python3-venv,ca-certificates
BASE_CERT=/etc/ssl/certs/labelaudit-host-ca.pem  # the host's CA bundle, in the stand-in base
BASE_RECIPE_VERSION=1                            # bump to remake the base when this script's recipe changes
MESSAGES=200                                     # images streamed through Kafka to the consumer in the image

keep=0
case "${1:-}" in
  "") ;;
  --keep) keep=1 ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac

say() { echo "build-image: $*"; }
ok() { echo "build-image: ok: $*"; }
fail() { echo "build-image: FAILED: $*" >&2; exit 1; }
B() { buildah --root "$STORAGE/root" --runroot "$STORAGE/run" --storage-driver vfs "$@"; }
started=$SECONDS

[ "$(id -u)" = 0 ] || fail "run as root: buildah's chroot isolation and bubblewrap's mounts need it"
for tool in python3 labelaudit java; do
  command -v "$tool" >/dev/null || fail "'$tool' is missing: run bash scripts/setup.sh first"
done
python3 -c 'import torch, onnx' 2>/dev/null || fail "the host's labelaudit lacks the train extra: run bash scripts/setup.sh"

# -- 1. tools -------------------------------------------------------------------------------------------------
missing=()
for pair in buildah:buildah mmdebstrap:mmdebstrap bwrap:bubblewrap; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
say "$(buildah --version), mmdebstrap $(mmdebstrap --version | awk '{print $2}'), $(bwrap --version)"

work="$(mktemp -d /tmp/labelaudit-image.XXXXXX)"
chmod 755 "$work"
ctr=""
kafka_dir=""
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "$kafka_dir" ]; then bash scripts/kafka.sh stop "$kafka_dir" >/dev/null 2>&1 || true; fi
  if [ -n "$ctr" ]; then B rm "$ctr" >/dev/null 2>&1 || true; fi
  if [ "$keep" = 1 ]; then say "kept $work"; else rm -rf "$work"; fi
  if [ "$rc" = 0 ]; then say "all passed in $((SECONDS - started)) s"; else say "FAILED (exit $rc) after $((SECONDS - started)) s" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# One run at a time owns the storage, so any working container in it is a leftover of a run that died.
mkdir -p "$STORAGE"
exec 9>"$STORAGE/lock"
flock --nonblock 9 || fail "another scripts/build-image.sh is running (it holds $STORAGE/lock)"
B rm --all >/dev/null 2>&1 || true

# -- 2. the base ----------------------------------------------------------------------------------------------
base_ref="$(awk '$1 == "FROM" && $3 == "AS" && $4 == "base-cpu" {print $2; exit}' Dockerfile)"
[ -n "$base_ref" ] || fail "no 'FROM <image> AS base-cpu' in the Dockerfile"
case "$base_ref" in
  */*/*) base_name="$base_ref" ;;
  */*) base_name="docker.io/$base_ref" ;;
  *) base_name="docker.io/library/$base_ref" ;;
esac
suite="${base_ref##*-}"  # python:3.11.14-slim-bookworm -> bookworm
want_python="$(sed -E 's/^[^:]*:([0-9]+\.[0-9]+).*/\1/' <<<"$base_ref")"  # 3.11: the stand-in's must match

# This machine's Debian mirror for the suite, as apt sees it (sources.list or deb822 alike).
# shellcheck disable=SC2016  # apt's $(FIELD) placeholders, not the shell's
mapfile -t mirrors < <(apt-get indextargets --format '$(TARGET_OF) $(REPO_URI) $(RELEASE) $(COMPONENT)' \
  'Created-By: Packages' 2>/dev/null |
  awk -v s="$suite" '$1 == "deb" && ($3 == s || index($3, s "-") == 1) && $4 == "main" {print "deb " $2 " " $3 " main"}' |
  sort -u)
if [ "${#mirrors[@]}" = 0 ]; then
  say "this machine's apt has no $suite sources: using deb.debian.org"
  mirrors=("deb http://deb.debian.org/debian $suite main")
fi
aptopts=()
for key in Acquire::Check-Valid-Until Acquire::http::Proxy Acquire::https::Proxy; do
  value=""
  eval "$(apt-config shell value "$key")"
  if [ -n "$value" ]; then aptopts+=("--aptopt=$key \"$value\""); fi
done

# This machine's pip settings (environment first, then site, user and global files), for the base's
# /etc/pip.conf; the CA bundle pip trusts (or the system's) is copied in and named by PIP_CERT.
python3 - "$work/pip.conf" "$work/host-ca.pem" "$BASE_CERT" <<'EOF'
import re
import shutil
import subprocess
import sys
from pathlib import Path

conf, cert_out, base_cert = sys.argv[1:]
listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True)
rank = {":env:": 0, "site": 1, "user": 2, "global": 3, "install": 4, "download": 4}
best = {}
for line in listed.stdout.splitlines():
    m = re.match(r"^(:env:|[\w-]+)\.([\w-]+)='(.*)'$", line)
    if m and m[1] in rank:
        if m[2] not in best or rank[m[1]] < best[m[2]][0]:
            best[m[2]] = (rank[m[1]], m[3])
settings = {}
for key in ("index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "default-timeout", "retries"):
    if key in best:
        settings[key] = best[key][1]
links = [link for link in best.get("find-links", (0, ""))[1].split() if "://" in link]
skipped = [link for link in best.get("find-links", (0, ""))[1].split() if "://" not in link]
if links:
    settings["find-links"] = " ".join(links)
cert = best.get("cert", (0, ""))[1] or "/etc/ssl/certs/ca-certificates.crt"
shutil.copyfile(cert, cert_out)
settings["cert"] = base_cert
Path(conf).write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
shown = {k: re.sub(r"//[^/@\s]+@", "//***@", v) for k, v in settings.items()}
print(f"build-image: the build's pip: {shown} (the CA bundle from {cert})")
if skipped:
    print(f"build-image: not carried into the build: find-links {' '.join(skipped)} (a folder of this machine)")
EOF

recipe="$(
  {
    echo "$BASE_RECIPE_VERSION $base_name $suite $BASE_PACKAGES"
    printf '%s\n' "${mirrors[@]}" "${aptopts[@]}"
    cat "$work/pip.conf" "$work/host-ca.pem"
  } | sha256sum | cut -c1-16
)"
if [ -n "$(B images --quiet "$base_name" 2>/dev/null)" ] && [ "$(cat "$STORAGE/base.recipe" 2>/dev/null)" = "$recipe" ]; then
  say "base: $base_name, the local stand-in made earlier (recipe $recipe)"
else
  say "base: making a stand-in for $base_name (the registry is out of reach): Debian $suite minbase with" \
    "$BASE_PACKAGES from ${mirrors[*]}"
  t0=$SECONDS
  rm -f "$STORAGE/base.recipe"
  # shellcheck disable=SC2016  # "$1" is the hook's, the chroot
  mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" "${aptopts[@]}" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook="upload $work/host-ca.pem $BASE_CERT" \
    --customize-hook="upload $work/pip.conf /etc/pip.conf" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    "$suite" "$work/base.tar" "${mirrors[@]}"
  base_ctr="$(B from --name "labelaudit-ci-base-$$" scratch)"
  ctr="$base_ctr"
  B add --quiet "$base_ctr" "$work/base.tar" / >/dev/null
  B config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --env PIP_CERT="$BASE_CERT" --cmd python3 "$base_ctr"
  B commit --quiet --rm "$base_ctr" "$base_name" >/dev/null
  ctr=""
  rm -f "$work/base.tar"
  echo "$recipe" >"$STORAGE/base.recipe"
  say "base: $base_name made in $((SECONDS - t0)) s (recipe $recipe)"
fi

# -- 3. the build ---------------------------------------------------------------------------------------------
say "buildah bud --build-arg VARIANT=cpu -t $IMAGE . (log: $work/build.log)"
t0=$SECONDS
built=0
B bud --isolation chroot --pull=never --format docker --build-arg VARIANT=cpu --tag "$IMAGE" \
  --file Dockerfile . >"$work/build.log" 2>&1 && built=1
# buildah 1.28 leaves the working container of a stage without instructions (base-cpu) behind.
B rm --all >/dev/null 2>&1 || true
if [ "$built" = 0 ]; then
  tail -n 40 "$work/build.log" >&2
  fail "buildah bud (the end of its log is above)"
fi
grep -E '^(\[[0-9]/[0-9]\] )?STEP|install-runtime:' "$work/build.log" | sed 's/^/  /'
build_s=$((SECONDS - t0))
ok "image $IMAGE built in ${build_s} s"
B rmi --prune >/dev/null 2>&1 || true  # the previous run's image, now untagged

# -- 4. the image's config and size -------------------------------------------------------------------------
B inspect --type image "$IMAGE" >"$work/image.json"
python3 - "$work/image.json" "$work" <<'EOF'
import json
import sys
from pathlib import Path

info = json.loads(Path(sys.argv[1]).read_text())
out = Path(sys.argv[2])
oci = info["OCIv1"]["config"]
docker = info["Docker"]["config"]
problems = []
if oci.get("User") != "10001:10001":
    problems.append(f"user {oci.get('User')!r}, not 10001:10001")
if oci.get("Entrypoint") != ["labelaudit"]:
    problems.append(f"entrypoint {oci.get('Entrypoint')!r}")
if oci.get("WorkingDir") != "/var/lib/labelaudit":
    problems.append(f"working directory {oci.get('WorkingDir')!r}")
env = dict(e.split("=", 1) for e in oci.get("Env", []))
if env.get("LABELAUDIT_MODEL_REPO") != "/models":
    problems.append(f"LABELAUDIT_MODEL_REPO={env.get('LABELAUDIT_MODEL_REPO')!r}")
health = (docker.get("Healthcheck") or {}).get("Test") or []
if health[:1] != ["CMD"]:
    problems.append(f"HEALTHCHECK {health!r}")
if problems:
    sys.exit("build-image: FAILED: the image's config: " + "; ".join(problems))
# NUL-separated lists for the shell
(out / "entrypoint").write_bytes(b"".join(a.encode() + b"\0" for a in oci["Entrypoint"]))
(out / "cmd").write_bytes(b"".join(a.encode() + b"\0" for a in oci.get("Cmd") or []))
(out / "healthcheck").write_bytes(b"".join(a.encode() + b"\0" for a in health[1:]))
(out / "env").write_bytes(b"".join(e.encode() + b"\0" for e in oci.get("Env", [])))
print(f"build-image: ok: config: user {oci['User']}, entrypoint {oci['Entrypoint']}, cmd {oci.get('Cmd')}, "
      f"workdir {oci['WorkingDir']}, HEALTHCHECK {' '.join(health[1:3])} ...")
EOF
mapfile -d '' -t entrypoint <"$work/entrypoint"
mapfile -d '' -t default_cmd <"$work/cmd"
mapfile -d '' -t healthcheck <"$work/healthcheck"
mapfile -d '' -t image_env <"$work/env"

ctr="$(B from --pull=never --name "labelaudit-ci-run-$$" "$IMAGE")"
root="$(B mount "$ctr")"
venv_mb="$(du -sm "$root/opt/labelaudit" | cut -f1)"
# Compressed, as a registry stores it: the image pushed to an OCI layout (gzip layers).
B push --quiet "$IMAGE" "oci:$work/oci:ci" >/dev/null
python3 - "$work/oci" "$venv_mb" "$(B images --format '{{.Size}}' "$IMAGE")" "$base_name" <<'EOF'
import json
import sys
from pathlib import Path

oci, venv_mb, size, base = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
index = json.loads((oci / "index.json").read_text())
digest = index["manifests"][0]["digest"].split(":")[1]
manifest = json.loads((oci / "blobs/sha256" / digest).read_text())
layers = [layer["size"] for layer in manifest["layers"]]
mb = lambda n: f"{n / 1e6:.0f} MB"  # noqa: E731
print(f"build-image: size: {size} uncompressed, {mb(sum(layers))} compressed ({len(layers)} layers: the base "
      f"{mb(layers[0])}, the Dockerfile's {mb(sum(layers[1:]))}); the venv /opt/labelaudit {venv_mb} MB "
      f"(the base here is the local stand-in for {base})")
EOF
rm -rf "$work/oci"

# -- 5. run it ------------------------------------------------------------------------------------------------
# A model repository for the run: one epoch on the tiny task B, exported (as tests/conftest.py's model_repo).
say "model repository: labelaudit data --size tiny, train --epochs 1, export (on the host)"
t0=$SECONDS
{
  labelaudit data --out "$work/data" --size tiny --seed 0
  OMP_NUM_THREADS=1 labelaudit train --manifest "$work/data/task_b.jsonl" --init scratch --method ce --epochs 1 \
    --out "$work/runs/ce" --device cpu
  labelaudit export --checkpoint "$work/runs/ce/checkpoint.pt" --repo "$work/models" --parity-images 200 \
    --min-parity-images 200
} >"$work/model.log" 2>&1 || { tail -n 20 "$work/model.log" >&2; fail "making the model repository"; }
ok "model repository $work/models in $((SECONDS - t0)) s"
state="$work/state"  # the image's working directory, /var/lib/labelaudit: the one writable path
mkdir -p "$state"
chown 10001:10001 "$state"
workdir="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["OCIv1"]["config"]["WorkingDir"])' "$work/image.json")"
user="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["OCIv1"]["config"]["User"])' "$work/image.json")"

# "${sandbox[@]}" CMD...: CMD in the image as the chart runs it. bubblewrap, as root, binds the image read-only
# at /, then the image's own setpriv (util-linux) drops to the image's user with no capabilities at all.
# /tmp is a tmpfs open to all, as Kubernetes makes the chart's emptyDir there.
sandbox=(bwrap --ro-bind "$root" / --dev /dev --proc /proc --perms 0777 --tmpfs /tmp
  --bind "$state" "$workdir" --ro-bind "$work/models" /models
  --unshare-pid --unshare-ipc --unshare-uts --die-with-parent --new-session --clearenv)
for kv in "${image_env[@]}"; do sandbox+=(--setenv "${kv%%=*}" "${kv#*=}"); done
sandbox+=(--setenv HOME "$workdir" --chdir "$workdir"
  /usr/bin/setpriv --reuid "${user%%:*}" --regid "${user##*:}" --clear-groups --no-new-privs
  --inh-caps=-all --bounding-set=-all --)
# A process that meets the read-only root falls back or warns and goes on (matplotlib, tempfile): its log says.
no_write_errors() {
  if grep -E -i 'permission denied|read-only file system|errno 13|errno 30' "$1" >&2; then
    fail "$2 met a path it cannot write (above; the rest in $1)"
  fi
}

"${sandbox[@]}" python3 - "$want_python" <<'EOF' || fail "the process in the image"
import importlib.util
import os
import platform
import sys
from pathlib import Path

status = dict(line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":\t" in line)
caps = {k: int(v, 16) for k, v in status.items() if k.startswith("Cap")}
assert os.getuid() == 10001 and os.getgid() == 10001 and os.getgroups() == [], (os.getuid(), os.getgid())
assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == 0, caps
assert status["NoNewPrivs"].strip() == "1"
for path in ("/opt/labelaudit/probe", "/probe", "/models/probe"):
    try:
        Path(path).write_text("x")
        raise AssertionError(f"{path} is writable")
    except OSError:
        pass
Path("probe").write_text("x")
Path("probe").unlink()
missing = [m for m in ("torch", "onnx", "pip") if importlib.util.find_spec(m) is not None]
assert not missing, f"in the image: {missing}"
assert platform.python_version().startswith(sys.argv[1] + "."), f"Python {platform.python_version()}, not {sys.argv[1]}"
print(f"build-image: ok: in the image: Python {platform.python_version()}, uid {os.getuid()} gid {os.getgid()}, "
      f"no capabilities, no_new_privs, read-only root and /models, {os.getcwd()} writable; no torch, onnx or pip")
EOF

# The gateway: the image's default CMD (0.0.0.0:8080) where 8080 is free, else the same on a free port.
if python3 -c 'import socket; socket.create_server(("0.0.0.0", 8080)).close()' 2>/dev/null; then
  port=8080
  args=("${default_cmd[@]}")
else
  port="$(python3 -c 'from labelaudit.ports import free_port; print(free_port())')"
  args=(serve --host 127.0.0.1 --port "$port")
  say "port 8080 is taken here: the gateway on $port instead of the image's CMD (the HEALTHCHECK is skipped)"
fi
say "serve: ${entrypoint[*]} ${args[*]} (log: $work/gateway.log)"
"${sandbox[@]}" "${entrypoint[@]}" "${args[@]}" >"$work/gateway.log" 2>&1 &
gateway=$!
pids+=("$gateway")
image_png="$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["image"])' "$work/data/task_b.jsonl")"
case "$image_png" in /*) ;; *) image_png="$work/data/$image_png" ;; esac
python3 - "$port" "$image_png" "$work/models/labelaudit/labels.txt" "$gateway" <<'EOF' || { tail -n 30 "$work/gateway.log" >&2; fail "the gateway"; }
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

port, image, labels, pid = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]).read_text().split(), int(sys.argv[4])
base = f"http://127.0.0.1:{port}"


def get(path, data=None, headers=None):
    request = urllib.request.Request(base + path, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


deadline = time.monotonic() + 180
while True:
    try:
        status, body = get("/readyz")
        if status == 200:
            break
    except OSError:
        status, body = None, b""
    os.kill(pid, 0)  # the sandbox still runs
    if time.monotonic() > deadline:
        sys.exit(f"build-image: FAILED: GET /readyz answered {status} for 180 s: {body[:300]!r}")
    time.sleep(0.5)
print(f"build-image: ok: GET /readyz 200 {body.decode()[:200]}")

boundary = uuid.uuid4().hex
form = (
    f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{image.name}"\r\n'
    f"Content-Type: image/png\r\n\r\n"
).encode() + image.read_bytes() + (
    f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n3\r\n--{boundary}--\r\n'
).encode()
status, body = get("/v1/classify", form, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
assert status == 200, f"POST /v1/classify answered {status}: {body[:300]!r}"
answer = json.loads(body)
top = answer["results"][0]["top"]
assert len(answer["results"]) == 1 and len(top) == 3, answer
assert all(t["label"] in labels and 0.0 <= t["probability"] <= 1.0 for t in top), answer
print(f"build-image: ok: POST /v1/classify ({image.name}) 200: model {answer['model_name']} "
      f"v{answer['model_version']}, top {[(t['label'], round(t['probability'], 3)) for t in top]}")
status, body = get("/metrics")
assert status == 200 and b"labelaudit_" in body, f"GET /metrics answered {status}"
print(f"build-image: ok: GET /metrics 200 ({len(body.splitlines())} lines)")
EOF
if [ "$port" = 8080 ]; then
  "${sandbox[@]}" "${healthcheck[@]}" || fail "the image's HEALTHCHECK (${healthcheck[*]})"
  ok "HEALTHCHECK (${healthcheck[0]} -c ... /healthz) exit 0"
fi
kill "$gateway"
wait "$gateway" 2>/dev/null || true
pids=()
no_write_errors "$work/gateway.log" "the gateway"

# The stream: a broker on the host, labelaudit produce from the host, labelaudit consume in the image.
kafka_dir="$work/kafka"
kafka_port="$(python3 -c 'from labelaudit.ports import free_port; print(free_port(2))')"
bash scripts/kafka.sh start "$kafka_dir" "$kafka_port" 9>&- | sed 's/^/  /'
labelaudit produce --manifest "$work/data/task_b.jsonl" --limit "$MESSAGES" --bootstrap "127.0.0.1:$kafka_port" \
  >"$work/produce.log" 2>&1 || { cat "$work/produce.log" >&2; fail "labelaudit produce"; }
ok "$(tail -n 1 "$work/produce.log")"
store=sqlite:///$workdir/audit.db
say "consume: ${entrypoint[*]} consume --bootstrap 127.0.0.1:$kafka_port --store-url $store --max-messages $MESSAGES"
timeout 300 "${sandbox[@]}" "${entrypoint[@]}" consume --bootstrap "127.0.0.1:$kafka_port" --store-url "$store" \
  --max-messages "$MESSAGES" --stop-when-idle 60 >"$work/consumer.log" 2>&1 ||
  { tail -n 30 "$work/consumer.log" >&2; fail "labelaudit consume in the image"; }
python3 - "$state/audit.db" "$MESSAGES" <<'EOF' || { tail -n 30 "$work/consumer.log" >&2; fail "the audit store"; }
import sqlite3
import sys

db, want = sys.argv[1], int(sys.argv[2])
with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
    (items,) = conn.execute("SELECT COUNT(DISTINCT item_id) FROM audit_records").fetchone()
assert items == want, f"{items} items in the audit store, not {want}"
print(f"build-image: ok: the consumer in the image audited all {items} messages into {db}")
EOF
grep -E '^audited' "$work/consumer.log" | sed 's/^/  /' || true
no_write_errors "$work/consumer.log" "the consumer"
bash scripts/kafka.sh stop "$kafka_dir" >/dev/null
kafka_dir=""

# The report over that store, in the image: matplotlib and scipy are used here and only here.
since="$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M)"
until="$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M)"
say "report: ${entrypoint[*]} report --since $since --until $until --store-url $store --model-repo /models"
"${sandbox[@]}" "${entrypoint[@]}" report --since "$since" --until "$until" --store-url "$store" --out "$workdir/reports" \
  --model-repo /models >"$work/report.log" 2>&1 || { tail -n 30 "$work/report.log" >&2; fail "labelaudit report in the image"; }
python3 - "$state/reports" "$MESSAGES" <<'EOF' || { tail -n 30 "$work/report.log" >&2; fail "the report"; }
import json
import sys
from pathlib import Path

folders = list(Path(sys.argv[1]).iterdir())
assert len(folders) == 1, folders
report = json.loads((folders[0] / "report.json").read_text())
html = (folders[0] / "report.html").read_text()
images = report["headline"]["images_audited"]
assert images == int(sys.argv[2]), f"report.json counts {images} images"
assert "data:image/png;base64" in html, "report.html has no figures"
print(f"build-image: ok: report {folders[0].name}: {images} images audited, report.html with figures "
      f"({len(html) // 1000} kB), relabel_queue.csv {(folders[0] / 'relabel_queue.csv').exists()}")
EOF
no_write_errors "$work/report.log" "the report"

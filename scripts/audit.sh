#!/usr/bin/env bash
# Known vulnerabilities in the packages installed in .venv, with pip-audit (in a venv of its own
# under .tools/, so its dependencies never mix with the service's).
#
# pip-audit asks a vulnerability service over the network (default: the package index's own
# advisory data, `-s pypi`; AUDIT_SERVICE=osv for OSV). No package ships a current advisory
# database, so offline nothing can be checked: the audit then says SKIPPED and how many
# packages went unchecked, and exits 0 (AUDIT_STRICT=1: exit 3), never "no vulnerabilities".
# Exit 1 when a vulnerability is found.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
service=${AUDIT_SERVICE:-pypi}
strict=${AUDIT_STRICT:-0}
tool=${AUDIT_VENV:-.tools/audit}
skipped() {
  echo "audit: SKIPPED: $1" >&2
  [ "$strict" = "1" ] && exit 3
  exit 0
}
[ -x .venv/bin/python ] || { echo "audit: no .venv: run \`make setup\` first" >&2; exit 2; }
if [ ! -x "$tool/bin/pip-audit" ]; then
  "$PY" -m venv "$tool"
  "$tool/bin/pip" install -q "pip-audit==2.10.1" \
    || skipped "pip-audit could not be installed (no package index reachable?)"
fi
report=$(mktemp)
trap 'rm -f "$report"' EXIT
set +e
PIPAPI_PYTHON_LOCATION="$PWD/.venv/bin/python" "$tool/bin/pip-audit" -s "$service" \
  --skip-editable --progress-spinner off --format json -o "$report" 2>"$report.err"
rc=$?
set -e
if [ ! -s "$report" ]; then
  tail -5 "$report.err" >&2; rm -f "$report.err"
  skipped "pip-audit did not run to the end (exit $rc); see the lines above"
fi
rm -f "$report.err"
"$tool/bin/python" - "$report" "$service" "$strict" <<'PYEOF'
import json
import sys

path, service, strict = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
deps = json.load(open(path))["dependencies"]
checked = [d for d in deps if "skip_reason" not in d]
unchecked = [d for d in deps if "skip_reason" in d]
found = [(d, v) for d in checked for v in d.get("vulns", [])]
if not checked:
    print(f"audit: SKIPPED: the {service} vulnerability service could not be reached "
          f"(offline?): 0 of {len(deps)} packages checked", file=sys.stderr)
    sys.exit(3 if strict else 0)
for d, v in found:
    fixed = ", ".join(v.get("fix_versions") or []) or "no fixed version"
    print(f"{d['name']} {d['version']}: {v['id']} (fixed in: {fixed})")
print(f"audit: {len(checked)} packages checked against {service}, "
      f"{len(unchecked)} not checked, {len(found)} known vulnerabilities")
for d in unchecked:
    print(f"  not checked: {d['name']} {d.get('version', '')}: {d['skip_reason']}")
sys.exit(1 if found else 0)
PYEOF

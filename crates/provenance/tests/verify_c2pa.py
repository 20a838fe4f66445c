"""Reads C2PA manifests with the official c2pa Python package (c2pa-python),
independently of the Rust crate that wrote them.

Usage: verify_c2pa.py EXPECT:MIME:PATH ...
  EXPECT is `valid` (manifest present, c2pa.created with trainedAlgorithmicMedia,
  no integrity failure) or `tampered` (validation must report an integrity
  failure, e.g. assertion.dataHash.mismatch) or `unsigned` (no manifest at all).

Trust is not integrity: the development certificate chains to a CA that no
trust list holds, so `signingCredential.untrusted` is expected and reported
separately; any other failure code (a signature that does not verify, a hash
that does not match, a malformed manifest) is an integrity failure.

Prints one JSON report (a list, one object per file) on stdout; exits 1 if any
file did not meet its expectation (reasons on stderr).
"""

import io
import json
import sys

import c2pa

TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
# Codes about whether the signer is trusted, not whether the bytes are intact.
TRUST_CODES = {
    "signingCredential.untrusted",
    "timeStamp.untrusted",
}


def failure_codes(store):
    codes = []
    for status in store.get("validation_status") or []:
        codes.append(status["code"])
    results = (store.get("validation_results") or {}).get("activeManifest") or {}
    for status in results.get("failure") or []:
        codes.append(status["code"])
    return sorted(set(codes))


def created_actions(manifest):
    found = []
    for assertion in manifest.get("assertions", []):
        if assertion.get("label") in ("c2pa.actions", "c2pa.actions.v2"):
            for action in assertion.get("data", {}).get("actions", []):
                if action.get("action") == "c2pa.created":
                    found.append(action)
    return found


def generation(manifest):
    for assertion in manifest.get("assertions", []):
        if assertion.get("label") == "ai.anyaccel.generation":
            return assertion.get("data")
    return None


def inspect(mime, path):
    report = {"path": path, "mime": mime, "sdk_version": c2pa.sdk_version()}
    with open(path, "rb") as f:
        data = f.read()
    try:
        with c2pa.Reader(mime, io.BytesIO(data)) as reader:
            store = json.loads(reader.json())
            report["validation_state"] = str(reader.get_validation_state())
    except Exception as e:  # c2pa.C2paError and friends: no readable manifest
        report["error"] = f"{type(e).__name__}: {e}"
        report["has_manifest"] = False
        return report
    active = store.get("active_manifest")
    manifest = (store.get("manifests") or {}).get(active) if active else None
    report["has_manifest"] = manifest is not None
    codes = failure_codes(store)
    report["trust_failures"] = [c for c in codes if c in TRUST_CODES]
    report["integrity_failures"] = [c for c in codes if c not in TRUST_CODES]
    if manifest is not None:
        created = created_actions(manifest)
        report["created_actions"] = created
        report["created_trained_algorithmic_media"] = any(
            a.get("digitalSourceType") == TRAINED for a in created
        )
        report["generation"] = generation(manifest)
        report["claim_generator_info"] = manifest.get("claim_generator_info")
        report["signature_info"] = manifest.get("signature_info")
    return report


def problems(expect, report):
    out = []
    if expect == "valid":
        if not report.get("has_manifest"):
            out.append(f"no manifest found ({report.get('error', 'no active manifest')})")
            return out
        if not report.get("created_trained_algorithmic_media"):
            out.append(f"no c2pa.created action with {TRAINED}: {report.get('created_actions')}")
        if report["integrity_failures"]:
            out.append(f"integrity failures: {report['integrity_failures']}")
        if report.get("validation_state") not in ("Valid", "Trusted"):
            out.append(f"validation state {report.get('validation_state')}")
    elif expect == "tampered":
        if report.get("has_manifest") and not report.get("integrity_failures"):
            out.append("tampered file validated without an integrity failure")
        if report.get("validation_state") in ("Valid", "Trusted"):
            out.append(f"tampered file reads as {report['validation_state']}")
    elif expect == "unsigned":
        if report.get("has_manifest"):
            out.append("expected no manifest, found one")
    else:
        out.append(f"unknown expectation {expect!r}")
    return out


def main(argv):
    reports, failed = [], False
    for arg in argv:
        expect, mime, path = arg.split(":", 2)
        report = inspect(mime, path)
        report["expect"] = expect
        report["problems"] = problems(expect, report)
        for p in report["problems"]:
            failed = True
            print(f"{path} ({expect}): {p}", file=sys.stderr)
        reports.append(report)
    json.dump(reports, sys.stdout, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

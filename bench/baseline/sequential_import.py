#!/usr/bin/env python3
"""The baseline of `scripts/bench-contenders.sh`: the user import as a tenant's IT department would
script it, one row after the other, with the standard library and `requests` (urllib when
`requests` is missing; the script says which it used).

1. FTPS (explicit TLS, `ftplib.FTP_TLS`): download /uploads/user-import.csv.
2. For every row: `GetUser`; `SetUser` create (404) or update (when a field or a group differs);
   then `GET /status/<tid>` until the write is final (pending: poll again after 0.1 s).
3. A results CSV (one line per row), uploaded to /reports/, and an email to the admin with the
   counts in the subject and the CSV attached (`smtplib`).

It prints one line `baseline rows=… created=… updated=… unchanged=… failed=… secs=…` and exits
non-zero when a row failed. Not part of the product: a benchmark contender, kept deliberately
plain (no threads, no retries).

    sequential_import.py --ftps-host H --ftps-port P --ftps-user U --key-file F --ca-file C \
        --api-base-url URL --domain D --smtp-host H --smtp-port P --to ADDR [--work-dir DIR]
"""

import argparse
import base64
import csv
import io
import json
import ftplib
import os
import smtplib
import ssl
import sys
import time
from email.message import EmailMessage

try:
    import requests

    HTTP_LIBRARY = "requests " + requests.__version__
except ImportError:  # pragma: no cover - depends on the machine
    requests = None
    import urllib.error
    import urllib.request

    HTTP_LIBRARY = "urllib (requests is not installed)"


class ReusingFtpTls(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS session, which vsftpd
    (`require_ssl_reuse=YES`) and most hardened servers demand; the well-known recipe."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(
                conn, server_hostname=self.host, session=self.sock.session
            )
        return conn, size


class Api:
    """`POST /<Call>` with a JSON body and HTTP Basic auth, one request at a time."""

    def __init__(self, base_url, domain, key):
        self.base_url = base_url.rstrip("/")
        self.auth = (domain, key)
        if requests is not None:
            self.session = requests.Session()
            self.session.auth = self.auth
        token = base64.b64encode(f"{domain}:{key}".encode()).decode()
        self.header = {"Authorization": "Basic " + token, "Content-Type": "application/json"}

    def call(self, method, path, body=None):
        """(status, json or None, headers)."""
        url = self.base_url + path
        if requests is not None:
            r = self.session.request(method, url, json=body, timeout=30)
            try:
                data = r.json()
            except ValueError:
                data = None
            return r.status_code, data, r.headers
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers=self.header)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw, status, headers = r.read(), r.status, r.headers
        except urllib.error.HTTPError as e:
            raw, status, headers = e.read(), e.code, e.headers
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return status, parsed, headers

    def wait_final(self, headers):
        """Polls the write's status until it is no longer pending (1); returns it."""
        tid = headers["Location"].rstrip("/").rsplit("/", 1)[-1]
        while True:
            status, answer, _ = self.call("GET", f"/status/{tid}")
            if status != 200:
                return {"status": 3, "message": f"HTTP {status}"}
            if answer.get("status") != 1:
                return answer
            time.sleep(0.1)


def connect(args, key):
    context = ssl.create_default_context(cafile=args.ca_file)
    ftp = ReusingFtpTls(context=context)
    ftp.connect(args.ftps_host, args.ftps_port, timeout=60)
    ftp.login(args.ftps_user, key)
    ftp.prot_p()
    return ftp


def import_rows(api, path, results):
    """Imports every row; returns the counts."""
    status, fields, _ = api.call("POST", "/GetProfileFields", {})
    if status != 200:
        sys.exit(f"GetProfileFields: HTTP {status}")
    key_of = {f["label"]: k for k, f in fields.items()}
    counts = {"rows": 0, "created": 0, "updated": 0, "unchanged": 0, "failed": 0}
    writer = csv.writer(results)
    writer.writerow(["line", "username", "result", "message"])
    with open(path, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            counts["rows"] += 1
            result, message = import_row(api, row, key_of)
            counts[result] += 1
            writer.writerow([line, row.get("Username", ""), result, message])
    return counts


def import_row(api, row, key_of):
    groups = [g.strip() for g in (row.pop("Groups", "") or "").split(";") if g.strip()]
    profile = {key_of[label]: value for label, value in row.items() if label in key_of and value}
    uid = profile["username"]
    status, user, _ = api.call("POST", "/GetUser", {"params": {"uid": uid}})
    if status == 404:
        body = {
            "params": {"action": "create"},
            "profile": profile,
            "groups": [{"name": g} for g in groups],
        }
        result = "created"
    elif status == 200:
        changed = {k: v for k, v in profile.items() if user["profile"].get(k, "") != v}
        have = {g["name"] for g in user.get("groups", [])}
        missing = [g for g in groups if g not in have]
        if not changed and not missing:
            return "unchanged", ""
        body = {
            "params": {"action": "update", "uid": uid},
            "profile": changed,
            "groups": [{"name": g, "action": "add"} for g in missing],
        }
        result = "updated"
    else:
        return "failed", f"GetUser: HTTP {status}"
    status, _, headers = api.call("POST", "/SetUser", body)
    if status != 202:
        return "failed", f"SetUser: HTTP {status}"
    final = api.wait_final(headers)
    if final.get("status") != 2:
        return "failed", json.dumps(final.get("errors") or final.get("message"))
    return result, ""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("ftps-host", "ftps-user", "key-file", "ca-file", "api-base-url", "domain"):
        p.add_argument("--" + name, required=True)
    p.add_argument("--ftps-port", type=int, default=21)
    p.add_argument("--smtp-host", default="127.0.0.1")
    p.add_argument("--smtp-port", type=int, default=25)
    p.add_argument("--to", required=True)
    p.add_argument("--work-dir", default=".")
    args = p.parse_args()
    started = time.monotonic()
    with open(args.key_file, encoding="ascii") as f:
        key = f.read().strip()
    local = os.path.join(args.work_dir, "baseline-user-import.csv")
    ftp = connect(args, key)
    with open(local, "wb") as out:
        ftp.retrbinary("RETR /uploads/user-import.csv", out.write)
    ftp.quit()

    api = Api(args.api_base_url, args.domain, key)
    results = io.StringIO()
    counts = import_rows(api, local, results)
    report = results.getvalue().encode()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"user-import-baseline-{stamp}.csv"

    ftp = connect(args, key)  # a fresh session: the first one may have timed out meanwhile
    ftp.storbinary(f"STOR /reports/{name}", io.BytesIO(report))
    ftp.quit()

    msg = EmailMessage()
    msg["From"] = "user-import-script@example.com"
    msg["To"] = args.to
    msg["Subject"] = (
        f"User import: {counts['rows']} rows, {counts['created']} created, "
        f"{counts['updated']} updated, {counts['unchanged']} unchanged, {counts['failed']} failed"
    )
    msg.set_content("The user import has run; the report is attached.\n")
    msg.add_attachment(report, maintype="text", subtype="csv", filename=name)
    with smtplib.SMTP(args.smtp_host, args.smtp_port, timeout=60) as smtp:
        smtp.send_message(msg)
    os.remove(local)

    secs = time.monotonic() - started
    print(
        "baseline rows={rows} created={created} updated={updated} unchanged={unchanged} "
        "failed={failed} secs={secs:.2f} http={http}".format(
            secs=secs, http=HTTP_LIBRARY.split()[0], **counts
        )
    )
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

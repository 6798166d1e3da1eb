"""Signing the way CallRail (HMAC-SHA1 `Signature`) and a form sender (Standard Webhooks) sign, with a tenant's key
from the tenants file. Used by scripts/send-webhook and scripts/replay-day."""
import base64, hashlib, hmac, os, pathlib, time, tomllib, uuid

root = pathlib.Path(__file__).resolve().parent.parent


def tenants_file():
    return pathlib.Path(os.environ.get("CALLFLOW_TENANTS", root / "fixtures/tenants.toml"))


def tenant(tenant_id):
    path = tenants_file()
    found = next((t for t in tomllib.loads(path.read_text())["tenant"] if t["id"] == tenant_id), None)
    if found is None:
        raise SystemExit(f"no tenant {tenant_id} in {path}")
    return found


def secret(ref):
    kind, _, value = ref.partition(":")
    if kind == "env":
        return os.environ[value].strip()
    if kind == "file":
        return (tenants_file().parent / value).read_text().strip()
    raise SystemExit(f"cannot read secret {ref} from here")


def signed(tenant_id, body, form):
    """(path, headers) of a signed request for `body` (bytes)."""
    t = tenant(tenant_id)
    headers = {"content-type": "application/json"}
    if form:
        key = base64.b64decode(secret(t["forms"]["signing_keys"][0]).removeprefix("whsec_"))
        msg_id, ts = f"msg_{uuid.uuid4().hex}", str(int(time.time()))
        mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
        headers |= {"webhook-id": msg_id, "webhook-timestamp": ts,
                    "webhook-signature": "v1," + base64.b64encode(mac).decode()}
        return f"/webhooks/forms/{tenant_id}", headers
    key = secret(t["callrail"]["signing_keys"][0]).encode()
    headers["signature"] = base64.b64encode(hmac.new(key, body, hashlib.sha1).digest()).decode()
    return f"/webhooks/callrail/{tenant_id}", headers

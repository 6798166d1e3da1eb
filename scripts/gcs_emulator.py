"""The GCS emulator from PyPI (gcp-storage-emulator), made to answer media downloads as Cloud Storage does.

Cloud Storage answers every media download (`GET .../o/NAME?alt=media`) with the object's `x-goog-generation`,
`x-goog-metageneration`, `x-goog-stored-content-length` and `x-goog-stored-content-encoding` headers, and with 404
when a `generation` is asked for that is not the live one
(https://cloud.google.com/storage/docs/json_api/v1/objects/get). The emulator sends none of those headers and
ignores `generation`, and the official Rust client refuses a download without `x-goog-generation`. This wrapper
adds exactly that documented behaviour, from the emulator's own object record, and changes nothing else, so
callflow's production code (the official client) is what the tests run. Two more documented behaviours are added the
same way: listings in pages (`maxResults`, `pageToken`), and resumable-upload session URLs that point back at the
emulator's own port.

Usage: python scripts/gcs_emulator.py start --host 127.0.0.1 --port 9023 --in-memory  (the emulator's own CLI)
"""

import json
import sys
from http import HTTPStatus
from urllib.parse import urlparse

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except NotFound:
        obj = None
    wanted = request.query.get("generation", [None])[0]
    if obj is not None and wanted is not None and str(wanted) != str(obj["generation"]):
        response.status = HTTPStatus.NOT_FOUND
        response.json({"error": {"code": 404, "message": "No such object generation."}})
        return
    _download(request, response, storage, *args, **kwargs)
    if obj is not None and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
        response["x-goog-stored-content-length"] = str(obj["size"])
        response["x-goog-stored-content-encoding"] = obj.get("contentEncoding") or "identity"


def ls(request, response, storage, *args, **kwargs):
    """Object listings in pages, as Cloud Storage serves them: at most `maxResults` entries (default 1,000), in
    name order, with `nextPageToken` while more remain; the emulator returns everything at once and ignores both.
    The token is opaque to clients; here it is the last name of the page."""
    _ls(request, response, storage, *args, **kwargs)
    if response.status != HTTPStatus.OK or not isinstance(response._content, str):
        return
    listing = json.loads(response._content)
    items = sorted(listing.get("items") or [], key=lambda o: o["name"])
    token = request.query.get("pageToken", [None])[0]
    if token:
        items = [o for o in items if o["name"] > token]
    size = max(1, min(int(request.query.get("maxResults", ["1000"])[0]), 1000))
    listing["items"] = items[:size]
    if len(items) > size:
        listing["nextPageToken"] = items[size - 1]["name"]
    response.json(listing)


_ls = objects.ls
objects.ls = ls

# The server's routing table captures handler functions when it is imported, so patch before importing it.
objects.download = download

import gcp_storage_emulator.server as server_module  # noqa: E402
from gcp_storage_emulator.__main__ import main  # noqa: E402

# Resumable uploads answer with a session URL the emulator builds from the request's Host header. The official Rust
# client sends the endpoint's host without its port (google-cloud-gax-internal's `host::header` drops it, which is
# harmless on storage.googleapis.com:443), so that URL would point at port 80. Cloud Storage's session URLs point
# back at the service itself, so when Host carries no port the emulator uses the address it listens on.
_request_init = server_module.Request.__init__


def request_init(self, request_handler, method):
    _request_init(self, request_handler, method)
    host = request_handler.headers.get("Host") or ""
    if host and ":" not in host.rsplit("]", 1)[-1]:
        address, port = request_handler.server.server_address[:2]
        self._base_url = "http://{}:{}".format(address, port)
        self._full_url = self._base_url + self._path
        self._parsed_url = urlparse(self._full_url)


server_module.Request.__init__ = request_init

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

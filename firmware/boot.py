"""Runs first at every boot: finishes a firmware update, or ignores a partial one.

``cityedge firmware flash`` copies the new files into ``next/`` and writes ``next/manifest.json``
last. Here, every file the manifest lists must be present with its sha256, else the board keeps
running what it has (a copy cut half-way never boots). A switch in progress is journalled in
``switch.json``, so a power cut during the renames is finished at the next boot.
"""

import json
import os

try:
    from binascii import hexlify
    from hashlib import sha256
except ImportError:  # a port without hashlib cannot verify: it never switches
    sha256 = None


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _digest(path):
    h = sha256()
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(512)
            if not chunk:
                break
            h.update(chunk)
    return hexlify(h.digest()).decode()


def _makedirs(path):
    parts = path.split("/")[:-1]
    done = ""
    for part in parts:
        done = part if not done else done + "/" + part
        if not _exists(done):
            os.mkdir(done)


def _plan():
    if _exists("switch.json"):
        with open("switch.json") as handle:
            return json.load(handle)
    if sha256 is None or not _exists("next/manifest.json"):
        return None
    try:
        with open("next/manifest.json") as handle:
            files = json.load(handle)["files"]
    except (OSError, ValueError, KeyError):
        return None
    for rel, digest in files.items():
        path = "next/" + rel
        if not _exists(path) or _digest(path) != digest:
            return None
    plan = sorted(files) + ["manifest.json"]
    with open("switch.tmp", "w") as handle:
        json.dump(plan, handle)
    os.rename("switch.tmp", "switch.json")
    return plan


def switch():
    """Move a complete ``next/`` into place; returns True when a new firmware was installed."""
    plan = _plan()
    if plan is None:
        return False
    for rel in plan:
        src = "next/" + rel
        if _exists(src):
            _makedirs(rel)
            if _exists(rel):
                os.remove(rel)
            os.rename(src, rel)
    os.remove("switch.json")
    _rmtree("next")
    return True


def _rmtree(path):
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        child = path + "/" + name
        try:
            os.remove(child)
        except OSError:
            _rmtree(child)
    os.rmdir(path)


switch()

"""Object stores addressed by URI. `file://` (a local directory) is built in; a bucket scheme
(`s3://`) plugs in behind the same three calls, so callers never see paths."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse


class ObjectStore(Protocol):
    """Where upload objects live. Keys are relative, '/'-separated names."""

    def put(self, key: str, data: bytes) -> str:
        """Store `data` under `key` (atomically: a reader sees all of it or nothing); returns its URI."""
        ...

    def get(self, uri: str) -> bytes:
        """The object's bytes; raises FileNotFoundError when absent."""
        ...

    def stat(self, uri: str) -> tuple[int, str]:
        """(size in bytes, sha256 hex) of the object; raises FileNotFoundError when absent."""
        ...


class FileObjectStore:
    """A directory as an object store: `file:///abs/dir` → objects under that directory."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise ValueError(f"{uri!r} is not a file:// URI")
        path = Path(unquote(parsed.path)).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"{uri!r} lies outside the store {self.root}")
        return path

    def put(self, key: str, data: bytes) -> str:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"key {key!r} escapes the store")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, path)  # a crash mid-write leaves a .partial, never a short object
        return path.as_uri()

    def get(self, uri: str) -> bytes:
        return self._path(uri).read_bytes()

    def stat(self, uri: str) -> tuple[int, str]:
        data = self.get(uri)
        return len(data), hashlib.sha256(data).hexdigest()


def open_store(url: str) -> ObjectStore:
    """The store for `url` (Settings.object_store_url). Raises ValueError for an unsupported scheme."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileObjectStore(Path(unquote(parsed.path)))
    raise ValueError(f"object store {url!r}: only file:// is built in (an s3:// store implements ObjectStore "
                     "with put/get/stat over a bucket client)")

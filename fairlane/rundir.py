"""Where a running Fairlane keeps its files: one directory per instance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def bootstrap(self) -> Path:
        return self.root / "envoy.json"

    @property
    def cds(self) -> Path:
        # Its own directory: Envoy watches the directory for the rename.
        return self.root / "cds" / "cds.json"

    @property
    def tls_secret(self) -> Path:
        """The listener's certificate (SDS), in a directory of its own like ``cds``,
        private to this user (``fairlane.certificates``)."""
        return self.root / "sds" / "tls.json"

    @property
    def client_ca_secret(self) -> Path:
        """The CAs that sign client certificates (SDS), beside ``tls_secret``."""
        return self.root / "sds" / "client_ca.json"

    @property
    def engine_states(self) -> Path:
        return self.root / "engines.json"

    @property
    def demand(self) -> Path:
        """Written by the worker: requests per engine, for lazy loading and eviction."""
        return self.root / "demand.json"

    @property
    def worker_socket(self) -> Path:
        return self.root / "worker.sock"

    @property
    def pid_file(self) -> Path:
        return self.root / "fairlane.pid"

    @property
    def access_log(self) -> Path:
        return self.root / "access.log"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def create(self) -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self.cds.parent.mkdir(parents=True, exist_ok=True)

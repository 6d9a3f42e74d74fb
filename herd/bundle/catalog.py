"""What has been imported: bundles, models and blobs, in the state database.

The files in the store are the truth about content (content-addressed); these
tables record provenance (which bundle, who signed, what the scan said, when)
and which bundle owns each model name, so `herd bundle rm` knows what to drop.
Blob usage is derived from the models' manifests, never counted by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from herd.bundle.progress import human_bytes
from herd.store import Store, now_iso

NAMESPACE = "bundle"


def _m1_catalog(db: sqlite_utils.Database) -> None:
    db["bundles"].create(
        {
            "name": str,
            "sha256": str,
            "created": str,
            "signer": str,
            "scan_tool": str,
            "scan_verdict": str,
            "scan_report": str,
            "source": str,
            "imported": str,
            "size": int,
        },
        pk="name",
    )
    db["bundle_models"].create(
        {
            "name": str,
            "bundle": str,
            "digest": str,
            "size": int,
            "blobs": str,
            "imported": str,
        },
        pk="name",
    )
    db["bundle_models"].create_index(["bundle"])
    db["bundle_blobs"].create(
        {"digest": str, "size": int, "media_type": str, "bundle": str, "imported": str},
        pk="digest",
    )


def _m2_store_path(db: sqlite_utils.Database) -> None:
    """Remember which store each bundle went to (rm must find it again)."""
    db["bundles"].add_column("store", str)


MIGRATIONS = (_m1_catalog, _m2_store_path)


@dataclass(frozen=True)
class ModelRow:
    name: str
    bundle: str
    digest: str
    size: int
    blobs: tuple[str, ...]
    imported: str


class Catalog:
    """The bundle tables of one state store."""

    def __init__(self, store: Store):
        self.store = store
        store.ensure(NAMESPACE, MIGRATIONS)
        self.db = store.db

    def record_import(
        self,
        bundle: dict[str, Any],
        models: list[tuple[str, str, int, list[str]]],
        blobs: list[tuple[str, int, str]],
    ) -> None:
        """One transaction: the bundle row, its models (name -> owner), blobs."""
        when = now_iso()
        with self.store.transaction():
            self.db["bundles"].upsert({**bundle, "imported": when}, pk="name")
            for name, digest, size, used in models:
                self.db["bundle_models"].upsert(
                    {
                        "name": name,
                        "bundle": bundle["name"],
                        "digest": digest,
                        "size": size,
                        "blobs": json.dumps(used),
                        "imported": when,
                    },
                    pk="name",
                )
            for digest, size, media_type in blobs:
                if self.db["bundle_blobs"].count_where("digest = ?", [digest]) == 0:
                    self.db["bundle_blobs"].insert(
                        {
                            "digest": digest,
                            "size": size,
                            "media_type": media_type,
                            "bundle": bundle["name"],
                            "imported": when,
                        }
                    )
            self.store.audit(
                "bundle.import", {**bundle, "models": [m[0] for m in models]}
            )

    def bundles(self) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM bundles ORDER BY imported, name"))

    def bundle(self, name: str) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM bundles WHERE name = ?", [name]))
        return rows[0] if rows else None

    def models(self, bundle: str | None = None) -> list[ModelRow]:
        sql = "SELECT * FROM bundle_models"
        args: list[str] = []
        if bundle is not None:
            sql += " WHERE bundle = ?"
            args.append(bundle)
        return [
            ModelRow(
                r["name"],
                r["bundle"],
                r["digest"],
                r["size"],
                tuple(json.loads(r["blobs"] or "[]")),
                r["imported"],
            )
            for r in self.db.query(sql + " ORDER BY name", args)
        ]

    def blob_digests(self) -> set[str]:
        return {r["digest"] for r in self.db.query("SELECT digest FROM bundle_blobs")}

    def forget(self, bundle: str, models: list[str], blobs: list[str]) -> None:
        """Drop a bundle, the model names it owns and the blobs now unused."""
        with self.store.transaction():
            for name in models:
                self.db["bundle_models"].delete_where("name = ?", [name])
            for digest in blobs:
                self.db["bundle_blobs"].delete_where("digest = ?", [digest])
            self.db["bundles"].delete_where("name = ?", [bundle])
            self.store.audit(
                "bundle.remove", {"bundle": bundle, "models": models, "blobs": blobs}
            )


def inventory(catalog: Catalog) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Bundles, and one row per model with its bundle's signer and scan verdict."""
    bundles = {b["name"]: b for b in catalog.bundles()}
    rows = []
    for m in catalog.models():
        b = bundles.get(m.bundle, {})
        rows.append(
            {
                "model": m.name,
                "digest": m.digest,
                "size": m.size,
                "bundle": m.bundle,
                "signer": b.get("signer", ""),
                "scan": b.get("scan_verdict", ""),
                "imported": m.imported,
            }
        )
    return list(bundles.values()), rows


def render_table(rows: list[dict[str, Any]]) -> str:
    """The `herd bundle list` table ('' when there is nothing to show)."""
    if not rows:
        return ""
    header = ("MODEL", "DIGEST", "SIZE", "BUNDLE", "SIGNER", "SCAN", "IMPORTED")
    table = [header] + [
        (
            r["model"],
            r["digest"].removeprefix("sha256:")[:12],
            human_bytes(r["size"]),
            r["bundle"],
            r["signer"],
            r["scan"],
            r["imported"],
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    )

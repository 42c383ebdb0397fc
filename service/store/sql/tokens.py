"""API tokens: only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Row, insert, select, update

from mixopt.errors import NotFound
from service.store.base import Page, TokenRecord
from service.store.models import ApiToken
from service.store.sql._base import SqlStoreBase, _keyset, _page, _parse_id

__all__ = ["TokenStore"]


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore(SqlStoreBase):
    @staticmethod
    def _token(row: Row[Any]) -> TokenRecord:
        return TokenRecord(
            id=str(row.id),
            name=row.name,
            scope=row.scope,
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
        )

    def create_token(
        self, name: str, scope: str, expires_at: datetime | None
    ) -> tuple[TokenRecord, str]:
        secret = "mxo_" + secrets.token_urlsafe(32)  # 256 random bits
        with self._write() as conn:
            row = conn.execute(
                insert(ApiToken)
                .values(
                    name=name,
                    scope=scope,
                    token_hash=hash_token(secret),
                    created_at=self._clock(),
                    expires_at=expires_at,
                )
                .returning(*ApiToken.__table__.columns)
            ).one()
        return self._token(row), secret

    def find_token(self, secret: str) -> TokenRecord | None:
        digest = hash_token(secret)
        with self._read() as conn:
            row = conn.execute(select(ApiToken).where(ApiToken.token_hash == digest)).first()
        # The index finds the row; the comparison that decides is constant-time.
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        return self._token(row)

    def list_tokens(self, *, limit: int, cursor: str | None) -> Page[TokenRecord]:
        query = _keyset(select(ApiToken), ApiToken.id, cursor, limit)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return _page(rows, limit, self._token)

    def revoke_token(self, token_id: str) -> TokenRecord:
        tid = _parse_id(token_id, "token")
        with self._write() as conn:
            conn.execute(
                update(ApiToken)
                .where(ApiToken.id == tid, ApiToken.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            )
            row = conn.execute(select(ApiToken).where(ApiToken.id == tid)).first()
        if row is None:
            raise NotFound(f"token {tid} not found")
        return self._token(row)

"""The FriendlyName tag of a binding certificate in a Windows store, as MSAL.NET and MSAL Go write
and read it, plus msicert's own ``key=value`` pairs::

    MSAL|alias=<alias>|ep=<mTLS endpoint>/<tenant>|cid=<client id>|type=<identity type>
        |key=<key kind>|sel=<selector kind>

``alias`` is the references' cache key: the id exactly as configured (the client id, object
id or ARM resource id; ``system_assigned_managed_identity`` for the system-assigned identity)
followed by ``#att=1`` when the certificate was minted with attestation and ``#att=0``
otherwise (MSAL.NET ``ImdsV2ManagedIdentitySource.GetMtlsCertCacheKey``, MSAL Go
``cacheKey``). The two variants are different entries, never interchangeable. The decoder
reads ``alias`` and ``ep`` and ignores the other pairs, which are msicert's.

Matching an entry to an identity:

* writing and pruning compare the alias ordinally with the one written (the references'
  ``StringComparer.Ordinal``): only the exact string, never a prefix or another case;
* reading (a store hit) also accepts another case of the same id, so an entry MSAL.NET wrote
  for ``ABC...`` is found by msicert configured with ``abc...``; the ``#att`` variant must still
  be the reader's;
* two older forms are read, by a reader without attestation only: msicert's tag before this
  grammar (``alias=system`` / ``alias=client_id=<guid>`` with ``cid``, ``tid`` and ``type``)
  and MSAL.NET's alias before it had the ``#att`` suffix.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..._errors import StoreError
from ..._identity import Identity
from ..contract import CorruptEntry

if TYPE_CHECKING:
    from msicert_native import KeyProvInfo

__all__ = ["REFERENCE_SYSTEM_ALIAS", "TAG_PREFIX", "Metadata", "alias_base", "format_tag",
           "metadata", "parse_tag", "reference_alias", "split_alias", "tag_names"]

TAG_PREFIX = "MSAL|"
# MSAL.NET: Constants.ManagedIdentityDefaultClientId, the system-assigned identity's cache key.
REFERENCE_SYSTEM_ALIAS = "system_assigned_managed_identity"
_VARIANT = re.compile(r"(.*)#att=([01])", re.S)
_ILLEGAL = ("|", "\r", "\n", "\0")  # what the reference's encoder refuses in a value
_KEYGUARD_CONTAINER = "KeyGuardRSAKey"  # MSAL.NET WindowsCngKeyOperations.KeyGuardKeyName


class _Minted(Protocol):
    @property
    def tenant_id(self) -> str: ...
    @property
    def mtls_endpoint(self) -> str: ...
    @property
    def client_id(self) -> str: ...
    @property
    def identity_type(self) -> str: ...


def alias_base(identity: Identity) -> str:
    """The references' alias without its variant: the id as configured."""
    if identity.kind == "system":
        return REFERENCE_SYSTEM_ALIAS
    return identity.configured


def reference_alias(identity: Identity, *, attested: bool) -> str:
    """The references' alias (cache key) for ``identity``: ``<id as configured>#att=<0|1>``."""
    return f"{alias_base(identity)}#att={1 if attested else 0}"


def split_alias(alias: str) -> tuple[str, int | None]:
    """``(id, variant)`` of an alias; variant None when it has no ``#att=0|1`` suffix."""
    match = _VARIANT.fullmatch(alias)
    return (match.group(1), int(match.group(2))) if match else (alias, None)


def format_tag(identity: Identity, entry: _Minted, kind: str, *, attested: bool = False) -> str:
    """The FriendlyName for one entry (reference grammar plus msicert's extra pairs)."""
    fields = {
        "alias": reference_alias(identity, attested=attested),
        "ep": f"{entry.mtls_endpoint.rstrip('/')}/{entry.tenant_id.strip('/')}",
        "cid": entry.client_id, "type": entry.identity_type, "key": kind, "sel": identity.kind,
    }
    fields = {k: v.strip() for k, v in fields.items()}  # the reference decoder trims them
    for value in fields.values():
        if not value or any(c in value for c in _ILLEGAL):
            raise StoreError("refusing to tag an entry with '|', a line break, NUL or blank "
                             "text in its metadata")
    return TAG_PREFIX + "|".join(f"{k}={v}" for k, v in fields.items())


def parse_tag(text: str | None) -> dict[str, str] | None:
    """The tag's ``key=value`` pairs, or None when MSAL.NET's decoder would refuse it.

    Decoded as the reference decodes: the ``MSAL|`` prefix, then ``|``-separated pairs split
    at the first ``=``, keys and values trimmed, pieces without ``=`` skipped, the last of a
    repeated key wins; ``alias`` and ``ep`` must be non-blank.
    """
    if not text or not text.startswith(TAG_PREFIX):
        return None
    fields: dict[str, str] = {}
    for part in text[len(TAG_PREFIX):].split("|"):
        name, sep, value = part.partition("=")
        if sep:
            fields[name.strip()] = value.strip()
    if not fields.get("alias") or not fields.get("ep"):
        return None
    return fields


def tag_names(fields: dict[str, str], identity: Identity, *,
              attested: bool | None = None) -> str | None:
    """``"reference"`` or ``"legacy"`` when a reader of ``identity`` takes this tag as one of
    its entries, else None. ``attested`` is the reader's variant (None: any, for ``purge``).

    The id compares without case (GUIDs and ARM ids are case-insensitive; MSAL.NET keeps the
    case its caller configured), whole: an id that merely starts with ours is another's.
    ``sel`` (msicert's) keeps a client id and an object id apart; an MSAL.NET tag has none,
    and the certificate's subject decides.
    """
    alias = fields["alias"]
    if alias == identity.alias:  # msicert's tag before the reference grammar
        if attested is True or not all(fields.get(n) for n in ("cid", "tid", "type")):
            return None
        return "legacy"
    base, variant = split_alias(alias)
    if base.casefold() != alias_base(identity).casefold():
        return None
    if attested is not None and variant != int(attested) and not (
            variant is None and not attested):
        return None
    if fields.get("sel", identity.kind) != identity.kind:
        return None
    return "reference"


@dataclass(frozen=True)
class Metadata:
    """What the token leg needs, as the tag (completed from the certificate) says."""

    client_id: str
    tenant_id: str
    mtls_endpoint: str
    identity_type: str
    key: str


def _subject_value(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    values = cert.subject.get_attributes_for_oid(oid)
    value = values[0].value if len(values) == 1 else None
    return value if isinstance(value, str) else None


def metadata(
    fields: dict[str, str], how: str, cert: x509.Certificate, identity: Identity,
    info: KeyProvInfo,
) -> Metadata:
    """The token-leg metadata of a tag, completed from the certificate when the tag is
    MSAL.NET's (CorruptEntry when neither has it)."""
    if how == "legacy":
        return Metadata(fields["cid"], fields["tid"], fields["ep"], fields["type"],
                        fields.get("key", "software-ksp"))
    parts = urlsplit(fields["ep"])
    if parts.scheme.lower() != "https" or not parts.netloc:
        raise CorruptEntry("its tag's ep is not an https URL")
    path, _, tenant = parts.path.rstrip("/").rpartition("/")
    endpoint = f"{parts.scheme}://{parts.netloc}{path}"
    if not tenant:  # the reference allows ep without a tenant: the subject's DC is the tenant
        tenant, endpoint = _subject_value(cert, NameOID.DOMAIN_COMPONENT) or "", fields["ep"]
    if not tenant:
        raise CorruptEntry("neither its tag's ep nor its subject names a tenant")
    client_id = fields.get("cid", "")
    if not client_id:  # MSAL.NET: the subject CN (a GUID) is the canonical client id
        cn = _subject_value(cert, NameOID.COMMON_NAME) or ""
        try:
            client_id = str(uuid.UUID(cn))
        except ValueError:
            raise CorruptEntry("its subject CN is not a client id GUID") from None
    identity_type = fields.get("type") or (
        "SystemAssigned" if identity.kind == "system" else "UserAssigned")
    key = fields.get("key") or (
        "keyguard" if info.container == _KEYGUARD_CONTAINER else "software-ksp")
    return Metadata(client_id, tenant, endpoint.rstrip("/"), identity_type, key)

"""The selector exactly as configured, next to msicert's own normalised keys.

What the reference clients do with the configured id (AzureAD/microsoft-authentication-
library-for-dotnet @ 39d200113): ``ManagedIdentityApplicationBuilder`` keeps it as
``Config.ClientId`` and ``ImdsManagedIdentitySource.ImdsQueryParamsHelper`` sends it unchanged;
MSAL Go's IMDSv2 ``endpoint`` does ``q.Set("client_id", string(t))``. msicert's own keys (the
file store's names, its mutex, its logs) stay as they were: lower-case GUIDs.
"""

from __future__ import annotations

import os

import pytest

from msicert import Identity
from msicert.backends.posix._file_store import FileStore

GUID = "C0FFEE00-1111-4222-8333-44445555AAAA"
ARM = ("/subscriptions/S/resourceGroups/G/providers/Microsoft.ManagedIdentity/"
       "userAssignedIdentities/U")


@pytest.mark.parametrize(("selector", "configured", "value", "alias", "file_tag", "query"), [
    ({}, "", "", "system", "", {}),
    ({"client_id": f"  {GUID}\n"}, GUID, GUID.lower(), f"client_id={GUID.lower()}",
     f"client_id-{GUID.lower()}", {"client_id": GUID}),
    ({"object_id": GUID.lower()}, GUID.lower(), GUID.lower(), f"object_id={GUID.lower()}",
     f"object_id-{GUID.lower()}", {"object_id": GUID.lower()}),
    ({"resource_id": ARM}, ARM, ARM, f"resource_id={ARM.lower()}", None, {"mi_res_id": ARM}),
])
def test_configured_selector_is_kept_while_msicert_keys_stay_normalised(
        selector, configured, value, alias, file_tag, query):
    ident = Identity.from_selectors(**selector)
    assert (ident.configured, ident.value, ident.alias, ident.query) == (
        configured, value, alias, query)
    if file_tag is not None:
        assert ident.file_tag == file_tag


def test_file_store_name_does_not_depend_on_the_configured_case(tmp_path):
    store = FileStore(str(tmp_path))
    upper = Identity.from_selectors(client_id=GUID)
    lower = Identity.from_selectors(client_id=GUID.lower())
    assert store.path_for(upper) == store.path_for(lower)
    assert os.path.basename(store.path_for(upper)) == f"msal_mtls.client_id-{GUID.lower()}.pem"
    assert upper == lower and hash(upper) == hash(lower)  # one identity, as before
    assert upper.configured != lower.configured


def test_a_directly_built_identity_is_configured_as_its_value():
    assert Identity("client_id", GUID.lower()).configured == GUID.lower()
    assert Identity().configured == ""


def test_imds_is_asked_with_the_client_id_as_configured_and_the_entry_found_again(
        emu, make_client, store_dir):
    first = make_client(client_id=GUID).get_certificate()
    assert first.source == "imds"
    selectors = {r.query.get("client_id") for r in emu.requests}
    assert selectors == {GUID}  # both IMDS legs: the configured case, as the references send
    assert emu.violations == []
    again = make_client(client_id=GUID.lower()).get_certificate()
    assert (again.source, again.x5t_s256) == ("store", first.x5t_s256)
    assert emu.count("issuecredential") == 1

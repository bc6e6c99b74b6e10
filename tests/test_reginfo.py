"""registrar_core/reginfo.py: the application/reginfo+xml documents, checked against the
schema of RFC 3680 §5.4 (tests/data/reginfo.xsd) by xmllint, and the event mapping."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from registrar_core import reginfo
from registrar_core.location import Contact
from registrar_core.reginfo import ACTIVE, INIT, TERMINATED, ContactInfo, document

from .xsd import reginfo_errors

NS = {"r": reginfo.NAMESPACE, "gr": reginfo.GRUU_NAMESPACE}
NOW = 1_800_000_000.0


def contact(ruid: str = "uloc-1", **kw) -> Contact:
    values = dict(q=0.5, params=';+sip.instance="<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>";reg-id=1;ob',
                  received="udp:192.0.2.1:5060", socket="udp:127.0.0.1:5060")
    values.update(kw)
    return Contact(ruid, "alice@example.com", "sip:alice@192.0.2.1:5060;transport=udp", NOW + 600,
                   'call<&>"id', 7, **values)


EVENTS = [reginfo.REGISTERED, reginfo.CREATED, reginfo.REFRESHED, reginfo.SHORTENED, reginfo.EXPIRED,
          reginfo.DEACTIVATED, reginfo.PROBATION, reginfo.UNREGISTERED, reginfo.REJECTED]


@pytest.mark.parametrize("event", EVENTS)
def test_every_event_validates_in_a_partial_document(event):
    state = ACTIVE if event in (reginfo.REGISTERED, reginfo.CREATED, reginfo.REFRESHED, reginfo.SHORTENED) \
        else TERMINATED
    body = document("alice@example.com", 3, False, state, [ContactInfo.of(contact(), state, event, NOW)])
    assert reginfo_errors(body) == ""
    root = ET.fromstring(body)
    assert (root.get("version"), root.get("state")) == ("3", "partial")
    element = root.find("r:registration/r:contact", NS)
    assert (element.get("state"), element.get("event"), element.get("id")) == (state, event, "uloc-1")


def test_full_state_with_every_attribute_escaped_and_the_params_as_unknown_params():
    body = document("alice@example.com", 0, True, ACTIVE,
                    [ContactInfo.of(contact(), ACTIVE, reginfo.REGISTERED, NOW),
                     ContactInfo.of(contact("uloc-2", q=None, params=""), ACTIVE, reginfo.REGISTERED, NOW)])
    assert reginfo_errors(body) == ""
    root = ET.fromstring(body)
    registration = root.find("r:registration", NS)
    assert registration.attrib == {"aor": "sip:alice@example.com", "id": "reg-alice-at-example.com",
                                   "state": "active"}
    first, second = registration.findall("r:contact", NS)
    assert first.attrib == {"id": "uloc-1", "state": "active", "event": "registered", "expires": "600",
                            "q": "0.5", "callid": 'call<&>"id', "cseq": "7"}
    assert first.find("r:uri", NS).text == "sip:alice@192.0.2.1:5060;transport=udp"
    params = [(p.get("name"), p.text) for p in first.findall("r:unknown-param", NS)]
    assert params == [("+sip.instance", '"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"'),
                      ("reg-id", "1"), ("ob", None)]
    assert "q" not in second.attrib and second.findall("r:unknown-param", NS) == []


def test_an_aor_without_contacts_is_init_and_the_last_one_gone_terminated():
    empty = document("bob@example.com", 0, True, INIT, [])
    assert reginfo_errors(empty) == ""
    assert ET.fromstring(empty).find("r:registration", NS).get("state") == "init"
    gone = document("bob@example.com", 5, False, TERMINATED,
                    [ContactInfo.of(contact(), TERMINATED, reginfo.EXPIRED, NOW)])
    assert reginfo_errors(gone) == ""
    element = ET.fromstring(gone).find("r:registration/r:contact", NS)
    assert element.get("expires") == "0"


def test_gruus_go_in_their_own_namespace_only_when_a_contact_has_them():
    info = replace(ContactInfo.of(contact(), ACTIVE, reginfo.REGISTERED, NOW),
                   pub_gruu="sip:alice@example.com;gr=urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
                   temp_gruu="sip:tgruu.7hs==jd7vnzga5w7fajsc7-ajd6fabz0f8g5@example.com;gr", temp_gruu_first_cseq=7)
    body = document("alice@example.com", 1, False, ACTIVE, [info])
    assert reginfo_errors(body) == ""
    element = ET.fromstring(body).find("r:registration/r:contact", NS)
    assert element.find("gr:pub-gruu", NS).get("uri").endswith(";gr=urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6")
    assert element.find("gr:temp-gruu", NS).get("first-cseq") == "7"
    plain = document("alice@example.com", 1, False, ACTIVE, [ContactInfo.of(contact(), ACTIVE, "registered", NOW)])
    assert b"gruuinfo" not in plain


def test_the_schema_check_rejects_what_rfc_3680_does_not_allow():
    body = document("alice@example.com", 0, True, ACTIVE, [ContactInfo.of(contact(), ACTIVE, "registered", NOW)])
    assert "event" in reginfo_errors(body.replace(b'event="registered"', b'event="bogus"'))
    assert reginfo_errors(body.replace(b' version="0"', b"")) != ""


def test_removal_reasons_and_refreshes_map_to_rfc_3680_events():
    assert reginfo.removal_event("unregistered") == reginfo.UNREGISTERED
    assert reginfo.removal_event("expired") == reginfo.EXPIRED
    assert reginfo.removal_event("admin") == reginfo.REJECTED
    for reason in ("connection-closed", "unreachable", "replaced", "evicted", "remote"):
        assert reginfo.removal_event(reason) == reginfo.DEACTIVATED
    assert reginfo.refresh_event(NOW + 600, NOW + 900) == reginfo.REFRESHED
    assert reginfo.refresh_event(NOW + 600, NOW + 600) == reginfo.REFRESHED
    assert reginfo.refresh_event(NOW + 600, NOW + 300) == reginfo.SHORTENED

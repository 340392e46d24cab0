"""Label and field selectors parse and match as the API server's do."""

import pytest

from jhub_suspend.localcluster.selectors import (
    ApiError,
    FieldRequirement,
    Requirement,
    fields_match,
    labels_match,
    make_selector,
    match_label_selector_object,
    parse_field_selector,
    parse_label_selector,
)

LABELS = {"app": "jupyterhub", "component": "singleuser-server", "tier": "3"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("app=jupyterhub", True),
        ("app==jupyterhub", True),
        ("app=other", False),
        ("app!=other", True),
        ("app!=jupyterhub", False),
        ("missing!=x", True),
        ("app in (jupyterhub, binderhub)", True),
        ("app in (binderhub)", False),
        ("app notin (binderhub)", True),
        ("app notin (jupyterhub,binderhub)", False),
        ("missing notin (x)", True),
        ("component", True),
        ("missing", False),
        ("!missing", True),
        ("!app", False),
        ("app=jupyterhub,component=singleuser-server", True),
        ("app=jupyterhub,component=hub", False),
        ("app in (a,jupyterhub),!missing,tier", True),
        ("tier>2", True),
        ("tier<2", False),
    ],
)
def test_label_selector_matches(selector: str, expected: bool) -> None:
    assert labels_match(parse_label_selector(selector), LABELS) is expected


def test_label_selector_parses_to_requirements() -> None:
    assert parse_label_selector("a in (y, x),b!=c,!d,e") == (
        Requirement("a", "in", ("x", "y")),
        Requirement("b", "!=", ("c",)),
        Requirement("d", "!"),
        Requirement("e", "exists"),
    )


def test_label_selector_with_prefixed_key() -> None:
    requirements = parse_label_selector("hub.jupyter.org/username=alice")
    assert labels_match(requirements, {"hub.jupyter.org/username": "alice"})
    assert not labels_match(requirements, {"username": "alice"})


@pytest.mark.parametrize(
    "selector",
    ["app in (a", "app in a)", "=x", "app=in valid", "bad key!=x", "app=" + "x" * 64, "t>x"],
)
def test_invalid_label_selector_is_bad_request(selector: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_label_selector(selector)
    assert info.value.code == 400
    assert info.value.reason == "BadRequest"


def test_no_labels_match_only_negative_requirements() -> None:
    assert labels_match(parse_label_selector("!a,b!=c"), None)
    assert not labels_match(parse_label_selector("a"), None)


def test_structured_label_selector() -> None:
    selector = {
        "matchLabels": {"app": "jupyterhub"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["3", "4"]},
            {"key": "gone", "operator": "DoesNotExist"},
        ],
    }
    assert match_label_selector_object(selector, LABELS)
    assert not match_label_selector_object(selector, {**LABELS, "gone": "x"})
    assert not match_label_selector_object(selector, {**LABELS, "tier": "1"})


POD = {
    "metadata": {"name": "jupyter-alice", "namespace": "default"},
    "spec": {"nodeName": "node-1"},
    "status": {"phase": "Running"},
}
EVENT = {
    "metadata": {"name": "jupyter-alice.1", "namespace": "default"},
    "involvedObject": {"kind": "Pod", "name": "jupyter-alice", "namespace": "default"},
    "reason": "Scheduled",
    "source": {"component": "default-scheduler"},
    "type": "Normal",
}


@pytest.mark.parametrize(
    ("resource", "obj", "selector", "expected"),
    [
        ("pods", POD, "metadata.name=jupyter-alice", True),
        ("pods", POD, "metadata.name==jupyter-bob", False),
        ("pods", POD, "metadata.namespace=default,spec.nodeName=node-1", True),
        ("pods", POD, "spec.nodeName!=node-1", False),
        ("pods", POD, "spec.nodeName=", False),
        ("pods", {"metadata": {"name": "p"}, "spec": {}}, "spec.nodeName=", True),
        ("pods", POD, "status.phase!=Pending", True),
        ("events", EVENT, "involvedObject.kind=Pod", True),
        ("events", EVENT, "involvedObject.kind=Node", False),
        ("events", EVENT, "involvedObject.name=jupyter-alice,type=Normal", True),
        ("events", EVENT, "source=default-scheduler", True),
    ],
)
def test_field_selector_matches(resource: str, obj: dict, selector: str, expected: bool) -> None:
    assert fields_match(parse_field_selector(selector, resource), obj) is expected


def test_field_selector_unescapes_values() -> None:
    assert parse_field_selector(r"metadata.name=a\,b") == (
        FieldRequirement("metadata.name", "=", "a,b"),
    )


@pytest.mark.parametrize(
    ("resource", "selector"),
    [("pods", "spec.containers=x"), ("secrets", "spec.nodeName=x"), ("pods", "nonsense")],
)
def test_unsupported_or_malformed_field_selector_is_bad_request(
    resource: str, selector: str
) -> None:
    with pytest.raises(ApiError) as info:
        parse_field_selector(selector, resource)
    assert info.value.code == 400
    assert info.value.status()["reason"] == "BadRequest"


def test_selector_combines_namespace_labels_and_fields() -> None:
    pod = {**POD, "metadata": {**POD["metadata"], "labels": {"component": "singleuser-server"}}}
    selector = make_selector(
        "pods", "default", "component=singleuser-server", "spec.nodeName=node-1"
    )
    assert selector.matches(pod)
    assert not make_selector("pods", "other", "", "").matches(pod)
    assert not make_selector("pods", None, "component=hub", "").matches(pod)

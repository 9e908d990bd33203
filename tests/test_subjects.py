"""Subject scheme: the reference's buildSubject table plus edge cases."""

from __future__ import annotations

import pytest

from faststream_natspubsub import SubjectError, SubjectParts, build_subject, parse_subject
from faststream_natspubsub.subjects import consumer_name, stream_name


@pytest.mark.parametrize(
    ("env", "app", "topic", "expected"),
    [
        ("production", "orders", "order.created", "production.orders.order.created"),
        ("  Production ", "Orders", " Order.Created ", "production.orders.order.created"),
        ("dev", "Orders Service", "order.created", "dev.orders-service.order.created"),
        ("dev", "orders_svc.v2", "x", "dev.orders-svc-v2.x"),
        ("dev", "orders", "order.*", "dev.orders.order.*"),
        ("dev", "orders", "order.>", "dev.orders.order.>"),
        ("dev", "orders", ">", "dev.orders.>"),
        ("dev", "orders", "*.created", "dev.orders.*.created"),
        ("dev", "orders", "user_signed_up", "dev.orders.user_signed_up"),
        ("staging-2", "a", "b-c.d_e.9", "staging-2.a.b-c.d_e.9"),
    ],
)
def test_build_subject_normalises_like_the_reference(
    env: str, app: str, topic: str, expected: str
) -> None:
    assert build_subject(env, app, topic) == expected


@pytest.mark.parametrize(
    ("env", "app", "topic", "names"),
    [
        ("dev", "orders", "order..created", "empty part"),
        ("dev", "orders", ".order", "empty part"),
        ("dev", "orders", "order.", "empty part"),
        ("dev", "orders", "", "empty"),
        ("dev", "orders", "order.>.created", "'>' must be the last part"),
        ("dev", "orders", "order.cre ated", "'cre ated'"),
        ("dev", "orders", "order.créé", "'créé'"),
        ("dev", "orders", "order.a*", "'a*'"),
        ("prod.eu", "orders", "x", "'prod.eu'"),
        ("prod eu", "orders", "x", "'prod eu'"),
        ("", "orders", "x", "invalid env"),
        ("dev", "", "x", "invalid app"),
    ],
)
def test_bad_parts_raise_a_value_error_naming_the_part(
    env: str, app: str, topic: str, names: str
) -> None:
    with pytest.raises(SubjectError) as caught:
        build_subject(env, app, topic)
    assert isinstance(caught.value, ValueError)
    assert names in str(caught.value)


def test_parse_subject_inverts_build_subject() -> None:
    subject = build_subject("prod", "orders", "order.item.added")
    assert parse_subject(subject) == SubjectParts(
        env="prod", app="orders", topic="order.item.added"
    )


def test_parse_subject_rejects_a_subject_without_three_parts() -> None:
    with pytest.raises(SubjectError):
        parse_subject("prod.orders")


def test_stream_names_cannot_collide_and_never_contain_dlq() -> None:
    assert stream_name("a-b", "c") != stream_name("a", "b-c")
    with pytest.raises(SubjectError, match="dlq"):
        stream_name("prod", "dlq-tools")


def test_consumer_names_are_deterministic_and_distinct_for_similar_topics() -> None:
    first = consumer_name("payments", "prod.orders.order.created")
    assert first == consumer_name("payments", "prod.orders.order.created")
    assert first != consumer_name("payments", "prod.orders.order_created")
    assert first != consumer_name("billing", "prod.orders.order.created")
    wildcard = consumer_name("payments", "prod.orders.order.>")
    assert "." not in wildcard and ">" not in wildcard and "*" not in wildcard

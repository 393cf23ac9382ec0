"""Usage charts: SVG drawn on the control plane from the receipts, one bar per client
and day (or per node and percentile), scoped like everything else an auditor reads."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client as BrowserClient

from control_plane.accounts.choices import Role
from control_plane.accounts.services import create_operator
from control_plane.audit.charts import percentile
from control_plane.audit.services import collect_node
from tests.control_plane.factories import ClientFactory

pytestmark = pytest.mark.django_db

SVG = "{http://www.w3.org/2000/svg}"
DAY1 = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
PERIOD = {"since": "2025-03-01", "until": "2025-03-03"}


@pytest.fixture
def usage(fake_node_factory):
    """acme: two sessions on 1 March (19 tokens, 1 request each) and one on 2 March
    (100 tokens, 3 requests); globex: one on 2 March (5 tokens); ten one-shot calls on n2
    (acme, 2 March, 2 tokens each); one acme session the day before the period.

    Turn times to first token: on n1, 80 ms (acme, 1 March; its other session that day
    is an older record without times), 250, 40 and 30 ms (acme's three turns on 2 March)
    and 55 ms (globex); on n2, 100 to 1000 ms (the one-shot calls); the session before
    the period, 99999 ms."""
    fake1, node1 = fake_node_factory("n1")
    fake2, node2 = fake_node_factory("n2")
    for slug in ("acme", "globex"):
        ClientFactory(slug=slug)
    fake1.add_usage(
        "acme", ended_at=DAY1 - timedelta(days=1), first_token_ms=(99_999,), completion_tokens=9
    )
    fake1.add_usage(
        "acme", ended_at=DAY1, prompt_tokens=12, completion_tokens=7, first_token_ms=(80,)
    )
    fake1.add_usage(
        "acme", ended_at=DAY1 + timedelta(hours=3), prompt_tokens=12, completion_tokens=7
    )
    fake1.add_usage(
        "acme",
        ended_at=DAY2,
        prompt_tokens=90,
        completion_tokens=10,
        request_count=3,
        first_token_ms=(250, 40, 30),
    )
    fake1.add_usage(
        "globex", ended_at=DAY2, prompt_tokens=4, completion_tokens=1, first_token_ms=(55,)
    )
    for seconds in range(1, 11):
        ended = DAY2 + timedelta(minutes=seconds)
        fake2.add_usage(
            "acme",
            ended_at=ended,
            started_at=ended - timedelta(seconds=seconds),
            ended_by="one_shot",
            prompt_tokens=1,
            completion_tokens=1,
            first_token_ms=(100 * seconds,),
        )
    assert collect_node(node1).appended == 5 and collect_node(node2).appended == 10


def _browser(user) -> BrowserClient:
    browser = BrowserClient()
    browser.force_login(user)
    return browser


def _bars(svg: bytes) -> dict[tuple[str, str], tuple[float, str]]:
    root = ET.fromstring(svg)  # noqa: S314 (the control plane's own answer)
    assert root.tag == f"{SVG}svg"
    bars = {}
    for rect in root.iter(f"{SVG}rect"):
        if rect.get("class") == "bar":
            key = (rect.get("data-series"), rect.get("data-category"))
            bars[key] = (float(rect.get("data-value")), rect.find(f"{SVG}title").text)
    return bars


def _legend(svg: bytes) -> list[str]:
    root = ET.fromstring(svg)  # noqa: S314 (the control plane's own answer)
    return [g.get("data-series") for g in root.iter(f"{SVG}g") if g.get("class") == "legend-item"]


def test_the_tokens_chart_has_a_bar_per_client_and_day(usage, auditor_user):
    response = _browser(auditor_user).get("/audit/charts/tokens.svg", PERIOD)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("image/svg+xml")
    bars = _bars(response.content)
    assert {k: v[0] for k, v in bars.items()} == {
        ("acme", "2025-03-01"): 38,
        ("acme", "2025-03-02"): 100 + 20,  # the day's session and the ten one-shot calls
        ("globex", "2025-03-01"): 0,
        ("globex", "2025-03-02"): 5,
    }
    assert bars[("acme", "2025-03-01")][1] == "acme on 2025-03-01: 38 tokens"
    assert _legend(response.content) == ["acme", "globex"]


def test_the_requests_chart_counts_requests_not_sessions(usage, auditor_user):
    bars = _bars(_browser(auditor_user).get("/audit/charts/requests.svg", PERIOD).content)

    assert bars[("acme", "2025-03-01")][0] == 2
    assert bars[("acme", "2025-03-02")][0] == 3 + 10
    assert bars[("globex", "2025-03-02")][0] == 1


def test_the_ttft_chart_shows_percentiles_of_every_turn_per_node(usage, auditor_user):
    response = _browser(auditor_user).get("/audit/charts/ttft.svg", PERIOD)

    assert response.status_code == 200
    bars = _bars(response.content)
    # nearest rank over every turn in the period: n1's 30, 40, 55, 80, 250 ms (the
    # session before the period and the record without times count for nothing), and
    # n2's 100 to 1000 ms
    assert {k: v[0] for k, v in bars.items()} == {
        ("p50", "n1"): 55,
        ("p90", "n1"): 250,
        ("p99", "n1"): 250,
        ("p50", "n2"): 500,
        ("p90", "n2"): 900,
        ("p99", "n2"): 1000,
    }
    assert bars[("p90", "n2")][1] == "n2 p90: 900 ms over 10 turns"
    assert bars[("p50", "n1")][1] == "n1 p50: 55 ms over 5 turns"
    assert "Time to first token per node" in response.content.decode()


def test_a_ttft_chart_for_one_client_counts_only_its_turns(usage, auditor_user):
    bars = _bars(
        _browser(auditor_user).get("/audit/charts/ttft.svg", {**PERIOD, "client": "globex"}).content
    )

    assert {k: v[0] for k, v in bars.items()} == {
        ("p50", "n1"): 55,
        ("p90", "n1"): 55,
        ("p99", "n1"): 55,
    }


def test_a_scoped_auditors_charts_show_only_its_clients(usage):
    globex_only = create_operator("sam", Role.AUDITOR, clients=["globex"]).user
    browser = _browser(globex_only)

    tokens = browser.get("/audit/charts/tokens.svg", PERIOD)
    ttft = browser.get("/audit/charts/ttft.svg", PERIOD)
    other = browser.get("/audit/charts/tokens.svg", {**PERIOD, "client": "acme"})

    assert {k for k in _bars(tokens.content)} == {
        ("globex", "2025-03-01"),
        ("globex", "2025-03-02"),
    }
    assert "acme" not in tokens.content.decode()
    # globex's one turn only: n2 served acme alone, so it has no bars
    assert {k: v[0] for k, v in _bars(ttft.content).items()} == {
        ("p50", "n1"): 55,
        ("p90", "n1"): 55,
        ("p99", "n1"): 55,
    }
    assert other.status_code == 403


def test_charts_are_on_the_auditors_page_and_the_admins_receipt_list(usage, admin_user):
    scoped = create_operator("sam", Role.AUDITOR, clients=["globex"]).user
    now = datetime.now(UTC)
    page = _browser(scoped).get("/audit/")
    receipts = _browser(admin_user).get("/admin/audit/receipt/")

    assert page.status_code == receipts.status_code == 200
    for text in (page.content.decode(), receipts.content.decode()):
        assert 'id="chart-tokens"' in text and 'id="chart-ttft"' in text
        assert now.date().isoformat() in text  # the last 14 days, to today
    assert "acme" not in page.content.decode().split('id="usage-charts"')[1]


def test_a_bad_period_or_chart_is_refused(usage, auditor_user):
    browser = _browser(auditor_user)

    backwards = browser.get(
        "/audit/charts/tokens.svg", {"since": "2025-03-03", "until": "2025-03-01"}
    )
    too_long = browser.get(
        "/audit/charts/tokens.svg", {"since": "2024-01-01", "until": "2025-01-01"}
    )
    year_one = browser.get("/audit/charts/tokens.svg", {"until": "0001-01-01"})
    unknown = browser.get("/audit/charts/pie.svg")
    anonymous = BrowserClient().get("/audit/charts/tokens.svg")

    assert backwards.status_code == 400 and "before it starts" in backwards.content.decode()
    assert too_long.status_code == 400 and "92 days" in too_long.content.decode()
    assert year_one.status_code == 400  # no day before it: a clear 400, not a 500
    assert unknown.status_code == 404
    assert anonymous.status_code == 302


def test_nearest_rank_percentiles():
    assert [percentile([1.0, 2.0, 3.0, 4.0], p) for p in (25, 50, 75, 100)] == [1, 2, 3, 4]
    assert percentile([7.0], 99) == 7.0

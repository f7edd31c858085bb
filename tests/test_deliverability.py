"""`drip check` on deliverability: the settings providers punish, and the DNS records they
require, looked up from a real DNS server on loopback (tests/dnsserver.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from drip.deliverability import aligned, dns_problems, setting_problems
from drip.settings import Settings, load_settings
from tests.dnsserver import Zone, dns_server
from tests.test_cli import drip

SENDER = "Course <course@example.com>"


def settings_with(**values: object) -> Settings:
    return load_settings(_env_file=None, sender=SENDER, **values)


def dkim_key(tmp_path: Path) -> tuple[Path, str]:
    """A fresh RSA key on disk, and its public half as a DKIM record's p= holds it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "dkim.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, base64.b64encode(der).decode()


def test_a_careful_production_setup_has_no_problem(tmp_path: Path) -> None:
    key, _ = dkim_key(tmp_path)
    settings = settings_with(
        base_url="https://course.example.com",
        dkim_domain="example.com",
        dkim_selector="drip",
        dkim_private_key=key,
        smtp_host="smtp.example.net",
        smtp_security="starttls",
        smtp_password="pw",
    )
    assert setting_problems(settings) == []


def test_an_http_base_url_breaks_one_click_unsubscribe() -> None:
    [problem] = setting_problems(settings_with(base_url="http://course.example.com"))
    assert problem.startswith("DRIP_BASE_URL:")
    assert "https" in problem
    assert "8058" in problem
    # drip dev's own address is loopback: nothing to report there.
    assert setting_problems(settings_with(base_url="http://127.0.0.1:8000")) == []
    assert setting_problems(settings_with(base_url="http://localhost:8000")) == []


def test_a_webhook_url_in_clear_is_reported() -> None:
    [problem] = setting_problems(
        settings_with(
            base_url="https://course.example.com",
            webhook_urls="https://crm.example.com/in,http://user:pw@hooks.example.net/x,"
            "http://127.0.0.1:9000/",
        )
    )
    assert problem.startswith("DRIP_WEBHOOK_URLS: hooks.example.net is http://")
    assert "pw" not in problem


def test_a_dkim_domain_not_aligned_with_from_is_reported(tmp_path: Path) -> None:
    key, _ = dkim_key(tmp_path)
    found = setting_problems(
        settings_with(dkim_domain="mailer.net", dkim_selector="s1", dkim_private_key=key)
    )
    assert len(found) == 1
    assert found[0].startswith("DRIP_DKIM_DOMAIN:")
    assert "example.com" in found[0]
    assert aligned("example.com", "news.example.com")
    assert aligned("mail.example.com", "example.com")
    assert not aligned("notexample.com", "example.com")


def test_a_password_in_clear_to_a_remote_smtp_host_is_reported() -> None:
    remote = settings_with(smtp_host="smtp.example.net", smtp_password="hunter2-secret")
    [problem] = setting_problems(remote)
    assert problem.startswith("DRIP_SMTP_SECURITY:")
    assert "smtp.example.net" in problem
    assert "hunter2" not in problem
    assert setting_problems(settings_with(smtp_host="127.0.0.1", smtp_password="pw")) == []
    assert setting_problems(settings_with(smtp_host="smtp.example.net")) == []  # no password
    tls = settings_with(smtp_host="smtp.example.net", smtp_password="pw", smtp_security="tls")
    assert setting_problems(tls) == []


def full_zone(public_key: str) -> Zone:
    return {
        "example.com": ["v=spf1 include:relay.example.net -all", "google-site-verification=x"],
        "_dmarc.example.com": ["v=DMARC1; p=quarantine; rua=mailto:d@example.com"],
        "drip._domainkey.example.com": [f"v=DKIM1; k=rsa; p={public_key}"],
    }


def test_dns_records_all_present_pass(tmp_path: Path) -> None:
    key, public = dkim_key(tmp_path)
    with dns_server(full_zone(public)) as address:
        report = dns_problems(
            settings_with(
                dns_server=address,
                dkim_domain="example.com",
                dkim_selector="drip",
                dkim_private_key=key,
            )
        )
    assert report.problems == []
    assert [line.split()[0] for line in report.found] == ["SPF", "DMARC", "DKIM"]


@pytest.mark.parametrize(
    ("remove", "expected"),
    [
        ("_dmarc.example.com", "DMARC: no v=DMARC1 TXT record at _dmarc.example.com"),
        ("example.com", "SPF: no v=spf1 TXT record at example.com"),
        ("drip._domainkey.example.com", "DKIM: no key at drip._domainkey.example.com"),
    ],
)
def test_a_missing_record_is_reported(tmp_path: Path, remove: str, expected: str) -> None:
    key, public = dkim_key(tmp_path)
    zone = full_zone(public)
    del zone[remove]
    with dns_server(zone) as address:
        report = dns_problems(
            settings_with(
                dns_server=address,
                dkim_domain="example.com",
                dkim_selector="drip",
                dkim_private_key=key,
            )
        )
    assert len(report.problems) == 1
    assert report.problems[0].startswith(expected)


def test_a_published_dkim_key_that_is_not_ours_is_reported(tmp_path: Path) -> None:
    key, _ = dkim_key(tmp_path)
    (tmp_path / "other").mkdir()
    _, someone_elses = dkim_key(tmp_path / "other")
    with dns_server(full_zone(someone_elses)) as address:
        report = dns_problems(
            settings_with(
                dns_server=address,
                dkim_domain="example.com",
                dkim_selector="drip",
                dkim_private_key=key,
            )
        )
    [problem] = report.problems
    assert "not the public half of DRIP_DKIM_PRIVATE_KEY" in problem


def test_two_spf_records_are_one_too_many() -> None:
    zone = {
        "example.com": ["v=spf1 -all", "v=spf1 include:x -all"],
        "_dmarc.example.com": ["v=DMARC1; p=none"],
    }
    with dns_server(zone) as address:
        report = dns_problems(settings_with(dns_server=address))
    assert report.problems == ["SPF: 2 v=spf1 records at example.com; RFC 7208 allows one"]


def test_check_dns_reports_a_missing_dmarc_record(tmp_path: Path) -> None:
    zone = {"example.com": ["v=spf1 -all"]}
    env = {
        "DRIP_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
        "DRIP_SENDER": SENDER,
        "DRIP_SECRET_KEY": "x" * 32,
    }
    drip("db", "upgrade", env=env)
    with dns_server(zone) as address:
        result = drip("check", "--dns", env={**env, "DRIP_DNS_SERVER": address})
        plain = drip("check", env={**env, "DRIP_DNS_SERVER": address})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "✓ SPF at example.com: v=spf1 -all" in result.stdout
    assert "✗ DMARC: no v=DMARC1 TXT record at _dmarc.example.com" in result.stderr
    assert "Traceback" not in result.stderr
    assert plain.returncode == 0, plain.stderr  # without --dns, DNS is not asked


def test_a_dns_server_that_does_not_answer_is_one_plain_line() -> None:
    with dns_server({}) as address:
        pass  # closed again: nothing listens on that port now
    settings = settings_with(dns_server=address)
    report = dns_problems(settings)
    assert len(report.problems) == 1
    assert "the DNS lookup failed" in report.problems[0]

"""``aggregator dkim``: make a signing key; and the DNS records ``check`` prints.

Example::

    aggregator dkim keygen --selector kfd2026 --domain digest.example.org --out keys/
    # then in feeds.yaml:  smtp: {dkim: {domain: digest.example.org,
    #                                    selector: kfd2026, key_file: keys/kfd2026.private}}
    aggregator check      # prints the SPF, DKIM and DMARC records to publish
    aggregator check --dns   # and looks them up: ok / missing / different
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..config import Config
from ..errors import AggregatorError, ConfigError
from ..mail.dkim import (
    dkim_txt_record,
    dmarc_txt_record,
    generate_key_pair,
    load_private_key,
    public_key_b64,
    spf_txt_record,
)
from ..mail.dnscheck import Nameserver, check_dns_records
from ._common import console, load_config

__all__ = ["dkim_app", "print_dns_lookup", "print_dns_records", "register"]

dkim_app = typer.Typer(no_args_is_help=True, help="DKIM signing keys and their DNS records.")


def _default_domain() -> str:
    """The domain of ``smtp.dkim``, else of the sender address, from feeds.yaml."""
    try:
        config = load_config()
    except AggregatorError:
        config = None
    if config is not None:
        if config.smtp.dkim is not None:
            return config.smtp.dkim.domain
        if "@" in config.site.sender_email:
            return config.site.sender_email.rsplit("@", 1)[1]
    raise ConfigError("no domain: pass --domain (or set site.sender_email in feeds.yaml)")


@dkim_app.command("keygen")
def keygen(
    selector: Annotated[
        str, typer.Option("--selector", "-s", help="DKIM selector, e.g. kfd2026 (s= tag).")
    ],
    domain: Annotated[
        str | None,
        typer.Option("--domain", "-d", help="Signing domain (default: from feeds.yaml)."),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for SELECTOR.private and SELECTOR.txt.")
    ] = Path("."),
    bits: Annotated[int, typer.Option("--bits", help="RSA key size.", min=1024, max=4096)] = 2048,
) -> None:
    """Write a new RSA key pair and print the DNS TXT record that publishes it.

    The private key file is created readable by its owner only and never
    overwritten: rotating keys means a new selector.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", selector):
        raise typer.BadParameter(
            f'"{selector}" is not a DKIM selector (letters, digits, - _ .)',
            param_hint="--selector",
        )
    domain = (domain or _default_domain()).strip().rstrip(".").lower()
    if not re.fullmatch(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}", domain):
        raise typer.BadParameter(f'"{domain}" is not a domain name', param_hint="--domain")
    key_path = out / f"{selector}.private"
    record_path = out / f"{selector}.txt"
    for path in (key_path, record_path):
        if path.exists():
            raise ConfigError(
                f"{path} exists already; choose another --selector (a new key needs a new "
                "selector so mail signed with the old one still verifies)"
            )
    pair = generate_key_pair(bits)
    record = dkim_txt_record(selector, domain, pair.public_b64)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pair.private_pem)
    record_path.write_text(record + "\n", encoding="utf-8")
    console.print(f"[green]wrote[/green] {key_path} (private, mode 600) and {record_path}")
    console.print("Publish this DNS record:", highlight=False)
    console.print(record, highlight=False, soft_wrap=True)
    console.print(
        "Then in feeds.yaml:\n"
        f"  smtp:\n    dkim: {{domain: {domain}, selector: {selector}, key_file: {key_path}}}",
        highlight=False,
        soft_wrap=True,
    )


def print_dns_records(config: Config) -> None:
    """What ``aggregator check`` adds: the key checked, and the DNS records to publish.

    Offline: these are the records the configuration needs, not what DNS holds.
    """
    sender_domain = config.site.sender_email.rsplit("@", 1)[-1].lower()
    dkim = config.smtp.dkim
    console.print("DNS records to publish (check them with your DNS provider):", highlight=False)
    console.print("  SPF   " + spf_txt_record(sender_domain, config.smtp.host), highlight=False)
    if dkim is not None:
        pem = load_private_key(dkim)
        console.print(
            "  DKIM  " + dkim_txt_record(dkim.selector, dkim.domain, public_key_b64(pem)),
            highlight=False,
            soft_wrap=True,
        )
        if dkim.domain != sender_domain and not sender_domain.endswith("." + dkim.domain):
            console.print(
                f"  [yellow]warning[/yellow] DKIM domain {dkim.domain} does not align with the "
                f"sender's {sender_domain}: DMARC will not count the signature",
                highlight=False,
            )
    else:
        console.print(
            "  DKIM  [yellow]not signing[/yellow]: add smtp.dkim (aggregator dkim keygen "
            "--selector NAME makes a key); Gmail and Yahoo expect bulk mail signed",
            highlight=False,
        )
    console.print(
        "  DMARC " + dmarc_txt_record(sender_domain, f"dmarc@{sender_domain}"), highlight=False
    )
    bounces = config.bounces
    if bounces is None:
        console.print(
            "  bounces: [yellow]not configured[/yellow] (bounces: in feeds.yaml); dead "
            "addresses keep being mailed",
            highlight=False,
        )
    else:
        where = (
            f"bounces+TOKEN@{bounces.verp_domain} (VERP)"
            if bounces.verp_domain
            else f"{bounces.address}"
        )
        mailbox = (
            f"IMAP {bounces.imap.host}:{bounces.imap.port} folder {bounces.imap.folder}"
            if bounces.imap
            else "no IMAP mailbox configured: only refusals while sending are counted"
        )
        console.print(f"  bounces go to {where}; read from {mailbox}", highlight=False)


_STYLE = {"ok": "green", "missing": "red", "different": "red", "lookup failed": "yellow"}


def print_dns_lookup(config: Config, nameserver: Nameserver | None) -> bool:
    """``check --dns``: one line per record as DNS has it; True when all are ok."""
    sender_domain = config.site.sender_email.rsplit("@", 1)[-1].lower()
    dkim = config.smtp.dkim
    signing = (
        (dkim.selector, dkim.domain, public_key_b64(load_private_key(dkim)))
        if dkim is not None
        else None
    )
    where = f"{nameserver.address} port {nameserver.port}" if nameserver else "system resolver"
    console.print(f"DNS as it is now ({where}):", highlight=False)
    checks = check_dns_records(sender_domain, signing, nameserver=nameserver)
    for item in checks:
        console.print(
            f"  {item.kind:<5} [{_STYLE[item.status]}]{item.status}[/{_STYLE[item.status]}] "
            f"{item.name}: {escape(item.detail)}",
            highlight=False,
            soft_wrap=True,
        )
    return all(item.status == "ok" for item in checks)


def register(app: typer.Typer) -> None:
    """Add ``aggregator dkim`` to the main app."""
    app.add_typer(dkim_app, name="dkim")

"""Load and validate ``feeds.yaml``.

Admins edit this file by hand, so every error must point at the place to fix:
``feeds.yaml:14: sources[2].interval: "fortnightly" is not a duration``. We
compose the YAML node tree ourselves to remember the line of every key, let
pydantic validate the plain data (unknown keys are errors), and map each
pydantic error location back to a line. The result is a frozen :class:`Config`
built from the dataclasses in :mod:`aggregator.models`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError, ConfigErrors
from .models import (
    DEFAULT_MAX_ITEMS,
    BounceSettings,
    DigestSettings,
    DkimSettings,
    ImapSettings,
    ReturnPath,
    SectionRule,
    Selectors,
    Site,
    SmtpSettings,
    Source,
    WebSettings,
)

DEFAULT_CONFIG = "feeds.yaml"
# Highest max_items accepted: beyond it one source's fetch holds more entries in
# memory and in one transaction than any real feed publishes at once.
MAX_ITEMS_LIMIT = 10_000

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SITE = Site()
_DIGEST = DigestSettings()
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def parse_duration(value: object) -> timedelta:
    """``"90s"``, ``"1h30m"``, ``"2d"`` or a number of seconds → timedelta."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError(f"{value!r} is not a positive duration")
        return timedelta(seconds=value)
    if isinstance(value, timedelta):
        return value
    text = str(value).strip().lower().replace(" ", "")
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text) or total <= 0:
        raise ValueError(f'"{value}" is not a duration (use e.g. 30m, 1h, 1h30m, 2d)')
    return timedelta(seconds=total)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]

# How long a pending subscriber may take to confirm (the confirm link's life too).
PENDING_EXPIRY = timedelta(days=7)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f'"{value}" is not a known time zone (e.g. Asia/Seoul)') from None
    return value


def _check_regex(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


# BCP 47 in the shape feeds use: a 2-3 letter language, optional subtags.
_LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")


Localized = str | dict[str, str]
"""A text given once for every language, or per language: ``{en: ..., ko: ...}``."""


def _check_localized(value: Localized | None) -> Localized | None:
    if isinstance(value, dict):
        if not value:
            raise ValueError("give at least one language, e.g. {en: ..., ko: ...}")
        for key, text in value.items():
            if not _LANGUAGE_TAG.fullmatch(key):
                raise ValueError(f'"{key}" is not a language code (use e.g. en, ko)')
            if not text.strip():
                raise ValueError(f"the {key} text is empty")
    return value


def _localized(value: Localized, site_language: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``(text in the site's language, (language, text) pairs)`` for a :data:`Localized`.

    The site's language picks the main text, else English, else the first
    given: it is what an edition in a language not listed shows.
    """
    if isinstance(value, str):
        return value, ()
    pairs = tuple((key.lower().split("-")[0], text) for key, text in value.items())
    given = dict(pairs)
    site = site_language.lower().split("-")[0]
    return given.get(site) or given.get("en") or pairs[0][1], pairs


def _check_url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError(f'"{value}" is not an http(s) URL')
    return value


class SiteModel(_Strict):
    title: str = _SITE.title
    url: str = _SITE.url
    description: str = _SITE.description
    language: str = _SITE.language
    timezone: str = _SITE.timezone
    postal_address: str = ""
    author_name: str | None = None
    author_email: str | None = None
    sender_email: str = _SITE.sender_email
    sender_name: str | None = None
    hub: str | None = None
    feed_size: int = Field(default=_SITE.feed_size, ge=1, le=10000)
    output_dir: str = _SITE.output_dir
    templates: str | None = None

    _tz = field_validator("timezone")(_check_timezone)
    _url = field_validator("url")(_check_url)


class DefaultsModel(_Strict):
    interval: Duration = timedelta(hours=1)
    timeout: Duration = timedelta(seconds=20)
    timezone: str = "Asia/Seoul"
    max_items: int = Field(default=DEFAULT_MAX_ITEMS, ge=1, le=MAX_ITEMS_LIMIT)

    _tz = field_validator("timezone")(_check_timezone)


class MatchModel(_Strict):
    title: str | None = None
    text: str | None = None
    sources: list[str] = []
    category: str | None = None

    _re = field_validator("title", "text", "category")(_check_regex)


class SectionModel(_Strict):
    id: str
    title: Localized
    match: MatchModel = MatchModel()

    @field_validator("title")
    @classmethod
    def _title(cls, value: Localized) -> Localized | None:
        return _check_localized(value)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f'"{value}" is not a valid id (lowercase letters, digits, - _ .)')
        return value


class SelectModel(_Strict):
    item: str
    title: str
    # Empty: the title's own link, else the item's first link. A default of
    # "a@href" would take the first link, often a thumbnail or a category.
    link: str = ""
    summary: str | None = None
    date: str | None = None
    image: str | None = None
    author: str | None = None
    next_page: str | None = None


class SourceModel(_Strict):
    id: str
    url: str
    type: Literal["feed", "html"] = "feed"
    title: str | None = None
    interval: Duration | None = None
    timeout: Duration | None = None
    select: SelectModel | None = None
    identity_params: list[str] | None = None
    drop_params: list[str] = []
    timezone: str | None = None
    date_format: str | None = None
    max_pages: int = Field(default=1, ge=1, le=50)
    max_items: int | None = Field(default=None, ge=1, le=MAX_ITEMS_LIMIT)
    full_text: bool = False
    section: str | None = None
    enabled: bool = True
    encoding: str | None = None
    # Which copy of a story readers get when several sources carry it: higher wins.
    priority: int = Field(default=0, ge=-1000, le=1000)
    # The language of its items, over what the feed or page declares (Korean text is detected).
    language: str | None = None

    _url = field_validator("url")(_check_url)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        if value is not None and not _LANGUAGE_TAG.fullmatch(value):
            raise ValueError(f'"{value}" is not a language tag (use e.g. ko, en, ko-KR)')
        return value

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f'"{value}" is not a valid id (lowercase letters, digits, - _ .)')
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str | None) -> str | None:
        return None if value is None else _check_timezone(value)

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str | None) -> str | None:
        if value is None:
            return None
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f'"{value}" is not a known text encoding') from None
        return value

    @model_validator(mode="after")
    def _select_matches_type(self) -> SourceModel:
        if self.type == "html" and self.select is None:
            raise ValueError('type "html" needs a "select" block (item, title, link selectors)')
        if self.type == "feed" and self.select is not None:
            raise ValueError('"select" only applies to type "html"')
        return self


class DigestModel(_Strict):
    schedule: str = "mon 09:00"
    subject: Localized = _DIGEST.subject
    sections: list[str] = list(_DIGEST.sections)
    other_section_title: Localized | None = _DIGEST.other_section_title

    @field_validator("subject", "other_section_title")
    @classmethod
    def _localized_texts(cls, value: Localized | None) -> Localized | None:
        return _check_localized(value)

    max_items_per_section: int = Field(default=10, ge=1, le=100)
    when_empty: Literal["skip", "note"] = "skip"
    period: Duration = timedelta(days=7)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value


_DOMAIN = re.compile(
    r"(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EMAIL = re.compile(r"[^@\s<>]+@[^@\s<>]+")


def _check_domain(value: str) -> str:
    if not _DOMAIN.fullmatch(value):
        raise ValueError(f'"{value}" is not a domain name (e.g. digest.example.org)')
    return value.lower()


def _check_env_name(value: str | None) -> str | None:
    if value is not None and not _ENV_NAME.fullmatch(value):
        raise ValueError(f'"{value}" is not an environment variable name (e.g. IMAP_PASSWORD)')
    return value


class DkimModel(_Strict):
    domain: str
    selector: str
    key_file: str | None = None
    key_env: str | None = None

    _domain = field_validator("domain")(_check_domain)
    _env = field_validator("key_env")(_check_env_name)

    @field_validator("selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        if not _SELECTOR.fullmatch(value):
            raise ValueError(f'"{value}" is not a DKIM selector (letters, digits, - _ .)')
        return value

    @model_validator(mode="after")
    def _one_key(self) -> DkimModel:
        if (self.key_file is None) == (self.key_env is None):
            raise ValueError(
                "give the private key as key_file (a path) or key_env (an environment "
                "variable holding the PEM), exactly one; never the key itself"
            )
        return self


class SmtpModel(_Strict):
    host: str = "localhost"
    port: int = Field(default=25, ge=1, le=65535)
    starttls: bool = False
    ssl: bool = False
    username_env: str | None = None
    password_env: str | None = None
    timeout: Duration = timedelta(seconds=30)
    rate: float = Field(default=0.0, ge=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    dkim: DkimModel | None = None

    @model_validator(mode="after")
    def _tls(self) -> SmtpModel:
        if self.ssl and self.starttls:
            raise ValueError("choose ssl (implicit TLS, port 465) or starttls, not both")
        return self


class ImapModel(_Strict):
    host: str
    port: int | None = Field(default=None, ge=1, le=65535)
    tls: bool = True
    username_env: str
    password_env: str
    folder: str = "INBOX"
    timeout: Duration = timedelta(seconds=30)

    _env = field_validator("username_env", "password_env")(_check_env_name)


class BouncesModel(_Strict):
    address: str | None = None
    verp_domain: str | None = None
    imap: ImapModel | None = None
    soft_limit: int = Field(default=3, ge=1, le=100)
    soft_window_issues: int = Field(default=5, ge=1, le=100)
    poll: Duration = timedelta(minutes=15)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.fullmatch(value):
            raise ValueError(f'"{value}" is not an email address (e.g. bounces@example.org)')
        return value

    @field_validator("verp_domain")
    @classmethod
    def _verp(cls, value: str | None) -> str | None:
        return None if value is None else _check_domain(value)

    @model_validator(mode="after")
    def _where_bounces_go(self) -> BouncesModel:
        if self.address is None and self.verp_domain is None:
            raise ValueError(
                "say where bounces go: address (one mailbox, matched by Message-ID) "
                "or verp_domain (bounces+TOKEN@domain, one address per delivery)"
            )
        if self.soft_window_issues < self.soft_limit:
            raise ValueError(
                f"soft_limit {self.soft_limit} soft bounces can never happen within "
                f"soft_window_issues {self.soft_window_issues} issues"
            )
        return self


class StorageModel(_Strict):
    url: str | None = None
    queue: Literal["none", "procrastinate"] = "none"


class SubscribersModel(_Strict):
    # Pending subscribers who never click their confirmation link are removed
    # after this long: no consent was given, so the address must not be kept.
    expire_pending_after: Duration = PENDING_EXPIRY

    @field_validator("expire_pending_after")
    @classmethod
    def _at_least_a_day(cls, value: timedelta) -> timedelta:
        if value < timedelta(days=1):
            raise ValueError("must be at least 1d (people need time to open their mail)")
        return value


def _check_network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f'"{value}" is not an IP address or network (e.g. 127.0.0.1 or 10.0.0.0/8)'
        ) from None
    return value


class WebModel(_Strict):
    # Validated item by item so an error names the line of the bad entry.
    trusted_proxies: list[Annotated[str, AfterValidator(_check_network)]] = []


class ConfigModel(_Strict):
    site: SiteModel = SiteModel()
    defaults: DefaultsModel = DefaultsModel()
    storage: StorageModel = StorageModel()
    sections: list[SectionModel] = []
    sources: list[SourceModel] = []
    digest: DigestModel = DigestModel()
    smtp: SmtpModel = SmtpModel()
    subscribers: SubscribersModel = SubscribersModel()
    web: WebModel = WebModel()
    bounces: BouncesModel | None = None
    # Written by `aggregator demo`: `run` serves the bundled sample sources
    # and a mail sink itself, so the demo's directory runs as it is.
    demo: bool = False

    @field_validator("sections", "sources", mode="before")
    @classmethod
    def _empty_list(cls, value: object) -> object:
        # "sources:" with every entry commented out is an empty list, not an error.
        return [] if value is None else value


def parse_schedule(value: str) -> tuple[str, int, int]:
    """``"mon 09:00"`` → ``("mon", 9, 0)``; day names, never cron weekday numbers.

    APScheduler 3 numbers weekdays from Monday=0 unlike cron, so accepting only
    names avoids a digest silently moving to Tuesday.
    """
    match = re.fullmatch(r"\s*([a-zA-Z]{3})[a-z]*\s+(\d{1,2}):(\d{2})\s*", value)
    if not match or match.group(1).lower() not in _WEEKDAYS:
        raise ValueError(f'"{value}" is not a schedule (use a day and a time, e.g. "mon 09:00")')
    hour, minute = int(match.group(2)), int(match.group(3))
    if hour > 23 or minute > 59:
        raise ValueError(f'"{value}" has an impossible time')
    return match.group(1).lower(), hour, minute


@dataclass(frozen=True, slots=True)
class Config:
    """The validated configuration the rest of the program runs on."""

    path: Path | None
    site: Site
    sources: tuple[Source, ...]
    sections: tuple[SectionRule, ...]
    digest: DigestSettings
    smtp: SmtpSettings
    database_url: str
    queue: str = "none"
    pending_expiry: timedelta = PENDING_EXPIRY
    web: WebSettings = field(default_factory=WebSettings)
    demo: bool = False
    bounces: BounceSettings | None = None

    def source(self, source_id: str) -> Source:
        for source in self.sources:
            if source.id == source_id:
                return source
        known = ", ".join(s.id for s in self.sources) or "none"
        raise ConfigError(f'no source with id "{source_id}" (known: {known})')

    def section_title(self, section_id: str, language: str | None = None) -> str:
        """A section's title, in ``language`` when feeds.yaml gives one for it."""
        for section in self.sections:
            if section.id == section_id:
                return section.title_for(language) if language else section.title
        return section_id

    def section_titles(self, language: str) -> dict[str, str]:
        """Every digest section's title in ``language``, the "other news" one included."""
        from .digest import OTHER_SECTION

        titles = {s.id: s.title_for(language) for s in self.sections}
        other = self.digest.other_title_for(language)
        if other:
            titles[OTHER_SECTION] = other
        return titles

    @property
    def output_dir(self) -> Path:
        out = Path(self.site.output_dir)
        if not out.is_absolute() and self.path is not None:
            out = self.path.parent / out
        return out


# ------------------------------------------------------------------ YAML with lines


class _LineLoader(yaml.SafeLoader):
    """A safe loader; lines are read from the composed node tree instead."""


def _compose(text: str) -> yaml.Node | None:
    """The node tree of ``text``: libyaml's parser when it is there, PyYAML's otherwise.

    libyaml composes a 10,000-source feeds.yaml in a fifth of the CPU and
    under half the memory (which the process kept after parsing). A document
    it refuses is composed again by PyYAML's own parser, whose messages (what
    it expected, where) are the ones the error reports are written around.
    """
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        try:
            return yaml.compose(text, Loader=fast)
        except yaml.YAMLError:
            pass
    return yaml.compose(text, Loader=_LineLoader)


def _construct(
    node: yaml.Node,
    path: tuple[str | int, ...],
    lines: dict[Any, int],
    loader: _LineLoader | None = None,
) -> Any:
    """The Python value of ``node``, recording each key's line in ``lines``.

    One loader constructs every scalar of a document: a loader per scalar
    (its reader, scanner and parser state) cost a 10,000-source feeds.yaml
    ~40 MB of memory that stayed with the process after parsing.
    """
    if loader is None:
        loader = _LineLoader("")
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(
                    "mapping keys must be plain names", line=key_node.start_mark.line + 1
                )
            key = key_node.value
            if key in result:
                raise ConfigError(
                    f'key "{key}" appears twice in the same block',
                    line=key_node.start_mark.line + 1,
                    key=_dotted((*path, key)),
                )
            result[key] = _construct(value_node, (*path, key), lines, loader)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(child, (*path, i), lines, loader) for i, child in enumerate(node.value)]
    value = loader.construct_object(node, deep=True)
    loader.constructed_objects.pop(node, None)  # nothing refers back to a scalar
    return value


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _line_for(path: tuple[str | int, ...], lines: Mapping[Any, int]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())


def _message(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see README for the allowed keys)"
    if kind == "missing":
        return "required key is missing"
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg


def _clean_loc(loc: tuple[Any, ...]) -> tuple[str | int, ...]:
    # pydantic inserts the union branch or a function name into some locations.
    return tuple(p for p in loc if isinstance(p, int) or not str(p).startswith("function-"))


# ------------------------------------------------------------------------ loading


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read, validate and convert a feeds.yaml file.

    Raises :class:`ConfigError` (or :class:`ConfigErrors` for several problems)
    whose text names the file, the line and the key.
    """
    file = Path(path or os.environ.get("AGGREGATOR_CONFIG") or DEFAULT_CONFIG)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "file not found (create it, or pass --config PATH)", path=str(file)
        ) from None
    except UnicodeDecodeError as exc:
        raise _not_utf8(file, exc) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=str(file)) from None
    return parse_config(text.removeprefix("\ufeff"), path=file)


def _not_utf8(file: Path, exc: UnicodeDecodeError) -> ConfigError:
    """Where the first non-UTF-8 byte sits, and how to fix it (Korean editors often save CP949)."""
    raw = exc.object if isinstance(exc.object, bytes) else b""
    line = raw.count(b"\n", 0, exc.start) + 1
    hint = "save it as UTF-8"
    try:
        raw.decode("cp949")
    except UnicodeDecodeError:
        pass
    else:
        hint = "it looks like CP949/EUC-KR: save it as UTF-8"
    return ConfigError(
        f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); {hint}"
        if raw
        else f"not UTF-8 text; {hint}",
        path=str(file),
        line=line,
    )


def parse_config(text: str, *, path: Path | None = None) -> Config:
    """Validate feeds.yaml text; ``path`` is used in messages and for relative paths."""
    name = str(path) if path else "<config>"
    try:
        node = _compose(text)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, name) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", path=name) from None
    if node is None or (isinstance(node, yaml.ScalarNode) and node.value == ""):
        # An empty file (or only comments) would otherwise load as "all defaults":
        # a site with no sources that `run` starts and that does nothing.
        raise ConfigError(
            "the file is empty: it needs at least site: and sources: "
            "(see the feeds.yaml shipped with the project)",
            path=name,
            line=1,
        )
    lines: dict[Any, int] = {}
    try:
        data = _construct(node, (), lines) if node is not None else {}
    except ConfigError as exc:
        raise ConfigError(exc.reason, path=name, line=exc.line, key=exc.key) from None
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping (site:, sources:, ...)", path=name)

    try:
        model = ConfigModel.model_validate(data)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            loc = _clean_loc(tuple(err["loc"]))
            errors.append(
                ConfigError(_message(err), path=name, line=_line_for(loc, lines), key=_dotted(loc))
            )
        errors.sort(key=lambda e: e.line or 0)
        raise ConfigErrors(errors) if len(errors) > 1 else errors[0] from None

    problems = _cross_checks(model, name, lines)
    problems += _check_templates(model, path, name, lines)
    if problems:
        raise ConfigErrors(problems) if len(problems) > 1 else problems[0]
    return _to_config(model, path)


# Errors raised while PyYAML is still inside a construct that began earlier (a
# quote or a bracket never closed): the problem is only noticed lines later,
# often at the end of the file, but the admin must look where it started.
_OPENED_AT_CONTEXT = (
    "while scanning a quoted scalar",
    "while parsing a flow",
    "while scanning a block scalar",
)
_OPENED_NAMES = {
    "while scanning a quoted scalar": "a quoted string",
    "while parsing a flow sequence": 'a list opened with "["',
    "while parsing a flow mapping": 'a mapping opened with "{"',
    "while scanning a block scalar": "a block of text (| or >)",
}


def _syntax_error(exc: yaml.MarkedYAMLError, name: str) -> ConfigError:
    """One error whose line is where the admin has to look, not where PyYAML gave up."""
    problem = exc.problem or exc.context or "invalid YAML"
    found = exc.problem_mark.line + 1 if exc.problem_mark else None
    started = exc.context_mark.line + 1 if exc.context_mark else None
    context = exc.context or ""
    if started is not None and context.startswith(_OPENED_AT_CONTEXT) and started != found:
        what = _OPENED_NAMES.get(context, "a construct")
        return ConfigError(
            f"YAML syntax error: {what} starts here and is never closed "
            f"({problem} at line {found})",
            path=name,
            line=started,
        )
    if "expected <block end>" in problem:
        # A list item or key indented differently from its neighbours.
        return ConfigError(
            "YAML syntax error: this line is indented differently from the lines above it "
            f"(the block starting at line {started})",
            path=name,
            line=found,
        )
    return ConfigError(f"YAML syntax error: {problem}", path=name, line=found or started)


# What an override directory must hold at least one of; anything else means a wrong path.
_TEMPLATE_NAMES = (
    "digest.mjml.j2",
    "digest.txt.j2",
    "archive.html.j2",
    "home.html.j2",
    "_page.html.j2",
    "_mail_head.mjml.j2",
    "confirm.mjml.j2",
    "mail/page.html.j2",
    "mail/confirm.txt.j2",
)


def _templates_path(value: str, path: Path | None) -> Path:
    """``site.templates`` as an absolute path; a relative one starts at feeds.yaml's directory."""
    directory = Path(value).expanduser()
    if not directory.is_absolute():
        directory = (path.parent if path is not None else Path.cwd()) / directory
    return directory


def _check_templates(
    model: ConfigModel, path: Path | None, name: str, lines: Mapping[Any, int]
) -> list[ConfigError]:
    if model.site.templates is None:
        return []
    directory = _templates_path(model.site.templates, path)
    if not directory.is_dir():
        problem = f"{directory} is not a directory"
    elif not any((directory / template).is_file() for template in _TEMPLATE_NAMES):
        problem = (
            f"{directory} holds none of the templates it could override "
            f"({', '.join(_TEMPLATE_NAMES)})"
        )
    else:
        return []
    line = _line_for(("site", "templates"), lines)
    return [ConfigError(problem, path=name, line=line, key="site.templates")]


def _cross_checks(model: ConfigModel, name: str, lines: Mapping[Any, int]) -> list[ConfigError]:
    problems: list[ConfigError] = []
    seen: dict[str, int] = {}
    for i, source in enumerate(model.sources):
        if source.id in seen:
            problems.append(
                ConfigError(
                    f'duplicate source id "{source.id}" (first used in sources[{seen[source.id]}])',
                    path=name,
                    line=_line_for(("sources", i, "id"), lines),
                    key=f"sources[{i}].id",
                )
            )
        seen.setdefault(source.id, i)
    section_ids = {s.id for s in model.sections}
    explicit = "sections" in model.digest.model_fields_set
    defined = ", ".join(sorted(section_ids)) or "none"
    for i, sid in enumerate(model.digest.sections if explicit else ()):
        if sid not in section_ids:
            problems.append(
                ConfigError(
                    f'unknown section "{sid}" (defined: {defined})',
                    path=name,
                    line=_line_for(("digest", "sections", i), lines),
                    key=f"digest.sections[{i}]",
                )
            )
    for i, source in enumerate(model.sources):
        if source.section and source.section not in section_ids:
            problems.append(
                ConfigError(
                    f'unknown section "{source.section}"',
                    path=name,
                    line=_line_for(("sources", i, "section"), lines),
                    key=f"sources[{i}].section",
                )
            )
    if model.storage.queue == "procrastinate":
        # The same rule `run` and `worker` apply, found by `check` before a deploy.
        url = resolve_database_url(model.storage.url, Path(name))
        if not url.startswith(("postgresql", "postgres:")):
            problems.append(
                ConfigError(
                    "procrastinate needs PostgreSQL, but the database is "
                    f"{url.split(':', 1)[0]} (set storage.url or DATABASE_URL to a "
                    "postgresql:// URL, or use queue: none)",
                    path=name,
                    line=_line_for(("storage", "queue"), lines),
                    key="storage.queue",
                )
            )
    problems.extend(_dkim_key_problems(model, name, lines))
    return problems


def _dkim_key_file(model: ConfigModel, config_path: Path | None) -> str | None:
    """``smtp.dkim.key_file`` as an absolute path: relative paths are beside feeds.yaml."""
    dkim = model.smtp.dkim
    if dkim is None or dkim.key_file is None:
        return None
    key_file = Path(dkim.key_file).expanduser()
    if not key_file.is_absolute():
        key_file = (config_path.parent if config_path else Path.cwd()) / key_file
    return str(key_file)


def _dkim_key_problems(
    model: ConfigModel, name: str, lines: Mapping[Any, int]
) -> list[ConfigError]:
    """A key file that is missing or not a usable RSA key, at the line of ``key_file``.

    Checked here, not when the first digest goes out: a broken key would
    otherwise be found by a Monday-morning send. (A key in an environment
    variable is checked when a sender starts, where the environment is the
    one that counts.)
    """
    dkim = model.smtp.dkim
    key_file = _dkim_key_file(model, Path(name) if name != "<config>" else None)
    if dkim is None or key_file is None:
        return []
    from .mail.dkim import load_private_key

    try:
        load_private_key(
            DkimSettings(domain=dkim.domain, selector=dkim.selector, key_file=key_file)
        )
    except ConfigError as exc:
        return [
            ConfigError(
                exc.reason,
                path=name,
                line=_line_for(("smtp", "dkim", "key_file"), lines),
                key="smtp.dkim.key_file",
            )
        ]
    return []


def _to_bounces(model: BouncesModel | None) -> BounceSettings | None:
    if model is None:
        return None
    imap = model.imap
    return BounceSettings(
        address=model.address,
        verp_domain=model.verp_domain,
        imap=ImapSettings(
            host=imap.host,
            port=imap.port or (993 if imap.tls else 143),
            username_env=imap.username_env,
            password_env=imap.password_env,
            tls=imap.tls,
            folder=imap.folder,
            timeout=imap.timeout.total_seconds(),
        )
        if imap
        else None,
        soft_limit=model.soft_limit,
        soft_window_issues=model.soft_window_issues,
        poll_interval=model.poll,
    )


def _own_copy(text: str) -> str:
    """A new string equal to ``text``, for a value kept as long as the config.

    The YAML parse allocates each scalar among its node tree, marks and
    dicts, most of which are freed when parsing ends; a kept string that is
    one of those scalars keeps its whole memory block (arena) from going
    back to the system. Two short strings per source, kept as they came out
    of the parse, held ~10 MB of freed parse memory at 10,000 sources
    (``/proc/self/smaps_rollup``, PSS after ``parse_config``).
    """
    return text.encode().decode()


def _to_config(model: ConfigModel, path: Path | None) -> Config:
    d = model.defaults
    site_model = model.site
    site = Site(
        title=site_model.title,
        url=site_model.url if site_model.url.endswith("/") else site_model.url + "/",
        description=site_model.description,
        language=site_model.language,
        timezone=site_model.timezone,
        postal_address=site_model.postal_address,
        author_name=site_model.author_name or site_model.title,
        author_email=site_model.author_email,
        sender_email=site_model.sender_email,
        sender_name=site_model.sender_name or site_model.title,
        hub_url=site_model.hub,
        feed_size=site_model.feed_size,
        output_dir=site_model.output_dir,
        templates=(
            str(_templates_path(site_model.templates, path)) if site_model.templates else None
        ),
    )
    sources = tuple(
        Source(
            id=_own_copy(s.id),
            url=_own_copy(s.url),
            type=s.type,
            title=s.title,
            interval=s.interval or d.interval,
            timeout=(s.timeout or d.timeout).total_seconds(),
            select=Selectors(**s.select.model_dump()) if s.select else None,
            identity_params=tuple(s.identity_params) if s.identity_params is not None else None,
            drop_params=tuple(s.drop_params),
            timezone=s.timezone or d.timezone,
            date_format=s.date_format,
            max_pages=s.max_pages,
            max_items=s.max_items or d.max_items,
            full_text=s.full_text,
            section=s.section,
            enabled=s.enabled,
            encoding=s.encoding,
            priority=s.priority,
            language=s.language,
        )
        for s in model.sources
    )
    sections = tuple(
        SectionRule(
            id=s.id,
            title=_localized(s.title, site_model.language)[0],
            titles=_localized(s.title, site_model.language)[1],
            title_pattern=s.match.title,
            text_pattern=s.match.text,
            source_ids=tuple(s.match.sources),
            category_pattern=s.match.category,
        )
        for s in model.sections
    )
    day, hour, minute = parse_schedule(model.digest.schedule)
    subject, subjects = _localized(model.digest.subject, site_model.language)
    other_title, other_titles = (
        _localized(model.digest.other_section_title, site_model.language)
        if model.digest.other_section_title is not None
        else (None, ())
    )
    digest = DigestSettings(
        schedule_day=day,
        schedule_time=f"{hour:02d}:{minute:02d}",
        subject=subject,
        subjects=subjects,
        # The default section list only names sections that exist.
        sections=tuple(
            sid
            for sid in model.digest.sections
            if "sections" in model.digest.model_fields_set or sid in {s.id for s in model.sections}
        ),
        other_section_title=other_title,
        other_section_titles=other_titles,
        max_items_per_section=model.digest.max_items_per_section,
        when_empty=model.digest.when_empty,
        period=model.digest.period,
    )
    m = model.smtp
    smtp = SmtpSettings(
        host=m.host,
        port=m.port,
        starttls=m.starttls,
        ssl=m.ssl,
        username_env=m.username_env,
        password_env=m.password_env,
        timeout=m.timeout.total_seconds(),
        rate_per_second=m.rate,
        max_attempts=m.max_attempts,
        dkim=DkimSettings(
            domain=m.dkim.domain,
            selector=m.dkim.selector,
            key_file=_dkim_key_file(model, path),
            key_env=m.dkim.key_env,
        )
        if m.dkim
        else None,
        return_path=ReturnPath(address=model.bounces.address, verp_domain=model.bounces.verp_domain)
        if model.bounces
        else None,
    )
    return Config(
        path=path,
        site=site,
        sources=sources,
        sections=sections,
        digest=digest,
        smtp=smtp,
        database_url=resolve_database_url(model.storage.url, path),
        queue=model.storage.queue,
        pending_expiry=model.subscribers.expire_pending_after,
        web=WebSettings(
            trusted_proxies=tuple(
                ipaddress.ip_network(v, strict=False) for v in model.web.trusted_proxies
            )
        ),
        demo=model.demo,
        bounces=_to_bounces(model.bounces),
    )


def resolve_database_url(configured: str | None, config_path: Path | None) -> str:
    """``DATABASE_URL`` wins, then ``storage.url``, then ``data/aggregator.db`` beside the config.

    Relative SQLite paths are taken relative to the config file, so the same
    command works from any working directory.
    """
    url = os.environ.get("DATABASE_URL") or configured
    base = config_path.parent if config_path else Path.cwd()
    if not url:
        return f"sqlite:///{(base / 'data' / 'aggregator.db').resolve()}"
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url[len("sqlite:///") :]
        if rel and rel != ":memory:" and not Path(rel).is_absolute():
            return f"sqlite:///{(base / rel).resolve()}"
    return url

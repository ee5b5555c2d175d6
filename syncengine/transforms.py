"""Reversible value transforms, registered by name, that mappings put between native and
canonical values.

A transform is a pair of functions: ``read`` turns a native value into a canonical value
(before the canonical normal form is applied) and ``write`` turns a canonical value back into
the native form. Both pass ``None`` through as ``None`` and raise ``ValueError`` with a message
meant for a person (``'12,3x' is not an amount``) on input they cannot convert.

In a mapping file a transform is named, or given as an inline table with its parameters, or a
list of those (a chain, applied in order on read and in reverse order on write)::

    mobile_number = { native = "Mobile", transform = "phone" }
    tags = { native = "Tags", transform = { name = "list", sep = ";" } }
    amount = { native = "Amount", transform = ["strip", { name = "cents", places = 2 }] }

Built-ins: see ``known_transforms()``; new ones are added with ``register()``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import zoneinfo
from collections.abc import Callable, Hashable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol, runtime_checkable

import phonenumbers

from syncengine.errors import ConfigError, Problem
from syncengine.model import decimal_text, parse_datetime
from syncengine.registry import Registry

__all__ = [
    "Params",
    "Transform",
    "TransformSpec",
    "build_chain",
    "build_transform",
    "known_transforms",
    "register",
]


@runtime_checkable
class Transform(Protocol):
    """A reversible pair: native -> canonical (``read``) and canonical -> native (``write``)."""

    name: str

    def read(self, native: Any) -> Any:
        """The canonical value of a native value, before canonical normalisation."""
        ...

    def write(self, value: Any) -> Any:
        """The native value of a canonical value."""
        ...


TransformSpec = str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]]
"""A transform name, an inline table ``{name = "...", ...params}``, or a list of those."""


# --------------------------------------------------------------------------------- parameters


class Params:
    """The parameters of one transform spec, checked as a factory takes them.

    Every problem is collected; ``finish()`` adds one for every parameter nobody asked for
    and raises them all together.
    """

    def __init__(self, name: str, raw: Mapping[str, Any], location: str) -> None:
        self.name = name
        self.location = location
        self._raw = dict(raw)
        self._taken: set[str] = set()
        self.problems: list[Problem] = []

    def where(self, key: str) -> str:
        return f"{self.location}.{key}" if self.location else key

    def problem(self, key: str, message: str, fix: str = "") -> None:
        self.problems.append(Problem(self.where(key), message, fix))

    def given(self, key: str) -> bool:
        """Whether the spec sets ``key`` at all."""
        return key in self._raw

    def get(
        self,
        key: str,
        types: type | tuple[type, ...],
        default: Any,
        *,
        choices: Sequence[Any] = (),
    ) -> Any:
        """The parameter ``key`` (``default`` when absent), checked for type and choice."""
        self._taken.add(key)
        if key not in self._raw:
            return default
        value = self._raw[key]
        wanted = types if isinstance(types, tuple) else (types,)
        if (isinstance(value, bool) and bool not in wanted) or not isinstance(value, wanted):
            names = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in wanted)
            self.problem(key, f"must be {names}, not {describe_value(value)}")
            return default
        if choices and value not in choices:
            self.problem(
                key,
                f"{value!r} is not a valid {key} for transform {self.name!r}",
                "use one of: " + ", ".join(repr(c) for c in choices),
            )
            return default
        return value

    def finish(self) -> None:
        """Report parameters nobody asked for, then raise every problem found so far."""
        known = sorted(self._taken)
        for key in self._raw:
            if key not in self._taken:
                fix = (
                    "parameters of this transform: " + ", ".join(known)
                    if known
                    else "this transform takes no parameters"
                )
                close = difflib.get_close_matches(key, known, n=1)
                if close:
                    fix = f"did you mean {close[0]!r}? {fix}"
                self.problem(key, f"unknown parameter {key!r} for transform {self.name!r}", fix)
        if self.problems:
            raise ConfigError(self.problems)


_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    dict: "a table",
    list: "a list",
}


def describe_value(value: Any) -> str:
    """How a config value is named in a message (``a table``, ``int 5``)."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


Factory = Callable[[Params], Transform]
_REGISTRY: Registry[Factory] = Registry("transform")


def register(name: str, factory: Factory, *, replace: bool = False) -> None:
    """Make ``name`` usable in mappings. ``factory`` reads its parameters from ``Params``
    (``params.get(...)``) and returns the transform; the registry checks unknown ones."""
    _REGISTRY.add(name, factory, replace=replace)


def known_transforms() -> list[str]:
    """The names of every registered transform, sorted."""
    return _REGISTRY.names()


def build_transform(spec: TransformSpec, location: str = "transform") -> Transform:
    """The transform described by ``spec``: a name, an inline table with ``name`` and
    parameters, or a list of those (see ``build_chain``). Raises ``ConfigError``."""
    if isinstance(spec, str):
        name, raw = spec, {}
    elif isinstance(spec, Mapping):
        raw = dict(spec)
        name = raw.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(
                [
                    Problem(
                        location,
                        "a transform table needs a name",
                        'write { name = "...", ... } with one of: ' + ", ".join(known_transforms()),
                    )
                ]
            )
    elif isinstance(spec, Sequence):
        return build_chain(spec, location)
    else:
        raise ConfigError(
            [
                Problem(
                    location,
                    f"a transform must be a name, a table or a list, not {describe_value(spec)}",
                    "use one of: " + ", ".join(known_transforms()),
                )
            ]
        )
    factory = _REGISTRY.get(name)
    if factory is None:
        fix = "use one of: " + _REGISTRY.known()
        close = _REGISTRY.closest(name)
        if close:
            fix += f"; did you mean {close!r}?"
        raise ConfigError([Problem(location, f"unknown transform {name!r}", fix)])
    params = Params(name, raw, location)
    try:
        transform = factory(params)
    except ConfigError as exc:
        params.problems.extend(exc.problems)
        raise ConfigError(params.problems) from None
    params.finish()
    return transform


def build_chain(specs: Sequence[str | Mapping[str, Any]], location: str = "transform") -> Transform:
    """One transform applying ``specs`` in order on read and in reverse order on write.

    Every problem of every element is reported together."""
    if isinstance(specs, str):
        return build_transform(specs, location)
    if not specs:
        raise ConfigError(
            [Problem(location, "an empty list of transforms", "name at least one transform")]
        )
    parts: list[Transform] = []
    problems: list[Problem] = []
    for index, spec in enumerate(specs):
        if not isinstance(spec, str | Mapping):
            problems.append(
                Problem(
                    f"{location}[{index}]",
                    f"a transform must be a name or a table, not {describe_value(spec)}",
                )
            )
            continue
        try:
            parts.append(build_transform(spec, f"{location}[{index}]"))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return parts[0] if len(parts) == 1 else Chain(tuple(parts))


class Chain:
    """Transforms applied in order on read, in reverse order on write."""

    def __init__(self, parts: tuple[Transform, ...]) -> None:
        self.parts = parts
        self.name = " | ".join(p.name for p in parts)
        self._reversed = tuple(reversed(parts))

    def read(self, native: Any) -> Any:
        value = native
        for part in self.parts:
            value = part.read(value)
        return value

    def write(self, value: Any) -> Any:
        native = value
        for part in self._reversed:
            native = part.write(native)
        return native

    def __repr__(self) -> str:
        return f"Chain({self.name})"


# ---------------------------------------------------------------------------------- built-ins


class _Base:
    """``None`` in, ``None`` out, both ways; subclasses convert everything else."""

    name: str = ""

    def read(self, native: Any) -> Any:
        return None if native is None else self._read(native)

    def write(self, value: Any) -> Any:
        return None if value is None else self._write(value)

    def _read(self, native: Any) -> Any:
        return native

    def _write(self, value: Any) -> Any:
        return value

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def _blank(value: Any) -> bool:
    return isinstance(value, str) and not value.strip()


class StrTransform(_Base):
    """Any native value as text; canonical values written as text."""

    def __init__(self, name: str = "str") -> None:
        self.name = name

    def _read(self, native: Any) -> Any:
        return native if isinstance(native, str) else str(native)

    def _write(self, value: Any) -> Any:
        return value if isinstance(value, str) else str(value)


class CaseTransform(_Base):
    """Text through one ``str`` method both ways: ``strip``, ``lower``, ``upper``, ``email``."""

    def __init__(self, name: str, method: Callable[[str], str]) -> None:
        self.name = name
        self._method = method

    def _read(self, native: Any) -> Any:
        return self._method(native if isinstance(native, str) else str(native))

    def _write(self, value: Any) -> Any:
        return self._method(value if isinstance(value, str) else str(value))


def _strip_lower(text: str) -> str:
    return text.strip().lower()


class IntTransform(_Base):
    """Whole numbers: read from ints or text (``"12"``, ``"12.0"``), written as ``int``."""

    def __init__(self) -> None:
        self.name = "int"

    def _read(self, native: Any) -> Any:
        return _to_int(native)

    def _write(self, value: Any) -> Any:
        return _to_int(value)


def _to_int(value: Any) -> int | None:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a whole number")
    if isinstance(value, int):
        return value
    if _blank(value):
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a whole number") from None
    if not number.is_finite() or number != number.to_integral_value():
        raise ValueError(f"{value!r} is not a whole number")
    return int(number)


class PhoneTransform(_Base):
    """Phone numbers: read as E.164 where parseable (else the stripped text), written in
    ``format``: ``e164`` (+15551234567), ``national`` ((555) 123-4567; numbers of another
    country are written internationally so that they read back the same) or
    ``international`` (+1 555-123-4567)."""

    FORMATS = ("e164", "national", "international")

    def __init__(self, format: str = "e164", region: str = "US") -> None:
        self.name = "phone"
        self.format = format
        self.region = region
        self._country_code = phonenumbers.country_code_for_region(region)
        self._memo: dict[str, Any] = {}

    def _parse(self, text: str) -> Any:
        """The number ``text`` is in this region, or None. Parsed numbers are remembered
        across the transforms of every mapping (bounded), also under their E.164 form, which
        is what the next member is given to write."""
        known = _PARSED.get((self.region, text), _UNKNOWN)
        if known is not _UNKNOWN:
            return known
        try:
            parsed = phonenumbers.parse(text, self.region)
        except phonenumbers.NumberParseException:
            parsed = None
        if parsed is not None and not phonenumbers.is_possible_number(parsed):
            parsed = None
        _remember(_PARSED, (self.region, text), parsed)
        if (
            parsed is not None
            and not parsed.extension  # E.164 holds no extension
            and (parsed.number_of_leading_zeros or 1) == 1
        ):  # (a run of leading zeros does not parse back to itself: 00000… is junk anyway)
            e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
            _PARSED.setdefault((self.region, e164), parsed)
        return parsed

    def _read(self, native: Any) -> Any:
        text = (native if isinstance(native, str) else str(native)).strip()
        if not text:
            return None
        if _looks_e164(text):
            return text  # already E.164: skip the ~20 µs parse, as model.norm_phone does
        known = self._memo.get(text)
        if known is not None:
            return known
        read = _read_us(text) if self.region == "US" else None
        if read is None:
            parsed = self._parse(text)
            read = (
                text
                if parsed is None
                else phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
            )
        _remember(self._memo, text, read)
        return read

    def _write(self, value: Any) -> Any:
        text = (value if isinstance(value, str) else str(value)).strip()
        if not text:
            return None
        e164 = _looks_e164(text)
        if e164 and self.format == "e164":
            return text
        if e164 and (written := self._write_nanp(text)) is not None:
            return written
        parsed = self._parse(text)
        if parsed is None:
            return text
        canonical = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
        if e164 and canonical != text:
            # an E.164-looking value that parsing would change: it reads back only verbatim
            return text
        styles = []
        if self.format == "national" and parsed.country_code == self._country_code:
            styles.append(phonenumbers.PhoneNumberFormat.NATIONAL)
        if self.format != "e164":
            styles.append(phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        for style in styles:
            formatted = phonenumbers.format_number(parsed, style)
            if self._read(formatted) == canonical:  # never write what reads back differently
                return formatted
        return canonical

    def _write_nanp(self, e164: str) -> str | None:
        """What ``_write`` gives the E.164 text of a ten-digit +1 number whose area code
        starts with 2-9 (``+15551234567``), without parsing it; None for any other number.
        ``national`` in region US: ``(555) 123-4567``; ``international``, or ``national`` in
        a region outside +1: ``+1 555-123-4567``; ``national`` in another +1 region
        (Canada, the Caribbean) is left to phonenumbers. These are phonenumbers' own US
        patterns (``($1) $2-$3``, ``$1-$2-$3`` for ten digits led by 2-9), each of which
        reads back as the same number; the property tests compare the two paths."""
        if len(e164) != 12 or e164[1] != "1" or e164[2] in "01":
            return None
        area, exchange, line = e164[2:5], e164[5:8], e164[8:]
        if self.format == "national" and self.region == "US":
            written = f"({area}) {exchange}-{line}"
        elif self.format == "international" or self._country_code != 1:
            written = f"+1 {area}-{exchange}-{line}"
        else:
            return None
        _remember(self._memo, written, e164)  # reading it back, as the parsing path memoises
        return written


_UNKNOWN = object()
_PARSED: dict[tuple[str, str], Any] = {}
"""(region, text) -> the phone number parsed from it (None: not a possible number)."""


def _looks_e164(text: str) -> bool:
    digits = text[1:]
    return text[:1] == "+" and 7 <= len(digits) <= 15 and digits.isascii() and digits.isdigit()


_US_NATIONAL = re.compile(
    r"\(([2-9][0-9]{2})\) ([0-9]{3})-([0-9]{4})|([2-9][0-9]{2})-([0-9]{3})-([0-9]{4})"
)
"""The two ways a US number is mostly typed: ``(555) 123-4567`` and ``555-123-4567``."""


def _read_us(text: str) -> str | None:
    """The E.164 text phonenumbers reads in region US from ``text`` written as
    ``_US_NATIONAL`` (ten digits, the first 2-9: never a national prefix, always a possible
    number), without parsing it; None for any other text."""
    found = _US_NATIONAL.fullmatch(text)
    if found is None:
        return None
    return "+1" + "".join(group for group in found.groups() if group is not None)


def _phone(params: Params) -> Transform:
    fmt = params.get("format", str, "e164", choices=PhoneTransform.FORMATS)
    region = params.get("region", str, "US")
    if region.upper() not in phonenumbers.SUPPORTED_REGIONS:
        params.problem(
            "region",
            f"{region!r} is not a region phonenumbers knows",
            "use a two-letter ISO 3166 country code such as 'US', 'CA' or 'GB'",
        )
        region = "US"
    return PhoneTransform(fmt, region.upper())


_MONEY_COMMA = re.compile(
    r"(?P<sign>[+-]?\s*\$?\s*)(?P<units>\d{1,3}(?:\.\d{3})+|\d+),(?P<cents>\d{1,2})", re.ASCII
)
"""``194,04`` or ``1.234,50``: an amount typed with a decimal comma (as much of Europe writes
it), told apart from ``1,234`` (thousands): one or two digits after the comma."""
_AMOUNT = re.compile(
    r"(?P<sign>[+-])?\s*\$?\s*(?P<sign2>[+-])?\s*"
    r"(?P<number>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)",
    re.ASCII,
)


class CentsTransform(_Base):
    """Money: canonical ``int`` cents (of ``places`` decimal places) <-> a decimal string
    (``"1234.50"``). Reads ``"1234.5"``, ``"1,234.50"``, ``"$1,234.50"``, ``"-12"``,
    ``"(12.00)"``, ints (whole units) and ``Decimal``; never goes through binary floats."""

    def __init__(self, places: int = 2) -> None:
        self.name = "cents"
        self.places = places
        self._scale = 10**places

    def _read(self, native: Any) -> Any:
        if isinstance(native, bool):
            raise ValueError(f"{native!r} is not an amount")
        if isinstance(native, int):
            return native * self._scale
        if isinstance(native, Decimal):
            amount = native
        elif isinstance(native, float):
            amount = Decimal(repr(native))  # the shortest text that reads back as the float
        else:
            parsed = self._parse(native if isinstance(native, str) else str(native))
            if parsed is None:
                return None
            amount = parsed
        if not amount.is_finite():
            raise ValueError(f"{native!r} is not an amount")
        scaled = amount.scaleb(self.places)
        if scaled != scaled.to_integral_value():
            raise ValueError(
                f"{native!r} has more than {self.places} decimal places: round it to "
                f"{self.places} (in a workbook formula, =ROUND(…, {self.places}))"
            )
        return int(scaled)

    def _parse(self, text: str) -> Decimal | None:
        body = text.strip()
        if not body:
            return None
        parenthesised = body[0] == "(" and body[-1] == ")"
        match = _AMOUNT.fullmatch(body[1:-1].strip() if parenthesised else body)
        if match is None or (match["sign"] and match["sign2"]):
            comma = _MONEY_COMMA.fullmatch(body)
            if comma is not None:
                dotted = f"{comma['sign']}{comma['units'].replace('.', ',')}.{comma['cents']}"
                raise ValueError(
                    f"{text!r} is not an amount: a comma groups thousands here; write "
                    f"{dotted!r} for the cents"
                )
            number = _NUMBER.search(body)
            if number is not None:
                rest = (body[: number.start()] + body[number.end() :]).strip(" $€£")
                if rest.isalpha():  # a currency code or a word beside it: 89.78 USD
                    alone = number.group(0).replace(" ", "")
                    raise ValueError(
                        f"{text!r} is not an amount: write the number alone, such as {alone!r}"
                    )
            raise ValueError(f"{text!r} is not an amount")
        sign = match["sign"] or match["sign2"]
        if parenthesised and sign:
            raise ValueError(f"{text!r} is not an amount")
        amount = Decimal(match["number"].replace(",", ""))
        return -amount if parenthesised or sign == "-" else amount

    def _write(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{value!r} is not a whole number of cents")
        sign = "-" if value < 0 else ""
        units, fraction = divmod(abs(value), self._scale)
        if not self.places:
            return f"{sign}{units}"
        return f"{sign}{units}.{fraction:0{self.places}d}"


def _cents(params: Params) -> Transform:
    places = params.get("places", int, 2)
    if not 0 <= places <= 8:
        params.problem("places", f"{places} decimal places is out of range", "use 0 to 8")
        places = 2
    return CentsTransform(places)


_NUMBER = re.compile(
    r"(?P<sign>[+-])?\s*(?P<number>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)", re.ASCII
)
_DECIMAL_COMMA = re.compile(r"[+-]?\s*\d+,\d{1,2}|[+-]?\s*\d+,\d{4,}", re.ASCII)


class DecimalTransform(_Base):
    """An exact decimal number (a line's quantity): canonical text (``"1.5"``, see
    ``model.norm_decimal``) <-> text, or a JSON number with ``as_number = true``.

    Reads as money does (the ``cents`` transform): ``"1.5"``, ``"1,234.5"`` (a comma groups
    thousands), ``"-2"``, ``"+0.25"``, ``".5"``, ints, ``Decimal`` and floats (by their
    shortest repr: a workbook's number cell ``1.5`` is 1.5). A comma is never a decimal point:
    ``"1,5"`` is refused with the fix rather than read as fifteen or as one and a half. The
    decimal places the canonical field allows are checked by its normal form (more is an
    error, never a rounding).

    Writes the canonical text as it is; with ``as_number`` an ``int`` for a whole number, else
    the ``float`` whose shortest repr is the number (exact for the up to 15 significant digits
    a double holds; a number with more is refused rather than sent rounded)."""

    def __init__(self, as_number: bool = False) -> None:
        self.name = "decimal"
        self.as_number = as_number

    def _read(self, native: Any) -> Any:
        if isinstance(native, bool):
            raise ValueError(f"{native!r} is not a number")
        if isinstance(native, int):
            return str(native)
        if isinstance(native, float | Decimal):
            number = Decimal(repr(native)) if isinstance(native, float) else native
            if not number.is_finite():
                raise ValueError(f"{native!r} is not a number")
            return decimal_text(number)
        text = str(native).strip()
        if not text:
            return None
        match = _NUMBER.fullmatch(text)
        if match is None:
            if _DECIMAL_COMMA.fullmatch(text):
                dotted = text.replace(",", ".")
                raise ValueError(
                    f"{native!r} is not a number: a comma groups thousands here; "
                    f"write {dotted!r} for a decimal"
                )
            raise ValueError(f"{native!r} is not a number (write it as 1.5, 2 or -0.25)")
        number = Decimal(match["number"].replace(",", ""))
        return decimal_text(-number if match["sign"] == "-" else number)

    def _write(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
            raise ValueError(f"{value!r} is not a decimal number")
        try:
            number = Decimal(value) if not isinstance(value, Decimal) else value
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
        if not number.is_finite():
            raise ValueError(f"{value!r} is not a decimal number")
        if not self.as_number:
            return decimal_text(number)
        if number == number.to_integral_value():
            return int(number)
        as_float = float(number)
        if Decimal(repr(as_float)) != number:
            raise ValueError(f"{value!r} has more digits than a JSON number keeps exactly")
        return as_float


def _decimal(params: Params) -> Transform:
    return DecimalTransform(params.get("as_number", bool, False))


class ListTransform(_Base):
    """A canonical list of strings <-> text delimited by ``sep`` (a native list is read too).
    Items are stripped and empty items dropped; ``","`` is written as ``", "``. Writing an
    item that contains the separator is an error, since it would read back as two items."""

    def __init__(self, sep: str = ",") -> None:
        self.name = "list"
        self.sep = sep
        self._joiner = ", " if sep == "," else sep

    def _read(self, native: Any) -> Any:
        if isinstance(native, str):
            items = native.split(self.sep)
        elif isinstance(native, list | tuple | set | frozenset):
            # items are split too: what this reads must be writable back to one string
            items = [
                part
                for i in native
                if i is not None
                for part in (i if isinstance(i, str) else str(i)).split(self.sep)
            ]
        else:
            items = [str(native)]
        kept = [s for s in (i.strip() for i in items) if s]
        return kept or None

    def _write(self, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if not isinstance(value, list | tuple | set | frozenset):
            raise ValueError(f"{value!r} is not a list")
        items = [i if isinstance(i, str) else str(i) for i in value if i is not None]
        for item in items:
            if self.sep in item:
                raise ValueError(f"the item {item!r} contains the separator {self.sep!r}")
        return self._joiner.join(items)


def _list(params: Params) -> Transform:
    sep = params.get("sep", str, ",")
    if not sep.strip():
        params.problem("sep", "the separator must not be empty or blank", 'use e.g. "," or ";"')
        sep = ","
    return ListTransform(sep)


_YES = ("yes", "true", "1")
_NO = ("no", "false", "0")


class BoolTransform(_Base):
    """Canonical ``True``/``False`` <-> the labels ``true``/``false`` (default "yes"/"no").
    Reads the labels case-insensitively, and yes/no/true/false/1/0."""

    def __init__(self, true: Any = "yes", false: Any = "no") -> None:
        self.name = "bool"
        self.true = true
        self.false = false
        self._lookup: dict[Any, bool] = {}
        for word in _YES:
            self._lookup[word] = True
        for word in _NO:
            self._lookup[word] = False
        for label, flag in ((true, True), (false, False)):
            self._lookup[label.strip().lower() if isinstance(label, str) else str(label)] = flag
        self._allowed = ", ".join(dict.fromkeys(str(k) for k in (true, false, *_YES, *_NO)))

    def _read(self, native: Any) -> Any:
        if isinstance(native, bool):
            return native
        if native == self.true and not isinstance(self.true, str):
            return True
        if native == self.false and not isinstance(self.false, str):
            return False
        key = native.strip().lower() if isinstance(native, str) else str(native)
        if key == "":
            return None
        flag = self._lookup.get(key)
        if flag is None:
            raise ValueError(f"{native!r} is not a yes/no value (use one of: {self._allowed})")
        return flag

    def _write(self, value: Any) -> Any:
        if not isinstance(value, bool):
            value = self._read(value)
            if value is None:
                return None
        return self.true if value else self.false


def _bool(params: Params) -> Transform:
    true = params.get("true", (str, int, bool), "yes")
    false = params.get("false", (str, int, bool), "no")

    def key(label: Any) -> str:
        return label.strip().lower() if isinstance(label, str) else str(label).lower()

    if key(true) == key(false):
        params.problem("false", f"the labels for true and false are the same ({true!r})")
    for param, label in (("true", true), ("false", false)):
        if isinstance(label, str) and not label.strip():
            params.problem(param, "a label must not be blank")
    return BoolTransform(true, false)


class MapTransform(_Base):
    """A one-to-one value map ``values = {native = canonical, ...}``. Native text is matched
    exactly, then stripped, then case-insensitively. An unknown value is an error listing the
    allowed ones, or with ``unknown = "keep"`` passes through unchanged both ways."""

    def __init__(self, values: Mapping[str, Any], unknown: str = "error") -> None:
        self.name = "map"
        self.values = dict(values)
        self.unknown = unknown
        self._reverse: dict[Any, str] = {
            _hashable(c): n for n, c in self.values.items() if isinstance(c, str | int | bool)
        }
        folded: dict[str, list[Any]] = {}
        for native, canonical in self.values.items():
            folded.setdefault(native.strip().casefold(), []).append(canonical)
        self._folded = {k: v[0] for k, v in folded.items() if len(v) == 1}
        self._allowed_native = ", ".join(repr(n) for n in self.values)
        self._allowed_canonical = ", ".join(repr(c) for c in self.values.values())

    def _read(self, native: Any) -> Any:
        text = native if isinstance(native, str) else str(native)
        if text in self.values:
            return self.values[text]
        text = text.strip()
        if text in self.values:
            return self.values[text]
        if not text:
            return None
        folded = text.casefold()
        if folded in self._folded:
            return self._folded[folded]
        if self.unknown == "keep":
            return text
        raise ValueError(f"{native!r} is not one of: {self._allowed_native}")

    def _write(self, value: Any) -> Any:
        try:
            return self._reverse[_hashable(value)]
        except (KeyError, TypeError):
            if self.unknown == "keep":
                return value
            raise ValueError(
                f"{value!r} has no native value (mapped values: {self._allowed_canonical})"
            ) from None


def canonical_values(transform: Transform) -> list[Any]:
    """The canonical values a transform can read, when it lists them: those of a ``map``
    that refuses unknown values, as the last step (so that what it gives is the field's
    value). Empty for any other transform."""
    last = transform.parts[-1] if isinstance(transform, Chain) else transform
    if isinstance(last, MapTransform) and last.unknown == "error":
        return list(last.values.values())
    return []


def _hashable(value: Any) -> Any:
    # True == 1 in a dict; keep them apart so that {"Y" = true, "1" = 1} stays one-to-one
    return (type(value) is bool, value)


def _map(params: Params) -> Transform:
    values = params.get("values", dict, None)
    unknown = params.get("unknown", str, "error", choices=("error", "keep"))
    if values is None:
        if not params.given("values"):
            params.problem(
                "values",
                "the map transform needs its values",
                'add values = { "Native" = "canonical", ... }',
            )
        return MapTransform({}, unknown)
    seen: dict[Any, str] = {}
    for native, canonical in values.items():
        if not isinstance(canonical, str | int | bool):
            params.problem(
                f"values.{native}",
                f"a mapped value must be a string, a number or true/false, "
                f"not {describe_value(canonical)}",
            )
            continue
        key = _hashable(canonical)
        if key in seen:
            params.problem(
                f"values.{native}",
                f"{native!r} and {seen[key]!r} both map to {canonical!r}: the map must be "
                "one-to-one so that it can be written back",
                "map each canonical value from exactly one native value",
            )
        seen[key] = native
    return MapTransform(values, unknown)


_SPELT = {
    "%Y": "YYYY", "%y": "YY", "%m": "MM", "%d": "DD", "%H": "hh", "%I": "hh", "%M": "mm",
    "%S": "ss", "%p": "AM/PM", "%b": "Mon", "%B": "Month", "%a": "Day", "%A": "Weekday",
    "%z": "+hhmm", "%Z": "zone", "%%": "%",
}  # fmt: skip


def _spelt(fmt: str) -> str:
    """A strftime format as a bookkeeper reads it: ``%m/%d/%Y`` is ``MM/DD/YYYY``."""
    return re.sub(r"%.", lambda m: _SPELT.get(m.group(0), m.group(0)), fmt)


class DateTransform(_Base):
    """Canonical ISO 8601 UTC (``2024-03-01T14:00:00Z``) <-> text in ``format`` (strftime) in
    ``timezone``. A date-only format reads as local midnight; native ``datetime``/``date``
    objects are read too (naive ones are local to ``timezone``)."""

    def __init__(self, format: str = "%Y-%m-%d", timezone: str = "UTC") -> None:
        self.name = "date"
        self.format = format
        self.timezone = timezone
        self._zone = dt.UTC if timezone == "UTC" else zoneinfo.ZoneInfo(timezone)
        self._read_memo: dict[str, str] = {}
        self._write_memo: dict[str, str] = {}
        """Texts read and values written (bounded): a sync's dates repeat, day after day."""
        self._texts: dict[str, str] = {}
        """Each text written, once (bounded)."""

    def _read(self, native: Any) -> Any:
        if isinstance(native, dt.date):
            # a date or datetime object (a spreadsheet cell): as precise as the format, so
            # that it reads the same as the text it is written back as
            if not isinstance(native, dt.datetime):
                native = dt.datetime(native.year, native.month, native.day)
            if native.tzinfo is None:
                native = native.replace(tzinfo=self._zone)
            native = native.astimezone(self._zone).strftime(self.format)
        text = (native if isinstance(native, str) else str(native)).strip()
        if not text:
            return None
        known = self._read_memo.get(text)
        if known is not None:
            return known
        try:
            moment = dt.datetime.strptime(text, self.format)
        except ValueError:
            example = dt.datetime(2025, 1, 31, 14, 5, 9).strftime(self.format)
            raise ValueError(
                f"{native!r} is not a date written as {_spelt(self.format)}, such as "
                f"{example} (the mapping's format {self.format!r})"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self._zone)
        read = moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        _remember(self._read_memo, text, read)
        return read

    def _write(self, value: Any) -> Any:
        if isinstance(value, str):
            known = self._write_memo.get(value)
            if known is not None:
                return known
        moment = parse_datetime(value)
        if moment is None:
            return None
        written = moment.astimezone(self._zone).strftime(self.format)
        # records of one day (a date-only format) share one text, not one each: a bounded
        # memo, not sys.intern (on Python 3.12 an interned text is never freed)
        shared = self._texts.get(written)
        if shared is None:
            _remember(self._texts, written, written)
        else:
            written = shared
        if isinstance(value, str):
            _remember(self._write_memo, value, written)
        return written


MEMO_SIZE = 4_096
"""How many entries each memo of the transforms holds before it starts again. What repeats
within a run is a few thousand values at most (the days of a sync's dates, a phone number
read back when its link is committed, which the US fast path reads in about a microsecond
anyway). The memos are kept for the process, and their keys are the records' own values:
at 65 536 entries each, a first sync of 100 000 customers + invoices + payments held about
40 MiB in them at its peak, nearly all of it timestamps and numbers never asked for again."""


def _remember(memo: dict[Any, Any], key: Hashable, value: Any, size: int = MEMO_SIZE) -> None:
    """``memo[key] = value``, the memo cleared first once it holds ``size`` entries (bounded:
    it starts again rather than grow with the data)."""
    if len(memo) >= size:
        memo.clear()
    memo[key] = value


def _date(params: Params) -> Transform:
    fmt = params.get("format", str, "%Y-%m-%d")
    zone = params.get("timezone", str, "UTC")
    try:
        sample = dt.datetime(2001, 12, 31, 23, 59, 58, tzinfo=dt.UTC).strftime(fmt)
        dt.datetime.strptime(sample, fmt)
        if "%" not in fmt:
            raise ValueError("no directive")
    except ValueError:
        params.problem(
            "format",
            f"{fmt!r} is not a date format that can be written and read back",
            'use strftime directives, e.g. "%Y-%m-%d" or "%m/%d/%Y %H:%M"',
        )
        fmt = "%Y-%m-%d"
    if zone != "UTC":
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            params.problem(
                "timezone",
                f"unknown time zone {zone!r}",
                'use an IANA name such as "America/New_York" or "UTC"',
            )
            zone = "UTC"
    return DateTransform(fmt, zone)


def _no_params(make: Callable[[], Transform]) -> Factory:
    def factory(params: Params) -> Transform:
        return make()

    return factory


register("bool", _bool)
register("cents", _cents)
register("date", _date)
register("decimal", _decimal)
register("email", _no_params(lambda: CaseTransform("email", _strip_lower)))
register("int", _no_params(IntTransform))
register("list", _list)
register("lower", _no_params(lambda: CaseTransform("lower", str.lower)))
register("map", _map)
register("phone", _phone)
register("str", _no_params(StrTransform))
register("strip", _no_params(lambda: CaseTransform("strip", str.strip)))
register("upper", _no_params(lambda: CaseTransform("upper", str.upper)))

"""Pages as element trees, so template tests do not depend on indentation or line breaks.

    page = parse(response.content.decode())
    card = page.one("li", id=f"camera-{camera.pk}")
    assert card.one("span", class_="status-online").text == "Online"
    assert "last frame never" in card.text          # text: whitespace collapsed

Attributes are matched by keyword: `class_` for `class`, underscores for dashes
(`data_role="progress"` is `data-role="progress"`). A value is compared exactly, except
`class_`, which asks for those classes among the element's; `True` asks only that the
attribute is there, `False` that it is not.
"""

from __future__ import annotations

from html.parser import HTMLParser

# Elements that never have content or an end tag.
VOID = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
    "track", "wbr",
}  # fmt: skip


class Element:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Element | None) -> None:
        self.tag = tag
        self.attrs = attrs  # an attribute without a value maps to ""
        self.parent = parent
        self.children: list[Element | str] = []

    @property
    def text(self) -> str:
        """The text inside, entities decoded, every run of whitespace one space, trimmed."""
        return " ".join(self.raw_text.split())

    @property
    def raw_text(self) -> str:
        """The text inside, entities decoded, whitespace as it stands (a script's JSON)."""
        return "".join(c if isinstance(c, str) else c.raw_text for c in self.children)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.attrs.get(name, default)

    def __getitem__(self, name: str) -> str:
        return self.attrs[name]

    def elements(self) -> list[Element]:
        """Every element below this one, in document order."""
        found = []
        for child in self.children:
            if isinstance(child, Element):
                found.append(child)
                found += child.elements()
        return found

    def find_all(self, tag: str | None = None, **attrs: str | bool) -> list[Element]:
        """The elements below this one with that tag (any when None) and those attributes."""
        wanted = {_attribute(key): value for key, value in attrs.items()}
        return [e for e in self.elements() if (tag is None or e.tag == tag) and e._has(wanted)]

    def one(self, tag: str | None = None, **attrs: str | bool) -> Element:
        """The one element that `find_all` finds; fails when there are none or several."""
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, f"{len(found)} elements <{tag or '*'} {attrs}> in {self!r}"
        return found[0]

    def _has(self, wanted: dict[str, str | bool]) -> bool:
        for name, value in wanted.items():
            if value is True or value is False:
                if (name in self.attrs) is not value:
                    return False
            elif name == "class":
                if not set(value.split()) <= self.classes:
                    return False
            elif self.attrs.get(name) != value:
                return False
        return True

    def __repr__(self) -> str:
        attrs = "".join(f' {k}="{v}"' for k, v in self.attrs.items())
        text = self.text
        return f"<{self.tag}{attrs}>{text[:80]}{'...' if len(text) > 80 else ''}</{self.tag}>"


def _attribute(keyword: str) -> str:
    return "class" if keyword == "class_" else keyword.replace("_", "-")


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {}, None)
        self.open = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, self.open[-1])
        self.open[-1].children.append(element)
        if tag not in VOID:
            self.open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.open.pop()

    def handle_endtag(self, tag: str) -> None:
        # Close up to the matching open element; a stray end tag closes nothing.
        for depth in range(len(self.open) - 1, 0, -1):
            if self.open[depth].tag == tag:
                del self.open[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.open[-1].children.append(data)


def parse(html: str) -> Element:
    """The document's tree; its root is a `#document` element holding the top elements."""
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root

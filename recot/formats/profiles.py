"""Domain profiles: how prompts name a domain's events and items, and which personas its users have.

OneReason trains on four domains (e-commerce, short video, live streaming, ads) whose users do
different things: they buy products, watch videos, visit live streams, click ads. Teacher templates
read the profile (``{{ profile.events }}``, ``{{ profile.item }}``, ...) instead of saying
"purchases", and the R3 persona list is the profile's. A dataset with a ``domain`` column gets each
item's profile from the domain its events carry, so one job can mix domains.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from recot.formats.schemas import ECOMMERCE_PERSONAS


class DomainProfile(BaseModel):
    """The wording and personas of one domain."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(description="the profile's name")
    event: str = Field(description="one behaviour event as a noun: purchase, view, visit, click")
    events: str = Field(description="the plural: purchases, views, visits, clicks")
    verb: str = Field(description="the event as a past-tense verb: bought, watched, visited, clicked")
    item: str = Field(description="one catalog item: product, video, live stream, ad")
    items: str = Field(description="the plural: products, videos, live streams, ads")
    personas: tuple[str, ...] = Field(min_length=1, description="the persona prototypes R3 traces of this domain choose from")


PROFILES: dict[str, DomainProfile] = {p.name: p for p in (
    DomainProfile(name="ecommerce", event="purchase", events="purchases", verb="bought", item="product", items="products",
                  personas=ECOMMERCE_PERSONAS),
    DomainProfile(name="short_video", event="view", events="views", verb="watched", item="video", items="videos", personas=(
        "binge watcher", "trend follower", "learner", "comedy fan", "music lover", "gamer", "foodie", "sports fan",
        "parent", "beauty enthusiast", "pet lover", "traveller", "tech fan", "news follower", "late-night scroller")),
    DomainProfile(name="live_streaming", event="visit", events="visits", verb="visited", item="live stream", items="live streams",
                  personas=("loyal fan", "gift giver", "lurker", "live shopper", "gamer", "music lover", "chatter",
                            "night owl", "learner", "collector")),
    DomainProfile(name="ads", event="click", events="clicks", verb="clicked", item="ad", items="ads", personas=(
        "deal seeker", "brand loyalist", "impulse clicker", "researcher", "window shopper", "app installer",
        "local shopper", "business buyer", "traveller", "parent")),
)}


def get_profile(value: str | DomainProfile) -> DomainProfile:
    """A bundled profile by name, or the given one."""
    if isinstance(value, DomainProfile):
        return value
    if value not in PROFILES:
        raise ValueError(f"unknown domain profile {value!r}; choose from {sorted(PROFILES)} or write a [profile] table")
    return PROFILES[value]


def all_personas() -> list[str]:
    """Every bundled profile's personas, e-commerce first: what the persona rule accepts by default."""
    return list(dict.fromkeys(p for profile in PROFILES.values() for p in profile.personas))


class ProfileBook:
    """The profile of each subject of a job: by the domain of its item (the target of a sample, the first
    item of a pair), from ``by_domain``, a bundled profile of the domain's name, or ``default``."""

    def __init__(self, default: DomainProfile, by_domain: dict[str, DomainProfile] | None = None,
                 item_domain: dict[str, str] | None = None) -> None:
        self.default, self.by_domain, self.item_domain = default, by_domain or {}, item_domain or {}
        self.by_name = {p.name: p for p in (*PROFILES.values(), *self.by_domain.values(), default)}

    def of(self, item_id: str) -> DomainProfile:
        domain = self.item_domain.get(item_id)
        if domain is None:
            return self.default
        return self.by_domain.get(domain) or PROFILES.get(domain) or self.default

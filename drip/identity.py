"""Who the course is from: the names and words that make drip the author's own.

The site's name, the author's name under each email's sign-off, the sign-off itself,
and who answers for subscribers' data (the privacy note's controller and contact)
come from settings (DRIP_SITE_NAME, DRIP_AUTHOR_NAME, DRIP_SIGNOFF,
DRIP_PRIVACY_CONTROLLER, DRIP_PRIVACY_CONTACT), each with a default drawn from the
course and the sender, so nothing needs editing inside the package. The same values
reach every email and every public page as template variables.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from drip.settings import Settings


@dataclass(frozen=True)
class Identity:
    #: The name in the pages' header and each email's masthead.
    site_name: str
    #: The author's own name; empty when not set.
    author_name: str
    #: The closing words before the signature, e.g. "Warmly,".
    signoff: str
    #: The name under the sign-off: the author's, or "Your <course> teacher".
    signature: str
    #: Who is responsible for the subscribers' data (GDPR's "controller").
    privacy_controller: str
    #: How to reach them: an email address or a web address.
    privacy_contact: str
    #: `privacy_contact` as a link: mailto: for an address.
    privacy_contact_href: str

    def context(self) -> dict[str, str]:
        return asdict(self)


def identity(settings: Settings, course_title: str) -> Identity:
    """The author's identity from the settings, with defaults from the course and sender."""
    author = settings.author_name.strip()
    sender_name = settings.sender_address.display_name
    site = settings.site_name.strip() or course_title
    contact = settings.privacy_contact.strip() or settings.sender_address.addr_spec
    href = contact if contact.startswith(("http://", "https://")) else f"mailto:{contact}"
    return Identity(
        site_name=site,
        author_name=author,
        signoff=settings.signoff.strip(),
        signature=author or f"Your {course_title} teacher",
        privacy_controller=settings.privacy_controller.strip() or author or sender_name or site,
        privacy_contact=contact,
        privacy_contact_href=href,
    )

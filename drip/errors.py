"""drip's exceptions: one family under `DripError`, for what a user can put right.

Each says what is wrong in one plain line that names the setting, file or line to
fix; none needs a traceback to be understood. The CLI prints any of them as
`drip: <message>` on stderr and exits 2 (drip.cli); a web page says it in its
own words. Anything else that escapes is a bug in drip.

    DripError
    ├── SettingsError       a DRIP_* setting is missing or wrong          (drip.settings)
    │   └── KeyMismatch     the secret key is not the database's          (drip.keycheck)
    ├── DatabaseError       the database is unreachable or out of date    (drip.db)
    │   └── BackupError     a backup or restore cannot go ahead           (drip.backup)
    ├── CourseError         emails/course.toml, with every problem        (drip.course)
    ├── RenderError         an email template, with its name and line     (drip.render)
    ├── PackError           the information pack's source                 (drip.pack)
    ├── PackMissing         the built pack cannot be attached             (drip.sending.message)
    ├── Unaddressable       an address a message cannot carry             (drip.sending.message)
    ├── NewsletterError     a newsletter file                             (drip.newsletter)
    ├── SendTestRefused     a test send's email name or address           (drip.testmail)
    ├── AnswerRefused       an answer to a reader's question              (drip.replies)
    ├── SteeringError       a pause, resume, skip or restart of a course  (drip.steering)
    ├── ImportFileError     a subscriber CSV file as a whole              (drip.subscriber_csv)
    ├── LookupFailed        no answer from DNS for `drip check --dns`     (drip.deliverability)
    ├── MailboxError        the bounce mailbox cannot be read             (drip.bounce_mailbox)
    ├── CsrfRefused         an admin form without the right CSRF token    (drip.web.security)
    ├── Refused             a webhook request proving nothing: 401, 403   (drip.webhooks.events)
    ├── Malformed           a signed webhook body no provider sends: 400  (drip.webhooks.events)
    └── Replayed            a signed webhook request accepted before      (drip.webhooks.recording)

Each class lives beside the code that raises it; this module holds the base and
the map. Delivery turns RenderError, PackMissing and Unaddressable into a message's
outcome rather than a failed run (drip.sending.delivery).
"""

from __future__ import annotations


class DripError(Exception):
    """Something a user can fix; str(error) says what, in one line."""

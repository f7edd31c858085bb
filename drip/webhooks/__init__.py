"""Bounce and complaint webhooks from mail relays, each proven by the relay's own signature.

One module per provider turns a request into `ProviderEvent`s, or raises `Refused`
(401/403) when the request does not prove where it came from: `ses` (SNS message
signatures), `postmark` (HTTP basic auth), `mailgun` (HMAC of timestamp and token),
`sendgrid` (ECDSA over timestamp and body). `recording` ends every one in the same
recording step as a bounce at send time.
"""

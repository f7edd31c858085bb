"""The web side of drip: `create_app` builds the signup site (drip.web.app)."""

"""Verifies webhook deliveries with `standardwebhooks` (PyPI, installed by scripts/setup
into .deps/webhooks): the Standard Webhooks project's own library, which nobody here
wrote, so that a test passing means hone's signatures are the spec's.

stdin: {"secret": "whsec_...", "deliveries": [{"headers": {...}, "body": "<base64>"}]}
stdout: one result per delivery, in order: {"ok": true, "payload": ...} or
        {"ok": false, "error": "..."}
"""

import base64
import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

request = json.load(sys.stdin)
webhook = Webhook(request["secret"])
results = []
for delivery in request["deliveries"]:
    body = base64.b64decode(delivery["body"])
    try:
        results.append({"ok": True, "payload": webhook.verify(body, delivery["headers"])})
    except WebhookVerificationError as e:
        results.append({"ok": False, "error": str(e)})
json.dump(results, sys.stdout)
